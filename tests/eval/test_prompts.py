"""Prompt construction per benchmark against literal strings."""

import pytest

from llava_jax.eval import prompts
from llava_jax.eval.common import DataConfig
from llava_jax.eval.registry import BENCHMARKS
from llava_jax.eval.scienceqa import build_questions
from tests.eval import fixtures

SYS = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def test_render_vicuna_v1():
    assert prompts.render_prompt("<image>\nWhat is this?") == (SYS + " USER: <image>\nWhat is this? ASSISTANT:")


def test_render_llava_v1_and_unknown():
    assert prompts.render_prompt("Hi", "llava_v1") == (
        "A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions. "
        "USER: Hi ASSISTANT:"
    )
    assert prompts.render_prompt("<image>\nHi", "llava_hf") == "USER: <image>\nHi ASSISTANT:"
    with pytest.raises(ValueError):
        prompts.render_prompt("Hi", "plain")


def test_question_text_builders():
    assert prompts.short_answer("Is it red?") == ("Is it red?\nAnswer the question using a single word or phrase.")
    assert prompts.vizwiz("What is this?") == (
        "What is this?\nWhen the provided information is insufficient, respond with "
        "'Unanswerable'.\nAnswer the question using a single word or phrase."
    )
    assert prompts.textvqa("what brand?", ["DAKOTA", "Single-Use"]) == (
        "what brand?\nReference OCR token: DAKOTA, Single-Use\nAnswer the question using a single word or phrase."
    )
    assert prompts.textvqa("what brand?", []) == ("what brand?\nAnswer the question using a single word or phrase.")
    assert prompts.mme("Is there a dog? Please answer yes or no.") == (
        "Is there a dog?\nAnswer the question using a single word or phrase."
    )
    assert prompts.multiple_choice("How many?", ["one", "two", "three", "four"]) == (
        "How many?\nA. one\nB. two\nC. three\nD. four\nAnswer with the option's letter from the given choices directly."
    )
    assert prompts.mmbench("How many dogs?", ["1", "2"], "Look closely.") == (
        "Look closely.\nHow many dogs?\nA. 1\nB. 2"
    )
    assert prompts.mmbench("Sky?", ["blue"], None) == "Sky?\nA. blue"
    assert prompts.mmbench_instruction("cn") == "请直接回答选项字母。"


def test_scienceqa_cqm_text():
    problem = {
        "question": "Which is a mammal?",
        "hint": "Animals  vary.",
        "choices": ["shark", "whale"],
    }
    assert prompts.scienceqa_cqm(problem) == (
        "Context: Animals vary.\nQuestion: Which is a mammal?\nOptions: (A) shark (B) whale"
    )
    assert prompts.scienceqa_cqm({"question": "Q?", "hint": "", "choices": ["x"]}) == (
        "Context: N/A\nQuestion: Q?\nOptions: (A) x"
    )


def test_scienceqa_build_matches_llava_file(tmp_path):
    d, _ = fixtures.make("scienceqa", str(tmp_path))
    import os

    problems = fixtures.read_json(os.path.join(d, "problems.json"))
    built = build_questions(problems, ["1", "2", "3"])
    assert built == fixtures.read_json(os.path.join(d, "llava_test_CQM-A.json"))


# One literal full prompt per benchmark, as the model receives it.
EXPECTED_FIRST_MESSAGE = {
    "vqav2": "<image>\nHow many cats?\nAnswer the question using a single word or phrase.",
    "gqa": "<image>\nIs the sky blue?\nAnswer the question using a single word or phrase.",
    "vizwiz": "<image>\nWhat is this?\nWhen the provided information is insufficient, respond "
    "with 'Unanswerable'.\nAnswer the question using a single word or phrase.",
    "textvqa": "<image>\nwhat brand is this?\nReference OCR token: DAKOTA, DIGITAL\n"
    "Answer the question using a single word or phrase.",
    "pope": "<image>\nIs there a dog in the image?\nAnswer the question using a single word or phrase.",
    "mme": "<image>\nIs there a dog in this image?\nAnswer the question using a single word or phrase.",
    "mmbench": "<image>\nWhat color is the sky?\nA. blue\nB. red\nC. green\n"
    "Answer with the option's letter from the given choices directly.",
    "mmbench_cn": "<image>\n天空是什么颜色？\nA. 蓝色\nB. 红色\n请直接回答选项字母。",
    "scienceqa": "<image>\nContext: N/A\nQuestion: Which is hot?\nOptions: (A) ice (B) fire\n"
    "Answer with the option's letter from the given choices directly.",
    "seed": "<image>\nWhere is this?\nA. one\nB. two\nC. three\nD. four\n"
    "Answer with the option's letter from the given choices directly.",
    "llava_bench": "<image>\nWhat is the name of this famous sight?",
    "mmvet": "<image>\nWhat is x in the equation?",
}


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_first_prompt(tmp_path, name):
    d, _ = fixtures.make(name, str(tmp_path))
    items = BENCHMARKS[name].load(DataConfig(d))
    message = EXPECTED_FIRST_MESSAGE[name]
    assert items[0].message == message
    assert prompts.render_prompt(items[0].message) == f"{SYS} USER: {message} ASSISTANT:"


def test_recorded_prompt_fields(tmp_path):
    d, _ = fixtures.make("mmbench", str(tmp_path))
    item = BENCHMARKS["mmbench"].load(DataConfig(d))[2]
    # The reference records the question text without marker or instruction.
    assert item.prompt == "Look closely.\nHow many dogs?\nA. 1\nB. 2"
    assert item.fields == {
        "round_id": 0,
        "options": ["1", "2"],
        "option_char": ["A", "B"],
    }
    d, _ = fixtures.make("scienceqa", str(tmp_path))
    text_only = BENCHMARKS["scienceqa"].load(DataConfig(d))[1]
    assert text_only.image is None and text_only.prompt == text_only.message
