"""Transparent huge pages for the host heap of CPU training (Linux, glibc), by re-executing the command.

XLA:CPU allocates each executable run's temporaries afresh: 0.27 GiB per demo
stage-2 step. glibc serves blocks that large with `mmap`, so every step
faults in, zeroes and unmaps ~70 K pages of 4 KiB; on the 2-core dev box that
kernel work was a quarter of the step (`perf`: page faults, `clear_page`,
memcg charging). The glibc tunable `glibc.malloc.hugetlb=1` makes malloc
`madvise` its mappings for transparent huge pages (2 MiB), 512 times fewer
faults: the demo's stage-2 step went from 0.32-0.33 to 0.22-0.25 s
(bench/RESULTS.md, session 5). glibc reads tunables only at start-up, hence
the re-exec; `llava-jax demo` and `llava-jax train` do it before importing
anything heavy. Opt out with `GLIBC_TUNABLES=glibc.malloc.hugetlb=0` (any
value already set is kept).
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping, Sequence

TUNABLE = "glibc.malloc.hugetlb"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def _thp_available(setting_path: str) -> bool:
    try:
        with open(setting_path) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def hugepage_environment(
    environ: Mapping[str, str],
    *,
    system: str | None = None,
    libc: str | None = None,
    thp_setting: str = THP_SETTING,
) -> dict[str, str] | None:
    """The environment to re-execute with, or None when there is nothing to do.

    None unless this is Linux with glibc and transparent huge pages not
    disabled, and `GLIBC_TUNABLES` does not name `glibc.malloc.hugetlb` yet.
    Otherwise a copy of `environ` with `glibc.malloc.hugetlb=1` appended to
    `GLIBC_TUNABLES` (other tunables kept).
    """
    system = platform.system() if system is None else system
    libc = platform.libc_ver()[0] if libc is None else libc
    tunables = environ.get("GLIBC_TUNABLES", "")
    if system != "Linux" or libc != "glibc" or TUNABLE + "=" in tunables or not _thp_available(thp_setting):
        return None
    env = dict(environ)
    env["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1"
    return env


def reexec_with_hugepages(python_args: Sequence[str]) -> None:
    """Replaces this process by `python python_args...` with huge pages on; returns only when not needed.

    Args:
      python_args: the interpreter's arguments, e.g. `["-m", "llava_jax.cli", "demo"]`.
    """
    env = hugepage_environment(os.environ)
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *python_args], env)
