"""Coordinator ports: picked outside the ephemeral range; a taken one is named in process 0's error."""

import os
import socket
import subprocess
import sys
from pathlib import Path

from llava_jax.runtime import ports

REPO = Path(__file__).resolve().parents[2]


def test_the_port_is_free_and_below_the_ephemeral_range():
    start = ports._ephemeral_start()
    for _ in range(20):
        port = ports.free_port()
        assert 20000 <= port < start
        assert ports.port_is_free(port)
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_taken_port_is_skipped(monkeypatch):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        picks = iter([taken, taken, 23457])
        monkeypatch.setattr(ports, "_ephemeral_start", lambda: 60000)
        monkeypatch.setattr(ports.random.SystemRandom, "randrange", lambda self, lo, hi: next(picks))
        assert ports.free_port() == 23457


def test_a_port_held_on_loopback_only_is_not_free():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        assert not ports.port_is_free(held.getsockname()[1])


def test_a_low_ephemeral_range_falls_back_to_a_kernel_port(monkeypatch):
    monkeypatch.setattr(ports, "_ephemeral_start", lambda: 20500)
    port = ports.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_the_launcher_runs_the_file_without_the_package():
    # `python -I` with the file as a script, from an empty directory: no llava_jax import needed.
    out = subprocess.run(
        [sys.executable, "-I", "-X", "importtime", str(REPO / "llava_jax" / "runtime" / "ports.py")],
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    )
    assert 20000 <= int(out.stdout) < 65536
    imported = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line]
    assert "socket" in imported
    assert not [name for name in imported if name.split(".")[0] in ("jax", "llava_jax")]


def test_process_0_names_a_coordinator_port_that_is_taken(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
        code = f"from llava_jax.runtime import distributed; distributed.initialize('127.0.0.1:{port}', 2, 0)"
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"cannot start the coordinator on 127.0.0.1:{port}: its port is in use" in proc.stderr, proc.stderr[-2000:]
