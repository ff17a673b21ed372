"""Exit statuses a training process ends with, read by the launchers in `launch/`.

0 is a finished run and 2 a bad command line or input (fix it; restarting does
not help). The statuses below mean "restart every process and the run resumes
from its last checkpoint"; `launch/local.sh`, `launch/slurm.sbatch` and the GKE
job turn them into a restart or a requeue.
"""

from __future__ import annotations

PEER_LOST_EXIT_CODE = 75  # EX_TEMPFAIL: a peer died or became unreachable; restart every process
PREEMPTED_EXIT_CODE = 76  # SIGTERM/USR1 (maintenance, preemption, scancel): checkpoint written at the agreed step
STALLED_EXIT_CODE = 77  # the watchdog saw no step finish in time; stacks dumped to the log

RESTARTABLE_EXIT_CODES = (PEER_LOST_EXIT_CODE, PREEMPTED_EXIT_CODE, STALLED_EXIT_CODE)
