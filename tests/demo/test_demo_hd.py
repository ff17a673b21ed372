"""`llava-jax demo --quick --hd`: the LLaVA-1.5-HD variant runs end to end and compares HD with non-HD."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llava_jax.cli import main

pytestmark = pytest.mark.slow


def test_hd_quick_demo(tmp_path, capsys):
    from llava_jax import load

    workdir = tmp_path / "demo_hd"
    assert main(["demo", "--workdir", str(workdir), "--quick", "--hd", "--seed", "3", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "non-HD %" in printed and "HD %" in printed
    with open(workdir / "results.json") as f:
        results = json.load(f)
    comparison = results["hd_comparison"]
    assert set(comparison) == {"color", "shape", "count", "position", "existence", "overall"}
    assert all(set(row) == {"non_hd", "hd", "chance"} for row in comparison.values())
    assert {r: comparison[r]["hd"] for r in comparison} == results["accuracy"]
    with open(workdir / "data" / "manifest.json") as f:
        assert json.load(f)["image_size"] == 168
    for name in ("eval", "eval_hd"):
        with open(workdir / name / "predictions.jsonl") as f:
            assert len(f.readlines()) == results["num_questions"]["overall"]
    # Both arms start from the same stage-1 model; only the HD one tiles its images.
    base, hd = load(str(workdir / "stage2" / "final")), load(str(workdir / "stage2hd" / "final"))
    assert base.config.anyres is None and hd.config.image_grid_pinpoints == ((168, 168),)
    assert hd.config.anyres.max_tiles == 10 and hd.params["projector"]["image_newline"].shape == (64,)
    stage1 = load(str(workdir / "stage1" / "final"))
    np.testing.assert_array_equal(
        np.asarray(hd.params["vision"]["patch_embedding"]), stage1.params["vision"]["patch_embedding"]
    )
    with open(workdir / "hf" / "config.json") as f:
        assert json.load(f)["architectures"] == ["LlavaNextForConditionalGeneration"]
    with open(workdir / "chat" / "transcript.json") as f:
        assert len(json.load(f)["turns"]) == 4
