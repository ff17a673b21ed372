"""`llava_jax.runtime.preemption`: which signals stop a run and how the stop step is decided.

The whole path (2 processes and one: SIGTERM, checkpoint at the agreed step,
exit 76, bit-identical resume) is in tests/train/test_loop_multiprocess.py and
tests/train/test_loop_control.py.
"""

import os
import signal

import pytest

from llava_jax.runtime.exit_codes import PREEMPTED_EXIT_CODE
from llava_jax.runtime.preemption import Preempted, PreemptionWatch


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_lone_process_stops_after_the_signal_and_puts_the_handlers_back(sig):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    with PreemptionWatch(multiprocess=False) as watch:
        assert not watch.reached(3)
        os.kill(os.getpid(), sig)  # Python runs the handler before the next bytecode
        assert watch.requested() and watch.received == sig.name
        assert watch.reached(4)
    assert {s: signal.getsignal(s) for s in before} == before


def test_with_several_processes_sigterm_is_left_to_jax_and_sigusr1_is_handed_on_to_it():
    got = []
    jax_notifier = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))  # stands in for JAX's
    try:
        with PreemptionWatch(multiprocess=True) as watch:
            assert signal.getsignal(signal.SIGTERM) is not watch._on_signal
            os.kill(os.getpid(), signal.SIGUSR1)
            assert watch.received == "SIGUSR1"
            assert got == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, jax_notifier)


def test_preempted_exits_with_status_76():
    with pytest.raises(SystemExit) as info:
        raise Preempted(12, "/ckpt")
    assert info.value.code == PREEMPTED_EXIT_CODE
    assert "step 12" in str(info.value) and "/ckpt" in str(info.value)
