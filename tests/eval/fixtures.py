"""Tiny benchmark folders in LLaVA's `playground/data/eval` layout, with generated images.

`make(name, root)` writes one benchmark's files under `root/name` and returns
(data_dir, answers) where `answers` maps each question's user message to the
reply a scripted answerer gives; the tests compute the expected scores of those
replies by hand.
"""

from __future__ import annotations

import os

from tests.eval.fixture_io import (  # noqa: F401  (re-exported for the tests)
    SA,
    read_json,
    read_jsonl,
    read_text,
    write_image,
    write_json,
    write_jsonl,
)
from tests.eval.fixtures_choice import mmbench, mmbench_cn, scienceqa, seed


def _loader_questions(d, folder, rows, category="default"):
    """rows: (question_id, image name, text, reply); returns {message: reply}."""
    records, table = [], {}
    for i, (qid, image, text, reply) in enumerate(rows):
        write_image(os.path.join(d, folder, image), color=(40 * i % 255, 90, 160))
        records.append({"question_id": qid, "image": image, "text": text, "category": category})
        table[f"<image>\n{text}"] = reply
    return records, table


def vqav2(d):
    rows = [
        (1, "COCO_test2015_000000000001.jpg", f"How many cats?\n{SA}", "Two"),
        (2, "COCO_test2015_000000000002.jpg", f"Is it sunny?\n{SA}", "yes"),
        (3, "COCO_test2015_000000000003.jpg", f"Which bus?\n{SA}", "The red one."),
    ]
    records, table = _loader_questions(d, "test2015", rows)
    write_jsonl(os.path.join(d, "llava_vqav2_mscoco_test-dev2015.jsonl"), records)
    write_jsonl(
        os.path.join(d, "llava_vqav2_mscoco_test2015.jsonl"),
        records + [{"question_id": 4, "image": "x.jpg", "text": "?", "category": "default"}],
    )
    answers = {1: ["2"] * 10, 2: ["yes"] * 2 + ["no"] * 8, 3: ["red"] * 10}
    write_json(
        os.path.join(d, "val_annotations.json"),
        {"annotations": [{"question_id": q, "answers": [{"answer": a} for a in ans]} for q, ans in answers.items()]},
    )
    return table


def vizwiz(d):
    unans = "When the provided information is insufficient, respond with 'Unanswerable'."
    rows = [
        (
            0,
            "VizWiz_test_00000000.jpg",
            f"What is this?\n{unans}\n{SA}",
            "Unanswerable",
        ),
        (
            1,
            "VizWiz_test_00000001.jpg",
            f"What is in the bottle?\n{unans}\n{SA}",
            "A bottle of water.",
        ),
    ]
    records, table = _loader_questions(d, "test", rows)
    write_jsonl(os.path.join(d, "llava_test.jsonl"), records)
    write_json(
        os.path.join(d, "val.json"),
        [
            {
                "image": "VizWiz_test_00000000.jpg",
                "answers": [{"answer": "unanswerable"}] * 10,
            },
            {
                "image": "VizWiz_test_00000001.jpg",
                "answers": [{"answer": "water"}] * 8 + [{"answer": "bottle of water"}] * 2,
            },
        ],
    )
    return table


def gqa(d):
    rows = [
        ("201", "n1.jpg", f"Is the sky blue?\n{SA}", "Yes."),
        ("202", "n2.jpg", f"Which side is the cup on?\n{SA}", "Left side"),
        ("203", "n3.jpg", f"What color is the cat?\n{SA}", "The black and white."),
    ]
    records, table = _loader_questions(d, "data/images", rows)
    write_jsonl(os.path.join(d, "llava_gqa_testdev_balanced.jsonl"), records)
    write_json(
        os.path.join(d, "data", "testdev_balanced_questions.json"),
        {
            "201": {"answer": "yes", "isBalanced": True},
            "202": {"answer": "left", "isBalanced": True},
            "203": {"answer": "black and white", "isBalanced": True},
        },
    )
    return table


def textvqa(d):
    q1 = "what brand is this?\nReference OCR token: DAKOTA, DIGITAL\n" + SA
    q2 = f"what number is shown?\n{SA}"
    # Both questions are about one image: LLaVA's question_id is the image id.
    rows = [("img1", "img1.jpg", q1, "Dakota."), ("img1", "img1.jpg", q2, "2")]
    records, table = _loader_questions(d, "train_images", rows)
    write_jsonl(os.path.join(d, "llava_textvqa_val_v051_ocr.jsonl"), records)
    write_json(
        os.path.join(d, "TextVQA_0.5.1_val.json"),
        {
            "data": [
                {
                    "image_id": "img1",
                    "question": "What brand is this?",
                    "answers": ["dakota"] * 4 + ["dakota digital"] * 6,
                },
                {
                    "image_id": "img1",
                    "question": "what number is shown?",
                    "answers": ["two"] * 3 + ["3"] * 7,
                },
            ]
        },
    )
    return table


def pope(d):
    spec = [
        ("adversarial", "dog", "yes", "Yes"),
        ("adversarial", "cat", "yes", "No, there is not."),
        ("adversarial", "car", "no", "Yes."),
        ("adversarial", "bus", "no", "no"),
        ("popular", "cup", "yes", "Yes, there is a dog."),
        ("popular", "fork", "no", "There is no cat."),
        ("random", "tree", "yes", "Not sure"),
        ("random", "kite", "no", "I think yes"),
    ]
    records, table, labels = [], {}, {}
    for i, (category, obj, label, reply) in enumerate(spec):
        image = f"COCO_val2014_{i:012d}.jpg"
        write_image(os.path.join(d, "val2014", image))
        question = f"Is there a {obj} in the image?"
        text = f"{question}\n{SA}"
        records.append({"question_id": i, "image": image, "text": text, "category": category})
        labels.setdefault(category, []).append({"question_id": i, "image": image, "text": question, "label": label})
        table[f"<image>\n{text}"] = reply
    write_jsonl(os.path.join(d, "llava_pope_test.jsonl"), records)
    for category, rows in labels.items():
        write_jsonl(os.path.join(d, "coco", f"coco_pope_{category}.json"), rows)
    return table


def mme(d):
    release = os.path.join(d, "MME_Benchmark_release_version")
    spec = {  # category: [(image, nested, [(question, gt, reply), ...])]
        "existence": [
            (
                "1.jpg",
                False,
                [
                    ("Is there a dog in this image?", "Yes", "Yes"),
                    ("Is there a cat in this image?", "No", "No"),
                ],
            ),
            (
                "2.jpg",
                False,
                [
                    ("Is there a car in this image?", "Yes", "yes"),
                    ("Is there a bus in this image?", "No", "Yes, it is"),
                ],
            ),
        ],
        "code_reasoning": [
            (
                "0001.png",
                False,
                [
                    (
                        "Is a python code shown in the picture?",
                        "Yes",
                        "The code is python",
                    ),
                    ("Is a c++ code shown in the picture?", "No", "No"),
                ],
            )
        ],
        "artwork": [
            (
                "10002.jpg",
                True,
                [
                    ("Is this artwork created by Leonardo?", "Yes", "Yes"),
                    ("Is this artwork created by Monet?", "No", "Nope"),
                ],
            )
        ],
    }
    records, table = [], {}
    for category, images in spec.items():
        for image, nested, qas in images:
            img_dir = os.path.join(release, category, "images" if nested else "")
            qa_dir = os.path.join(release, category, "questions_answers_YN" if nested else "")
            write_image(os.path.join(img_dir, image))
            lines = []
            for question, gt, reply in qas:
                # MME writes one Leonardo question with two spaces before the instruction.
                gap = "  " if "Leonardo" in question else " "
                lines.append(f"{question}{gap}Please answer yes or no.\t{gt}\n")
                text = f"{question}\n{SA}"
                rel = f"{category}/images/{image}" if nested else f"{category}/{image}"
                records.append(
                    {
                        "question_id": f"{category}/{image}",
                        "image": rel,
                        "text": text,
                        "category": category,
                    }
                )
                table[f"<image>\n{text}"] = reply
            os.makedirs(qa_dir, exist_ok=True)
            with open(os.path.join(qa_dir, os.path.splitext(image)[0] + ".txt"), "w") as f:
                f.writelines(lines)
    write_jsonl(os.path.join(d, "llava_mme.jsonl"), records)
    return table


def llava_bench(d):
    rows = [
        (0, "001.jpg", "What is the name of this famous sight?", "The Eiffel Tower."),
        (1, "002.jpg", "Describe the image in detail.", "A red square.\nNothing else."),
    ]
    records, table = _loader_questions(d, "images", rows, category="conv")
    write_jsonl(os.path.join(d, "questions.jsonl"), records)
    return table


def mmvet(d):
    rows = [
        (0, "v1_0.png", "What is x in the equation?", "x = 3"),
        (1, "v1_1.png", "What is written on the sign?", "STOP"),
    ]
    records, table = _loader_questions(d, "images", rows)
    write_jsonl(os.path.join(d, "llava-mm-vet.jsonl"), records)
    return table


BUILDERS = {
    f.__name__: f
    for f in (
        vqav2,
        vizwiz,
        gqa,
        textvqa,
        pope,
        mme,
        mmbench,
        mmbench_cn,
        scienceqa,
        seed,
        llava_bench,
        mmvet,
    )
}


def make(name: str, root: str) -> tuple[str, dict[str, str]]:
    """Write benchmark `name` under `root/name`; return (data_dir, message -> reply)."""
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    return d, BUILDERS[name](d)


SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def message_of(prompt: str) -> str:
    """The user message inside a rendered vicuna_v1 prompt (fails on any other layout)."""
    head, tail = f"{SYSTEM} USER: ", " ASSISTANT:"
    assert prompt.startswith(head) and prompt.endswith(tail), prompt
    return prompt[len(head) : -len(tail)]


class Scripted:
    """An answerer that replies from a message -> reply table and records what it saw."""

    def __init__(self, table: dict[str, str], model_id: str = "scripted"):
        self.table = table
        self.model_id = model_id
        self.seen = []  # (message, image size or None, max_new_tokens) per request
        self.batch_sizes = []

    def prepare(self, requests):
        return list(requests)

    def answer(self, requests):
        self.batch_sizes.append(len(requests))
        out = []
        for r in requests:
            message = message_of(r.prompt)
            self.seen.append((message, None if r.image is None else r.image.size, r.max_new_tokens))
            out.append(self.table[message])
        return out
