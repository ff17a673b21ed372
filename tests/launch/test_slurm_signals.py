"""`launch/slurm.sbatch` without a cluster: stub `srun` / `scontrol` on PATH, SLURM_* in the environment.

USR1 (the time-limit warning) must reach the training step as TERM, the script must wait for
the step to save and exit, and only then requeue, and only for a restartable status.
"""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from llava_jax.runtime.exit_codes import PEER_LOST_EXIT_CODE, PREEMPTED_EXIT_CODE, STALLED_EXIT_CODE

REPO = Path(__file__).resolve().parents[2]
SBATCH = REPO / "launch" / "slurm.sbatch"

# The step: notes its arguments, then trains until TERM, when it "saves" (a short sleep) and exits
# with STUB_RC; without STUB_WAIT it exits with STUB_RC at once (a step that ends on its own).
SRUN = """#!/usr/bin/env bash
echo "$@" > "$STUB_DIR/srun_args"
trap 'touch "$STUB_DIR/srun_term"; sleep 1; touch "$STUB_DIR/srun_exited"; exit "$STUB_RC"' TERM
[[ -n "${STUB_WAIT:-}" ]] || { touch "$STUB_DIR/srun_exited"; exit "$STUB_RC"; }
touch "$STUB_DIR/srun_ready"
while :; do sleep 0.1; done
"""
# Records each call and whether the step had exited by then.
SCONTROL = """#!/usr/bin/env bash
state=running; [[ -e "$STUB_DIR/srun_exited" ]] && state=exited
echo "$* step=$state" >> "$STUB_DIR/scontrol_calls"
"""


def _stubs(tmp_path: Path, rc: int, wait: bool) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        STUB_DIR=str(tmp_path),
        STUB_RC=str(rc),
        SLURM_JOB_ID="4242",
        SLURM_JOB_NUM_NODES="2",
        SLURM_JOB_NODELIST="node[1-2]",
        SLURM_SUBMIT_DIR=str(tmp_path),
        SLURM_RESTART_COUNT="0",
    )
    if wait:
        env["STUB_WAIT"] = "1"
    return env


def _start(tmp_path: Path, rc: int, wait: bool = True) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["bash", str(SBATCH), "--config", "configs/tiny.py", "--workdir", "/shared/run"],
        env=_stubs(tmp_path, rc, wait),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    if wait:
        deadline = time.time() + 30
        while not (tmp_path / "srun_ready").exists() and time.time() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        assert (tmp_path / "srun_ready").exists(), "the stub srun did not start"
    return proc


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc.returncode, out + err


def _scontrol(tmp_path: Path) -> list[str]:
    calls = tmp_path / "scontrol_calls"
    return calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.parametrize("rc", [PREEMPTED_EXIT_CODE, PEER_LOST_EXIT_CODE, STALLED_EXIT_CODE])
def test_usr1_stops_the_step_waits_for_it_then_requeues(tmp_path, rc):
    proc = _start(tmp_path, rc)
    os.kill(proc.pid, signal.SIGUSR1)
    status, log = _finish(proc)
    assert (tmp_path / "srun_term").exists(), f"srun got no TERM:\n{log}"
    assert _scontrol(tmp_path) == ["requeue 4242 step=exited"], log  # after the step had exited
    assert status == 0, log
    assert "--config configs/tiny.py --workdir /shared/run" in (tmp_path / "srun_args").read_text()


@pytest.mark.parametrize("rc", [0, 1])
def test_usr1_without_a_restartable_status_does_not_requeue(tmp_path, rc):
    """0: the step finished anyway; 1: a real failure, which a requeue would only repeat."""
    proc = _start(tmp_path, rc)
    os.kill(proc.pid, signal.SIGUSR1)
    status, log = _finish(proc)
    assert (tmp_path / "srun_term").exists(), log
    assert _scontrol(tmp_path) == [], log
    assert status == rc, log


def test_term_is_forwarded_and_requeuing_left_to_slurm(tmp_path):
    """scancel / preemption: the step saves and exits 76; SLURM (not the script) decides about the requeue."""
    proc = _start(tmp_path, PREEMPTED_EXIT_CODE)
    os.kill(proc.pid, signal.SIGTERM)
    status, log = _finish(proc)
    assert (tmp_path / "srun_term").exists() and (tmp_path / "srun_exited").exists(), log
    assert _scontrol(tmp_path) == [], log
    assert status == PREEMPTED_EXIT_CODE, log


@pytest.mark.parametrize(("rc", "requeued"), [(0, False), (PEER_LOST_EXIT_CODE, True), (2, False)])
def test_step_ending_on_its_own(tmp_path, rc, requeued):
    status, log = _finish(_start(tmp_path, rc, wait=False))
    assert _scontrol(tmp_path) == (["requeue 4242 step=exited"] if requeued else []), log
    assert status == (0 if requeued else rc), log


def test_no_requeue_past_max_requeues(tmp_path):
    env = _stubs(tmp_path, PREEMPTED_EXIT_CODE, wait=False)
    env.update(SLURM_RESTART_COUNT="5", MAX_REQUEUES="5")
    proc = subprocess.run(["bash", str(SBATCH), "--workdir", "/x"], env=env, capture_output=True, text=True, timeout=30)
    assert _scontrol(tmp_path) == [] and proc.returncode == PREEMPTED_EXIT_CODE
    assert "not requeuing" in proc.stderr
