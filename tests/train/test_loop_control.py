"""How a one-process run stops and restarts: SIGTERM, the stall watchdog, the profiler window, goodput fields.

Three runs of the tiny config in this process (one compiled program):
  reference  6 steps; a profiler window over steps 2-3; the 4th batch read blocks until
             the watchdog (limit 3 s, its exit replaced by a recorder) has fired;
  stopped    SIGTERM arrives while the 4th batch is read: the run stops after step 2
             with a checkpoint of step 2 and `Preempted` (exit status 76);
  resumed    continues from step 2 to 6.
The stall changes no number, so all three give the same losses, bit for bit.
The real exit (status 77, all stacks) is tested in tests/runtime/test_watchdog.py;
two processes in tests/train/test_loop_multiprocess.py.
"""

import os
import signal
import threading

import pytest

from llava_jax.runtime.exit_codes import PREEMPTED_EXIT_CODE, STALLED_EXIT_CODE
from llava_jax.train import loop
from llava_jax.train.experiment import load_config
from llava_jax.train.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.py")
STEPS = 6
STALL_AT_READ = 4  # reads 1-2 fill the queue before step 1; read 4 happens while step 2 runs


class _Reads:
    """Wraps the pipeline's loader: calls `hook()` when batch `at` is read (1-based), then reads it."""

    def __init__(self, loader, at: int, hook):
        self._loader, self._at, self._hook, self._reads = loader, at, hook, 0

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def __iter__(self):
        return self

    def __next__(self):
        self._reads += 1
        if self._reads == self._at:
            self._hook()
        return next(self._loader)


def _with_reads(monkeypatch, hook):
    class Feed(loop.Feed):
        def __init__(self, loader, **kw):
            super().__init__(_Reads(loader, STALL_AT_READ, hook), **kw)

    monkeypatch.setattr(loop, "Feed", Feed)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from llava_jax.demo.synthetic import write_synthetic_dataset

    out = tmp_path_factory.mktemp("data")
    write_synthetic_dataset(str(out), num_captions=16, num_qa=4, num_eval=4, image_size=56, seed=0)
    return out


def _config(data, *overrides):
    return load_config(
        f"{TINY}:pretrain",
        [
            f"--config.data.json={data}/stage1_captions.json",
            f"--config.data.image_root={data}/images",
            "--config.progress=False",
            "--config.batch_size=8",
            f"--config.num_steps={STEPS}",
            "--config.checkpoint.every_steps=1000",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = {"handler_before": signal.getsignal(signal.SIGTERM)}
    with pytest.MonkeyPatch.context() as mp:
        fired, released = [], threading.Event()
        dump = open(root / "watchdog.txt", "w+")

        class Watchdog(loop.Watchdog):
            def __init__(self, *args, **kw):
                super().__init__(*args, **kw, stream=dump, exit=lambda code: (fired.append(code), released.set()))

        mp.setattr(loop, "Watchdog", Watchdog)

        def stalled_read():  # the function name shows in the stack dump
            assert released.wait(60), "the watchdog did not fire"

        _with_reads(mp, stalled_read)
        ref = _config(data, "--config.profile.steps=2:3", "--config.watchdog.timeout_s=3")
        out["reference"] = loop.run(ref, str(root / "reference"))
        dump.seek(0)
        out["fired"], out["dump"] = fired, dump.read()
    with pytest.MonkeyPatch.context() as mp:
        _with_reads(mp, lambda: os.kill(os.getpid(), signal.SIGTERM))
        with pytest.raises(loop.Preempted) as stopped:
            loop.run(_config(data), str(root / "stopped"))
        out["stopped"] = stopped.value
        out["stopped_checkpoints"] = sorted(int(p) for p in os.listdir(root / "stopped" / "checkpoints") if p.isdigit())
        out["stopped_rows"] = read_metrics(str(root / "stopped"))
    out["handler_after"] = signal.getsignal(signal.SIGTERM)
    out["resumed"] = loop.run(_config(data), str(root / "stopped"))
    out["root"] = root
    return out


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_exits_76_and_the_resume_is_bit_identical(runs):
    stopped = runs["stopped"]
    assert stopped.code == PREEMPTED_EXIT_CODE and stopped.step == 2
    assert runs["stopped_checkpoints"][-1] == 2
    assert [r["step"] for r in runs["stopped_rows"]] == [1, 2]
    assert runs["handler_after"] == runs["handler_before"]  # the run put the handler back
    assert runs["resumed"]["steps"] == STEPS
    reference = read_metrics(str(runs["root"] / "reference"))
    resumed = read_metrics(str(runs["root"] / "stopped"))
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))  # each step once
    assert [r["train/loss"] for r in resumed] == [r["train/loss"] for r in reference]
    assert reference[-1]["train/loss"] < reference[0]["train/loss"]
    first = resumed[2]  # the resume's first row records the restart
    assert first["restart/redone_steps"] == 0 and first["restart/lost_s"] == 0.0
    assert 0.0 <= first["restart/downtime_s"] < 600
    assert not any(k.startswith("restart/") for r in resumed if r["step"] != 3 for k in r)


@pytest.mark.slow
def test_stall_reports_the_phase_and_stacks_profile_and_goodput_fields(runs):
    assert runs["fired"] == [STALLED_EXIT_CODE]
    dump = runs["dump"]
    assert "no training step finished in time (limit 3 s); last step 2 finished" in dump, dump[:2000]
    assert "phase 'reading ahead'" in dump and "stalled_read" in dump, dump[:3000]
    # The profiler window left a trace.
    traces = [f for _, _, files in os.walk(runs["root"] / "reference" / "profile") for f in files]
    assert any(f.endswith(".xplane.pb") for f in traces), traces
    rows = read_metrics(str(runs["root"] / "reference"))
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for a, b in zip(rows, rows[1:]):
        assert b["time/wall"] >= a["time/wall"] and b["time/elapsed"] >= a["time/elapsed"]
        assert b["time/train"] > a["time/train"] and b["time/data_wait_total"] >= a["time/data_wait_total"]
    last = rows[-1]
    assert 0 < last["time/compile"] <= last["time/startup"] <= last["time/elapsed"]
    assert last["time/train"] + last["time/checkpoint"] <= last["time/elapsed"]
    assert 0 < last["time/goodput"] <= 1
    # The stalled read (about 3 s, read ahead while step 2 ran) is data wait in step 2's row.
    assert rows[1]["time/data_wait"] > 2.5 and all(r["time/data_wait"] < 2.5 for r in rows if r["step"] != 2)
    assert all(r["train/step_time"] > 0 for r in rows)
