"""Multi-controller start-up: `initialize()` at the top of every entry point.

One process per host (or per GPU), JAX's own runtime and collectives. The
coordinator comes from explicit arguments, else `LLAVA_JAX_COORDINATOR`,
`LLAVA_JAX_NUM_PROCESSES`, `LLAVA_JAX_PROCESS_ID`, else JAX's cluster
auto-detection (TPU VMs, SLURM, GKE); a lone process needs nothing. On CPU,
processes talk through gloo. A peer that stops heart-beating makes the others
fail within `heartbeat_timeout_s` instead of hanging.
"""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)
_initialized = False


def _cluster_detected() -> bool:
    env = os.environ
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
        return True
    if env.get("TPU_WORKER_HOSTNAMES", "").count(",") >= 1:
        return True
    return "JOBSET_NAME" in env or "MEGASCALE_COORDINATOR_ADDRESS" in env


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, local_device_ids=None, heartbeat_timeout_s: int = 30,
               initialization_timeout_s: int = 300) -> bool:
    """Start JAX's distributed runtime when several processes take part; returns whether it did.

    Idempotent. Must run before anything touches devices.
    """
    global _initialized
    if _initialized:
        return True
    env = os.environ
    coordinator_address = coordinator_address or env.get("LLAVA_JAX_COORDINATOR")
    if num_processes is None and "LLAVA_JAX_NUM_PROCESSES" in env:
        num_processes = int(env["LLAVA_JAX_NUM_PROCESSES"])
    if process_id is None and "LLAVA_JAX_PROCESS_ID" in env:
        process_id = int(env["LLAVA_JAX_PROCESS_ID"])
    explicit = coordinator_address is not None and (num_processes or 1) > 1
    if not explicit and not _cluster_detected():
        return False
    if (env.get("JAX_PLATFORMS") or "").startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = dict(initialization_timeout=initialization_timeout_s, heartbeat_timeout_seconds=heartbeat_timeout_s)
    if explicit:
        jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                   local_device_ids=local_device_ids, **kwargs)
    else:
        jax.distributed.initialize(local_device_ids=local_device_ids, **kwargs)
    _initialized = True
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    return True
