"""A free TCP port for a coordinator that a child process will bind later.

`bind(0)` hands out a port from the kernel's ephemeral range, the same range
every outgoing connection draws its local port from; between the pick and the
coordinator's own bind (seconds later, after `import jax`), another process's
connection (gloo opens many) can take it, and the coordinator fails with
"Failed to start RPC server" while its peers wait out the initialization
timeout. Ports below the ephemeral range are only ever taken by an explicit
bind, so a free one picked there stays free unless another launcher picks the
same one (1 in ~10,000 per pair of concurrent launches).

Standard library only: `launch/local.sh` runs this file as a script
(`python llava_jax/runtime/ports.py`) without importing the package.
"""

from __future__ import annotations

import random
import socket

_EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
_LOWEST = 20000
_DEFAULT_EPHEMERAL_START = 32768  # Linux's default; IANA's is 49152


def _ephemeral_start() -> int:
    try:
        with open(_EPHEMERAL_RANGE_FILE) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return _DEFAULT_EPHEMERAL_START


def port_is_free(port: int) -> bool:
    """Whether `port` can be bound on every interface, IPv4 and (where the host has it) IPv6.

    JAX's coordinator listens on `[::]:port`, which a socket on 127.0.0.1 alone already blocks.
    """
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            s = socket.socket(family)
        except OSError:  # no IPv6 on this host
            continue
        with s:
            try:
                s.bind((host, port))
            except OSError as e:
                if family == socket.AF_INET6 and e.errno == 99:  # EADDRNOTAVAIL: IPv6 disabled
                    continue
                return False
    return True


def free_port(attempts: int = 200) -> int:
    """A port in [20000, start of the ephemeral range) that is free on every interface now.

    Falls back to a kernel-chosen port when the ephemeral range starts too low
    to leave room, or when every tried port is taken.
    """
    upper = _ephemeral_start()
    if upper - _LOWEST >= 1000:
        rng = random.SystemRandom()
        for _ in range(attempts):
            port = rng.randrange(_LOWEST, upper)
            if port_is_free(port):
                return port
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    print(free_port())
