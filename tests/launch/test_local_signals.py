"""`launch/local.sh` stops its processes: TERM is forwarded, the launcher waits, a process ignoring TERM is killed.

The processes are a shell stand-in for the trainer (local.sh runs `$PYTHON -m llava_jax.cli
train ...`; PYTHON points at the stand-in): it traps TERM the way the trainer does (write the
checkpoint, exit 76) or ignores it, and leaves marker files the test reads.
"""

import os
import signal
import subprocess
import time
from pathlib import Path

from llava_jax.runtime.exit_codes import PREEMPTED_EXIT_CODE

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "launch" / "local.sh"

# $1..$3 are "-m llava_jax.cli train"; STANDIN_DIR gets the markers. A process whose id is in
# STANDIN_IGNORE notes the TERM and carries on; it also starts a helper in its process group
# (like grain's workers) whose pid the test checks after the launcher is gone.
STANDIN = f"""#!/usr/bin/env bash
id="$LLAVA_JAX_PROCESS_ID"
dir="$STANDIN_DIR"
if [[ " $STANDIN_IGNORE " == *" $id "* ]]; then
  trap 'touch "$dir/term_$id"' TERM
  sleep 1000 &
  echo $! > "$dir/helper_$id"
else
  trap 'touch "$dir/term_$id"; sleep 1; touch "$dir/saved_$id"; exit {PREEMPTED_EXIT_CODE}' TERM
fi
echo "$@" > "$dir/ready_$id"
while :; do sleep 0.1; done
"""


def _start(tmp_path: Path, n: int, grace: int, ignore: str = ""):
    standin = tmp_path / "standin.sh"
    standin.write_text(STANDIN)
    standin.chmod(0o755)
    markers = tmp_path / "markers"
    markers.mkdir()
    env = dict(os.environ, PYTHON=str(standin), STANDIN_DIR=str(markers), STANDIN_IGNORE=ignore)
    cmd = ["bash", str(LOCAL), "--logdir", str(tmp_path / "logs"), "--port", "1", "--grace", str(grace), str(n), "--x"]
    launcher = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.time() + 30
    while time.time() < deadline and len(list(markers.glob("ready_*"))) < n:
        assert launcher.poll() is None, launcher.communicate()
        time.sleep(0.05)
    assert len(list(markers.glob("ready_*"))) == n, "the stand-in processes did not start"
    assert (markers / "ready_0").read_text().split() == ["-m", "llava_jax.cli", "train", "--x"]
    return launcher, markers


def _finish(launcher, timeout: float):
    try:
        out, err = launcher.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        raise
    return launcher.returncode, out, err


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_term_is_forwarded_and_the_launcher_exits_with_the_processes_status(tmp_path):
    launcher, markers = _start(tmp_path, 2, grace=60)
    started = time.time()
    os.kill(launcher.pid, signal.SIGTERM)
    rc, out, err = _finish(launcher, timeout=30)
    elapsed = time.time() - started
    assert rc == PREEMPTED_EXIT_CODE, err
    for i in range(2):
        assert (markers / f"term_{i}").exists(), f"process {i} got no TERM"
        # Written a second after the TERM, just before exiting: the launcher waited for it.
        assert (markers / f"saved_{i}").exists(), f"the launcher did not wait for process {i}"
        assert (tmp_path / "logs" / f"process_{i}.status").read_text().strip() == str(PREEMPTED_EXIT_CODE)
    assert elapsed < 30, "the launcher waited for the grace period although every process had exited"
    assert "TERM received" in err


def test_a_process_ignoring_term_is_killed_after_the_grace_period(tmp_path):
    grace = 2
    launcher, markers = _start(tmp_path, 2, grace=grace, ignore="1")
    helper = int((markers / "helper_1").read_text())
    started = time.time()
    os.kill(launcher.pid, signal.SIGTERM)
    rc, out, err = _finish(launcher, timeout=30)
    elapsed = time.time() - started
    assert (markers / "term_1").exists(), "process 1 got no TERM"
    assert elapsed >= grace, f"killed after {elapsed:.1f} s, before the {grace} s grace period"
    # Process 0 stopped first with 76 (its status is the launcher's); process 1 was SIGKILLed.
    assert rc == PREEMPTED_EXIT_CODE, err
    assert (tmp_path / "logs" / "process_1.status").read_text().strip() == str(128 + signal.SIGKILL)
    assert "killing its process group" in err
    deadline = time.time() + 5
    while _alive(helper) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(helper), "process 1's helper outlived it (its process group was not killed)"
