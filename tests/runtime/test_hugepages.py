"""Huge pages for the host heap: when the environment is changed, and that the re-exec carries it."""

import os
import subprocess
import sys

from llava_jax.runtime.hugepages import TUNABLE, hugepage_environment


def _thp(tmp_path, setting: str) -> str:
    path = tmp_path / "enabled"
    path.write_text(setting + "\n")
    return str(path)


def test_environment_appends_the_tunable_and_keeps_others(tmp_path):
    thp = _thp(tmp_path, "always [madvise] never")
    env = hugepage_environment({"HOME": "/h"}, system="Linux", libc="glibc", thp_setting=thp)
    assert env == {"HOME": "/h", "GLIBC_TUNABLES": f"{TUNABLE}=1"}
    env = hugepage_environment(
        {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, system="Linux", libc="glibc", thp_setting=thp
    )
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{TUNABLE}=1"


def test_environment_untouched_where_it_cannot_help_or_was_chosen(tmp_path):
    thp = _thp(tmp_path, "[always] madvise never")
    assert hugepage_environment({}, system="Darwin", libc="", thp_setting=thp) is None
    assert hugepage_environment({}, system="Linux", libc="musl", thp_setting=thp) is None
    assert (
        hugepage_environment({}, system="Linux", libc="glibc", thp_setting=_thp(tmp_path, "always madvise [never]"))
        is None
    )
    assert hugepage_environment({}, system="Linux", libc="glibc", thp_setting=str(tmp_path / "missing")) is None
    opted_out = {"GLIBC_TUNABLES": f"{TUNABLE}=0"}
    assert hugepage_environment(opted_out, system="Linux", libc="glibc", thp_setting=thp) is None


def test_reexec_runs_the_command_again_with_the_tunable():
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    applies = hugepage_environment(env) is not None
    child = "import os; print('child', os.environ.get('GLIBC_TUNABLES'))"
    script = (
        "from llava_jax.runtime.hugepages import reexec_with_hugepages\n"
        f"reexec_with_hugepages(['-c', {child!r}])\n"
        "print('not re-executed')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == (f"child {TUNABLE}=1" if applies else "not re-executed")
    # Already set: no second exec (no loop), whatever the value.
    env["GLIBC_TUNABLES"] = f"{TUNABLE}=0"
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "not re-executed"


def test_cli_reexecs_train_and_demo_only_when_launched(monkeypatch):
    import llava_jax.runtime.hugepages
    from llava_jax import cli

    calls = []

    def record(python_args):
        calls.append(list(python_args))
        raise SystemExit(0)  # stands in for the exec

    monkeypatch.setattr(llava_jax.runtime.hugepages, "reexec_with_hugepages", record)
    monkeypatch.setattr(sys, "argv", ["llava-jax", "train", "--workdir", "w"])
    try:
        cli.main()
    except SystemExit:
        pass
    assert calls == [["-m", "llava_jax.cli", "train", "--workdir", "w"]]
    monkeypatch.setattr(sys, "argv", ["llava-jax", "chat", "--help"])
    try:
        cli.main()  # --help exits; chat is not re-executed
    except SystemExit:
        pass
    try:
        cli.main(["demo", "--help"])  # called with arguments (a test, a notebook): never re-executed
    except SystemExit:
        pass
    assert len(calls) == 1
