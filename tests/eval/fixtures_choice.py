"""Multiple-choice benchmark fixtures: MMBench (EN/CN), ScienceQA, SEED-Bench."""

from __future__ import annotations

import base64
import io
import os

from PIL import Image

from tests.eval.fixture_io import MC, write_image, write_json, write_jsonl


def _b64_image(color) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (18, 12), color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


MMBENCH_HEADER = [
    "index",
    "question",
    "hint",
    "A",
    "B",
    "C",
    "D",
    "answer",
    "category",
    "image",
    "source",
    "l2-category",
    "comment",
    "split",
]


def _tsv(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\t".join(MMBENCH_HEADER) + "\n")
        f.writelines("\t".join(str(row.get(c, "")) for c in MMBENCH_HEADER) + "\n" for row in rows)


def mmbench(d):
    img = _b64_image((10, 120, 200))
    base = {
        "image": img,
        "source": "s",
        "l2-category": "l2",
        "comment": "nan",
        "split": "dev",
    }
    rows = [
        {
            "index": 0,
            "question": "What color is the sky?",
            "hint": "nan",
            "A": "blue",
            "B": "red",
            "C": "green",
            "D": "",
            "answer": "A",
            "category": "color",
            **base,
        },
        {
            "index": 1000000,
            "question": "What color is the sky?",
            "hint": "nan",
            "A": "red",
            "B": "green",
            "C": "blue",
            "D": "",
            "answer": "C",
            "category": "color",
            **base,
        },
        {
            "index": 1,
            "question": "How many dogs?",
            "hint": "Look closely.",
            "A": "1",
            "B": "2",
            "C": "None",
            "D": "4",
            "answer": "B",
            "category": "count",
            **base,
        },
        {
            "index": 1000001,
            "question": "How many dogs?",
            "hint": "Look closely.",
            "A": "2",
            "B": "1",
            "C": "None",
            "D": "4",
            "answer": "A",
            "category": "count",
            **base,
        },
    ]
    _tsv(os.path.join(d, "mmbench_dev_20230712.tsv"), rows)
    sky = "<image>\nWhat color is the sky?\n{}\n" + MC
    dogs = "<image>\nLook closely.\nHow many dogs?\n{}\n" + MC
    # Rows and their --all-rounds rotations share prompts; blue is always right.
    return {
        sky.format("A. blue\nB. red\nC. green"): "A",
        sky.format("A. red\nB. green\nC. blue"): "C.",
        sky.format("A. green\nB. blue\nC. red"): "B",
        dogs.format("A. 1\nB. 2"): "The answer is B",
        dogs.format("A. 2\nB. 1"): "B",
    }


def mmbench_cn(d):
    img = _b64_image((200, 120, 10))
    _tsv(
        os.path.join(d, "mmbench_dev_cn_20231003.tsv"),
        [
            {
                "index": 5,
                "question": "天空是什么颜色？",
                "hint": "nan",
                "A": "蓝色",
                "B": "红色",
                "C": "",
                "D": "",
                "answer": "A",
                "category": "颜色",
                "image": img,
                "source": "s",
                "l2-category": "l2",
                "comment": "nan",
                "split": "dev",
            }
        ],
    )
    return {"<image>\n天空是什么颜色？\nA. 蓝色\nB. 红色\n请直接回答选项字母。": "A"}


def scienceqa(d):
    problems = {
        "1": {
            "image": "image.png",
            "question": "Which is hot?",
            "hint": "",
            "choices": ["ice", "fire"],
            "answer": 1,
            "split": "test",
        },
        "2": {
            "image": None,
            "question": "Which is a mammal?",
            "hint": "Animals  vary.",
            "choices": ["shark", "whale", "frog"],
            "answer": 1,
            "split": "test",
        },
        "3": {
            "image": "image.png",
            "question": "Pick B",
            "hint": "Look at the picture.",
            "choices": ["x", "y"],
            "answer": 0,
            "split": "test",
        },
    }
    write_json(os.path.join(d, "problems.json"), problems)
    write_json(os.path.join(d, "pid_splits.json"), {"test": ["1", "2", "3"]})
    for pid in ("1", "3"):
        write_image(os.path.join(d, "images", "test", pid, "image.png"))
    questions = [
        {
            "id": "1",
            "image": "1/image.png",
            "conversations": [
                {
                    "from": "human",
                    "value": "Context: N/A\nQuestion: Which is hot?\nOptions: (A) ice (B) fire\n<image>",
                },
                {"from": "gpt", "value": "The answer is B."},
            ],
        },
        {
            "id": "2",
            "conversations": [
                {
                    "from": "human",
                    "value": "Context: Animals vary.\nQuestion: Which is a mammal?\n"
                    "Options: (A) shark (B) whale (C) frog",
                },
                {"from": "gpt", "value": "The answer is B."},
            ],
        },
        {
            "id": "3",
            "image": "3/image.png",
            "conversations": [
                {
                    "from": "human",
                    "value": "Context: Look at the picture.\nQuestion: Pick B\nOptions: (A) x (B) y\n<image>",
                },
                {"from": "gpt", "value": "The answer is A."},
            ],
        },
    ]
    write_json(os.path.join(d, "llava_test_CQM-A.json"), questions)
    return {
        f"<image>\nContext: N/A\nQuestion: Which is hot?\nOptions: (A) ice (B) fire\n{MC}": "B",
        f"Context: Animals vary.\nQuestion: Which is a mammal?\nOptions: (A) shark (B) whale (C) frog\n{MC}": (
            "The answer is B."
        ),
        f"<image>\nContext: Look at the picture.\nQuestion: Pick B\nOptions: (A) x (B) y\n{MC}": "C",
    }


def seed(d):
    def text(q, choices):
        return q + "".join(f"\n{letter}. {c}" for letter, c in zip("ABCD", choices)) + f"\n{MC}"

    spec = [
        (101, "image", 1, "SEED-Bench-image/a.jpg", "Where is this?", "A", "A"),
        (102, "image", 3, "SEED-Bench-image/b.jpg", "How many towels?", "C", "C"),
        (103, "image", 3, "SEED-Bench-image/c.jpg", "How many cups?", "B", "B."),
        (
            104,
            "video",
            10,
            "SEED-Bench-video-image/v1.png",
            "What is he doing?",
            "D",
            "D",
        ),
    ]
    records, questions, table = [], [], {}
    for qid, data_type, type_id, image, q, answer, reply in spec:
        write_image(os.path.join(d, image))
        choices = ["one", "two", "three", "four"]
        records.append(
            {
                "image": image,
                "text": text(q, choices),
                "category": "x",
                "question_id": qid,
            }
        )
        questions.append(
            {
                "question_id": str(qid),
                "data_type": data_type,
                "question_type_id": type_id,
                "answer": answer,
                "question": q,
                "data_id": os.path.basename(image),
                **{f"choice_{c}": v for c, v in zip("abcd", choices)},
            }
        )
        table[f"<image>\n{text(q, choices)}"] = reply
    write_jsonl(os.path.join(d, "llava-seed-bench.jsonl"), records)
    write_json(
        os.path.join(d, "SEED-Bench.json"),
        {
            "questions": questions,
            "question_type": {
                "Scene Understanding": 1,
                "Instances Counting": 3,
                "Action Recognition": 10,
            },
        },
    )
    return table
