"""`llava-jax data synthetic`: the demo's dataset on its own, in LLaVA's formats (the trainer never makes it;
tests/test_layout.py keeps `train` from importing `demo`)."""

import json

from llava_jax.cli import main
from llava_jax.data.sources import open_source


def test_synthetic_writes_a_dataset_the_trainer_reads(tmp_path, capsys):
    out = tmp_path / "syn"
    args = [
        "data",
        "synthetic",
        str(out),
        "--num-captions",
        "6",
        "--num-qa",
        "5",
        "--num-eval",
        "3",
        "--image-size",
        "28",
    ]
    assert main(args) == 0
    printed = dict(line.split(": ", 1) for line in capsys.readouterr().out.strip().splitlines())
    captions = open_source(printed["captions"], printed["image_root"])
    qa = open_source(printed["qa"], printed["image_root"])
    assert (len(captions), len(qa)) == (6, 5)
    first = captions[0]
    assert first["conversations"][0]["from"] == "human" and "<image>" in first["conversations"][0]["value"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["num_captions"], manifest["num_qa"], manifest["num_eval"], manifest["image_size"]) == (6, 5, 3, 28)
    assert len((out / "eval_questions.jsonl").read_text().strip().splitlines()) == 3
