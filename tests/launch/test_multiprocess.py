"""Multi-host code paths on one machine: `launch/local.sh` with 2 processes x 4 CPU devices (gloo).

The suite's one kill-and-resume test. One set of runs of the tiny config (one
compiled shape per process layout), shared by the tests:
  A  2 processes, a checkpoint every 4 steps; once 6 steps are logged,
     process 1 is SIGKILLed;
  B  both processes restarted on A's workdir: resume from A's last checkpoint
     (step 4) and finish;
  C  one process, 8 devices, on a copy of that checkpoint.
B repeats the steps A logged after the checkpoint (5, 6) with A's program on
A's devices: equal losses (bit for bit in practice) show the restart restored
parameters, optimizer state (it moves step 6's loss) and data position. C runs
B's steps on one process instead of two.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "launch" / "local.sh"
STEPS = 10
CHECKPOINT_EVERY = 4
KILL_AFTER = 6  # logged steps: two past the checkpoint at 4, two before the one at 8
OVERRIDES = [
    f"--config.num_steps={STEPS}",
    "--config.batch_size=8",  # one row per device
    f"--config.checkpoint.every_steps={CHECKPOINT_EVERY}",
    "--config.progress=False",
]
SAME_LAYOUT_RTOL = 1e-6  # A and B: the same program on the same devices
RTOL = 1e-5  # C against B: one process instead of two
PEER_LOSS_LIMIT_S = 60
HEARTBEAT_TIMEOUT_S = 10  # JAX's coordination service fails the survivor this long after the kill (default 30)


def _train_args(workdir: Path) -> list[str]:
    data = workdir.parent / "data"  # written once by the `runs` fixture
    return [
        "--config",
        str(REPO / "configs" / "tiny.py"),
        "--workdir",
        str(workdir),
        *OVERRIDES,
        f"--config.data.json={data}/stage1_captions.json",
        f"--config.data.image_root={data}/images",
    ]


def _losses(workdir: Path) -> dict[int, float]:
    """step -> loss from metrics.jsonl; a step logged twice (re-run after a restart) keeps its last value."""
    out = {}
    with open(workdir / "metrics.jsonl") as f:
        for line in f:
            row = json.loads(line)
            out[row["step"]] = row["train/loss"]
    return out


def _committed_steps(workdir: Path) -> list[int]:
    ckpt = workdir / "checkpoints"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.exists() else []


def _env(root: Path) -> dict:
    # The interpreter running the tests (local.sh would take the checkout's .venv or python3). The runs
    # share the suite's compilation cache (conftest): one compile per process layout.
    return dict(os.environ, PYTHON=sys.executable, LLAVA_JAX_HEARTBEAT_TIMEOUT_S=str(HEARTBEAT_TIMEOUT_S))


def _kill_all(launcher: subprocess.Popen, logdir: Path) -> None:
    """SIGKILL a hung launcher and its processes (each leads its own process group, named in its pid file)."""
    for pid_file in logdir.glob("process_*.pid"):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    os.killpg(launcher.pid, signal.SIGKILL)


def _local(n: int, workdir: Path, logdir: Path, *, options=(), train=(), timeout: float = 300):
    """local.sh run to completion; on a timeout every process of it is killed and the result carries their logs."""
    cmd = ["bash", str(LOCAL), "--logdir", str(logdir), *options, str(n), *_train_args(workdir), *train]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=_env(workdir.parent),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_all(proc, logdir)
        out, err = proc.communicate()
        logs = "".join(f"\n--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(logdir.glob("process_*.log")))
        return subprocess.CompletedProcess(cmd, -1, f"{out}\nlocal.sh timed out after {timeout} s{logs}", err)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _kill_run(workdir: Path, logdir: Path) -> dict:
    """Run A: start 2 processes, SIGKILL process 1 after KILL_AFTER logged steps, time the survivor's exit."""
    cmd = ["bash", str(LOCAL), "--logdir", str(logdir), "2", *_train_args(workdir)]
    with open(logdir.parent / "a_launcher.log", "w") as out:
        launcher = subprocess.Popen(
            cmd, cwd=REPO, env=_env(workdir.parent), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.time() + 300
            while time.time() < deadline and launcher.poll() is None:
                if (workdir / "metrics.jsonl").exists() and len(_losses(workdir)) >= KILL_AFTER:
                    break
                time.sleep(0.1)
            log0 = logdir / "process_0.log"
            assert launcher.poll() is None, f"run A ended before the kill: {log0.read_text()[-3000:]}"
            assert len(_losses(workdir)) < STEPS, "run A finished before the kill"
            victim = int((logdir / "process_1.pid").read_text())
            os.kill(victim, signal.SIGKILL)
            killed_at = time.time()
            status_file = logdir / "process_0.status"
            while not status_file.exists() and time.time() - killed_at < 300:
                time.sleep(0.1)
            survivor_s = time.time() - killed_at
            launcher_rc = launcher.wait(timeout=300)
        finally:
            if launcher.poll() is None:  # a failed check or a hang: leave no process behind
                _kill_all(launcher, logdir)
                launcher.wait()
    return {
        "survivor_s": survivor_s,
        "launcher_rc": launcher_rc,
        "survivor_status": int(status_file.read_text()) if status_file.exists() else None,
        "survivor_log": (logdir / "process_0.log").read_text(),
        "checkpoints": _committed_steps(workdir),
        "losses": _losses(workdir),
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiprocess")
    from llava_jax.demo.synthetic import write_synthetic_dataset

    write_synthetic_dataset(root / "data", num_captions=48, num_qa=8, num_eval=8, image_size=56, seed=0)
    # A: 2 processes, one killed.
    (root / "a_logs").mkdir()
    out = {"a": _kill_run(root / "a", root / "a_logs")}
    last = out["a"]["checkpoints"][-1] if out["a"]["checkpoints"] else None
    out["last_checkpoint"] = last
    # C's checkpoint is copied before B writes newer ones (and drops old ones).
    if last is not None:
        shutil.copytree(root / "a" / "checkpoints" / str(last), root / "c" / "checkpoints" / str(last))
    # B: both restarted on A's workdir.
    # B also asks for the HF export (the default of real configs), which a multi-process run defers.
    out["b_proc"] = _local(2, root / "a", root / "b_logs", train=["--config.export_hf=True"])
    out["b_log"] = (root / "b_logs" / "process_0.log").read_text()
    out["b"] = _losses(root / "a")
    # C: one process, 8 devices, from the 2-process checkpoint.
    if last is not None:
        out["c_proc"] = _local(1, root / "c", root / "c_logs", options=["--devices", "8"])
        out["c_log"] = (root / "c_logs" / "process_0.log").read_text()
        out["c"] = _losses(root / "c")
    return out


def _assert_same(got: dict, want: dict, steps, rtol: float):
    for step in steps:
        assert got[step] == pytest.approx(want[step], rel=rtol), (step, got[step], want[step])


@pytest.mark.slow
def test_killed_peer_stops_the_survivor_with_a_clear_error(runs):
    a = runs["a"]
    assert a["survivor_s"] < PEER_LOSS_LIMIT_S, a["survivor_log"][-3000:]
    assert a["survivor_status"] not in (None, 0)
    assert a["launcher_rc"] != 0
    assert "lost a peer process" in a["survivor_log"] or "another task died" in a["survivor_log"], a["survivor_log"][
        -3000:
    ]


@pytest.mark.slow
def test_restarting_both_resumes_exactly_from_the_last_checkpoint(runs):
    last = runs["last_checkpoint"]
    assert last == CHECKPOINT_EVERY, (runs["a"]["checkpoints"], sorted(runs["a"]["losses"]))
    proc = runs["b_proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"step {last}" in runs["b_log"] and "resumed from" in runs["b_log"]
    assert "llava-jax export" in runs["b_log"]
    assert sorted(runs["b"]) == list(range(1, STEPS + 1))
    # The steps A logged after its checkpoint, again: the second depends on the restored optimizer state.
    repeated = [s for s in sorted(runs["a"]["losses"]) if s > last]
    assert len(repeated) >= 2, repeated
    _assert_same(runs["b"], runs["a"]["losses"], repeated, SAME_LAYOUT_RTOL)
    assert runs["b"][STEPS] < runs["b"][1]


@pytest.mark.slow
def test_one_process_restores_the_two_process_checkpoint_and_matches_two(runs):
    last = runs["last_checkpoint"]
    assert last is not None
    assert runs["b_proc"].returncode == 0, "run B (C's reference) failed: " + runs["b_proc"].stdout[-3000:]
    proc = runs["c_proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resumed from" in runs["c_log"] and f"step {last}" in runs["c_log"]
    assert sorted(runs["c"]) == list(range(last + 1, STEPS + 1))
    _assert_same(runs["c"], runs["b"], range(last + 1, STEPS + 1), RTOL)


def test_local_sh_usage_errors():
    """Not slow: argument checking happens before any Python starts."""
    proc = subprocess.run(["bash", str(LOCAL)], check=False, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "number of processes" in proc.stderr
    proc = subprocess.run(["bash", str(LOCAL), "--bogus", "2"], check=False, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "unknown option" in proc.stderr
