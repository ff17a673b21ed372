"""Metrics files: TensorBoard's own reader sees the scalars; `metrics.jsonl` rows and resume order."""

import json
import time

import numpy as np

from llava_jax.train.metrics import MetricsWriter, read_metrics


def _scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return acc, {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_reads_the_event_file(tmp_path):
    writer = MetricsWriter(str(tmp_path))
    for step in (1, 2, 3):
        writer.write(step, {"train/loss": 1.0 / step, "train/lr": 1e-3 * step, "note": "text", "flag": True})
    # On disk within about a second without close(): a killed run keeps its logged steps.
    deadline, steps = time.time() + 10, []
    while time.time() < deadline and steps != [1, 2, 3]:
        time.sleep(0.2)
        steps = [s for s, _ in _scalars(tmp_path / "tensorboard")[1].get("train/loss", [])]
    assert steps == [1, 2, 3]
    writer.close()
    _, scalars = _scalars(tmp_path / "tensorboard")
    assert sorted(scalars) == ["train/loss", "train/lr"]  # strings and booleans are JSON-only
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3]
    np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [1.0, 0.5, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in scalars["train/lr"]], [1e-3, 2e-3, 3e-3], rtol=1e-6)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert rows[0] == {"step": 1, "train/loss": 1.0, "train/lr": 1e-3, "note": "text", "flag": True}


def test_resume_drops_the_rows_it_redoes_and_measures_them(tmp_path):
    first = MetricsWriter(str(tmp_path), resume_step=0)
    assert first.restart_info() is None  # a fresh workdir
    first.write(1, {"train/loss": 4.0, "time/wall": 1000.0})
    first.write(2, {"train/loss": 3.0, "train/grad_norm": np.float32(float("nan")), "time/wall": 1010.0})
    first.write(3, {"train/loss": 2.9, "time/wall": 1025.0})
    first.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "train/lo')  # a row cut off by the kill
    second = MetricsWriter(str(tmp_path), resume_step=1)  # restarted from step 1's checkpoint
    assert second.restart_info() == {"redone_steps": 2, "lost_s": 25.0, "previous_wall": 1025.0}
    second.write(2, {"train/loss": 2.5})
    second.write(3, {"train/loss": 2.0})
    second.close()
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [(r["step"], r["train/loss"]) for r in rows] == [(1, 4.0), (2, 2.5), (3, 2.0)]  # each step once
    assert read_metrics(str(tmp_path)) == rows
    assert read_metrics(str(tmp_path / "absent")) == []
    # TensorBoard was told to drop the events of the steps redone.
    _, scalars = _scalars(tmp_path / "tensorboard")
    assert scalars["train/loss"] == [(1, 4.0), (2, 2.5), (3, 2.0)]


def test_non_finite_values_are_kept_as_text(tmp_path):
    writer = MetricsWriter(str(tmp_path))
    writer.write(1, {"train/loss": 4.0, "train/grad_norm": np.float32(float("nan"))})
    writer.close()
    row = json.loads(open(tmp_path / "metrics.jsonl").readline())
    assert row["train/grad_norm"] == "nan"  # non-finite values are kept as text, not as scalars


def test_disabled_writer_writes_nothing(tmp_path):
    writer = MetricsWriter(str(tmp_path / "w"), enabled=False)
    writer.write(1, {"train/loss": 1.0})
    writer.close()
    assert not (tmp_path / "w").exists()
