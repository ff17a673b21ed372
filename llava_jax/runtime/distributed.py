"""Multi-controller start-up: `initialize()` at the top of every entry point.

One process per host (or per GPU), JAX's own runtime and collectives. Where the
coordinator comes from, first match wins:

1. explicit arguments, else `LLAVA_JAX_COORDINATOR` (host:port),
   `LLAVA_JAX_NUM_PROCESSES`, `LLAVA_JAX_PROCESS_ID` (`launch/local.sh`, GKE GPU pods);
2. JAX's cluster auto-detection when a cluster is recognised: a Cloud TPU VM
   slice (TPU chips on the PCI bus, or GKE's `TPU_WORKER_HOSTNAMES`), a SLURM step
   with more than one task, Open MPI (`mpirun`); `LLAVA_JAX_DISTRIBUTED=1` forces
   it, `LLAVA_JAX_DISTRIBUTED=0` turns all of this off;
3. otherwise a lone process, which needs nothing.

On CPU, processes talk through gloo. A peer that stops heart-beating for
`heartbeat_timeout_s` (default 100, JAX's own default; `LLAVA_JAX_HEARTBEAT_TIMEOUT_S`)
makes JAX's coordination service fail every other process instead of letting
it hang. Shorter limits notice a dead peer sooner but fail a healthy one whose
heartbeats are delayed (a long host-side pause, a busy coordinator on a large job). A
collective that fails because a peer went away (gloo: connection reset) raises
in Python; the hook installed here then says so in one line and exits with
`PEER_LOST_EXIT_CODE` at once, without waiting on a shutdown barrier that the
dead peer can never reach. Restarting every process resumes from the last
checkpoint.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import sys

import jax

from llava_jax.runtime.exit_codes import PEER_LOST_EXIT_CODE
from llava_jax.runtime.ports import port_is_free

log = logging.getLogger(__name__)
_PEER_LOST = re.compile(
    r"connection reset by peer|connection closed by peer|socket closed|broken pipe|heartbeat timeout"
    r"|stopped sending heartbeats|another task died|tasks have crashed|coordination service.*(unavailable|error)"
    r"|gloo .*(failed|error)|nccl.*(remote|unhandled system error)",
    re.IGNORECASE,
)
_initialized = False
HEARTBEAT_TIMEOUT_S = 100  # jax.distributed.initialize's own default


def _truthy(value: str | None) -> bool | None:
    if value is None or value.strip().lower() in ("", "auto"):
        return None
    return value.strip().lower() not in ("0", "false", "no", "off")


def _tpu_chips_present() -> bool:
    """TPU chips on this VM's PCI bus (what JAX's Cloud TPU detection keys on), without starting a backend."""
    try:
        # Private module; the except below falls back to the device nodes if it moves.
        from jax._src import hardware_utils

        return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
    except (ImportError, AttributeError, OSError):
        return bool(glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"))


def cluster_detected() -> bool:
    """Whether JAX's auto-detection should run (see the module docstring, item 2)."""
    env = os.environ
    forced = _truthy(env.get("LLAVA_JAX_DISTRIBUTED"))
    if forced is not None:
        return forced
    if "SLURM_STEP_NODELIST" in env and int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1"))) > 1:
        return True
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return True
    if env.get("TPU_WORKER_HOSTNAMES", "").count(",") >= 1 or env.get("TPU_PROCESS_ADDRESSES", "").count(",") >= 1:
        return True
    platforms = (env.get("JAX_PLATFORMS") or "").lower()
    if platforms and "tpu" not in platforms:
        return False
    return _tpu_chips_present()


def _port_taken(address: str) -> RuntimeError:
    return RuntimeError(
        f"process 0 cannot start the coordinator on {address}: its port is in use; restart every "
        "process with a free port (LLAVA_JAX_COORDINATOR, or launch/local.sh --port)"
    )


def _check_coordinator_port(address: str) -> None:
    """Process 0: a clear error for a coordinator port in use (XLA's server crashes the process on it)."""
    _, _, port = address.rpartition(":")
    if port.isdigit() and not port_is_free(int(port)):
        raise _port_taken(address)


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids=None,
    heartbeat_timeout_s: int | None = None,
    initialization_timeout_s: int = 300,
) -> bool:
    """Start JAX's distributed runtime when several processes take part; returns whether it did.

    Idempotent. Must run before anything touches devices. `heartbeat_timeout_s` defaults to
    `LLAVA_JAX_HEARTBEAT_TIMEOUT_S`, else `HEARTBEAT_TIMEOUT_S` (100, as JAX).
    """
    global _initialized
    if _initialized:
        return True
    env = os.environ
    if _truthy(env.get("LLAVA_JAX_DISTRIBUTED")) is False:
        return False
    coordinator_address = coordinator_address or env.get("LLAVA_JAX_COORDINATOR")
    if num_processes is None and "LLAVA_JAX_NUM_PROCESSES" in env:
        num_processes = int(env["LLAVA_JAX_NUM_PROCESSES"])
    if process_id is None and "LLAVA_JAX_PROCESS_ID" in env:
        process_id = int(env["LLAVA_JAX_PROCESS_ID"])
    explicit = coordinator_address is not None and (num_processes or 1) > 1
    if not explicit and not cluster_detected():
        return False
    if heartbeat_timeout_s is None:
        heartbeat_timeout_s = int(env.get("LLAVA_JAX_HEARTBEAT_TIMEOUT_S", HEARTBEAT_TIMEOUT_S))
    if (env.get("JAX_PLATFORMS") or "").startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {"initialization_timeout": initialization_timeout_s, "heartbeat_timeout_seconds": heartbeat_timeout_s}
    if explicit:
        if process_id is None:
            raise ValueError("LLAVA_JAX_COORDINATOR and LLAVA_JAX_NUM_PROCESSES are set but not LLAVA_JAX_PROCESS_ID")
        if process_id == 0:
            _check_coordinator_port(coordinator_address)
        try:
            jax.distributed.initialize(
                coordinator_address, num_processes, process_id, local_device_ids=local_device_ids, **kwargs
            )
        except jax.errors.JaxRuntimeError as e:
            if process_id == 0 and "Failed to start RPC server" in str(e):  # taken after the check above
                raise _port_taken(coordinator_address) from e
            raise
    else:
        jax.distributed.initialize(local_device_ids=local_device_ids, **kwargs)
    _initialized = True
    if jax.process_count() > 1:
        _install_peer_loss_hook()
    log.info(
        "process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def is_peer_loss(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says another process died or became unreachable."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if _PEER_LOST.search(str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _install_peer_loss_hook() -> None:
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        previous(exc_type, exc, tb)
        if not is_peer_loss(exc):
            return
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else exc_type.__name__
        sys.stderr.write(
            f"\nllava_jax: process {jax.process_index()} of {jax.process_count()} lost a peer process "
            f"(another process died, was preempted or became unreachable): {first}\n"
            f"llava_jax: stopping with exit status {PEER_LOST_EXIT_CODE}; restart every process to resume "
            "from the last checkpoint.\n"
        )
        sys.stderr.flush()
        sys.stdout.flush()
        # The normal exit path waits on a shutdown barrier the dead peer never reaches.
        os._exit(PEER_LOST_EXIT_CODE)

    sys.excepthook = hook
