"""`llava_jax.runtime.watchdog`: a stalled process dumps every thread's stack and its phase, then exits 77.

The exit is real (`os._exit` in a subprocess); the loop's phases are checked in
tests/train/test_loop_control.py.
"""

import io
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from llava_jax.runtime.exit_codes import STALLED_EXIT_CODE
from llava_jax.runtime.watchdog import Watchdog

REPO = Path(__file__).resolve().parents[2]
STALLED = textwrap.dedent(
    """
    import threading, time
    from llava_jax.runtime.watchdog import Watchdog

    def read_batch_from_a_dead_mount():
        threading.Event().wait()  # never set

    dog = Watchdog(1.0, startup_s=30.0, who="process 1 of 2", poll_s=0.05).start()
    dog.phase("compiling the train step")
    dog.step_done(1)
    dog.step_done(2)
    dog.phase("waiting for the next batch")
    read_batch_from_a_dead_mount()
    """
)


def test_a_stall_dumps_every_stack_and_the_phase_then_exits_77():
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", STALLED],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    elapsed = time.time() - t0
    assert proc.returncode == STALLED_EXIT_CODE, proc.stderr[-3000:]
    err = proc.stderr
    assert "llava_jax watchdog: process 1 of 2: no training step finished in time (limit 1 s)" in err, err
    assert "last step 2 finished" in err and "phase 'waiting for the next batch'" in err, err
    assert "Thread 0x" in err  # faulthandler's all-thread dump: the stalled main thread and the watchdog
    assert "read_batch_from_a_dead_mount" in err, err
    assert elapsed < 30


def test_startup_limit_applies_until_the_first_step_and_phases_extend_the_deadline():
    fired, out = [], io.StringIO()  # no file descriptor: the report is written, the stacks are not
    dog = Watchdog(0.3, startup_s=5.0, poll_s=0.02, exit=fired.append, stream=out)
    with dog:
        time.sleep(0.6)  # start-up: under startup_s
        assert not fired
        dog.step_done(1)
        dog.phase("saving the checkpoint of step 1", allow_s=1.0)
        time.sleep(0.6)  # past timeout_s, inside the phase's allowance
        assert not fired
        deadline = time.time() + 5
        while not fired and time.time() < deadline:
            time.sleep(0.02)
    assert fired == [STALLED_EXIT_CODE]
    assert "last step 1 finished" in out.getvalue()
    assert "phase 'saving the checkpoint of step 1'" in out.getvalue()


def test_a_zero_timeout_turns_it_off():
    fired = []
    with Watchdog(0, poll_s=0.01, exit=fired.append) as dog:
        time.sleep(0.1)
    assert not dog.enabled and not fired
