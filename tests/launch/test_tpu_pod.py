"""`launch/tpu_pod.sh` without Cloud TPUs: a stub `gcloud` records every call and runs the
workers' commands here (one worker, HOME in a temporary directory); stub `python3`, `uv` and
the environment's `python` report chosen versions and record what they were asked to do.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llava_jax.runtime.exit_codes import PREEMPTED_EXIT_CODE

REPO = Path(__file__).resolve().parents[2]
TPU_POD = REPO / "launch" / "tpu_pod.sh"

GCLOUD = f"""#!{sys.executable}
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
stub = os.environ["STUB_DIR"]
with open(os.path.join(stub, "gcloud_calls.jsonl"), "a") as f:
    f.write(json.dumps(args) + "\\n")
state_file = os.path.join(stub, "state")
if "describe" in args:
    if os.path.exists(state_file):
        print(open(state_file).read())
elif "create" in args:
    open(state_file, "w").write("READY")
elif "scp" in args:
    shutil.copy(args[args.index("scp") + 1], os.path.join(stub, "home", "llava_jax_src.tar.gz"))
elif "ssh" in args:
    command = next(a for a in args if a.startswith("--command="))[len("--command="):]
    env = dict(os.environ, HOME=os.path.join(stub, "home"))
    sys.exit(subprocess.call(["bash", "-c", command], env=env, cwd=env["HOME"]))
"""
# The image's interpreter (REMOTE_PYTHON=python3): too old.
PYTHON3 = """#!/usr/bin/env bash
echo "python3 $*" >> "$STUB_DIR/python_calls"
[[ "$1" == -c ]] && echo 3.10.12
exit 0
"""
UV = """#!/usr/bin/env bash
echo "uv $*" >> "$STUB_DIR/python_calls"
venv="${@: -1}"
mkdir -p "$venv/bin" && cp "$STUB_DIR/bin/venv_python" "$venv/bin/python"
"""
# The environment's interpreter: Python 3.11; `train` exits with the next of TRAIN_RCS.
VENV_PYTHON = """#!/usr/bin/env bash
echo "venv-python $*" >> "$STUB_DIR/python_calls"
[[ "$1" == -c ]] && { echo 3.11.9; exit 0; }
if [[ "$*" == *"llava_jax.cli train"* ]]; then
  n=$(cat "$STUB_DIR/trains" 2>/dev/null || echo 0)
  echo $((n + 1)) > "$STUB_DIR/trains"
  rcs=($TRAIN_RCS)
  exit "${rcs[$n]}"
fi
exit 0
"""


def _env(tmp_path: Path, **extra) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "home").mkdir()
    for name, text in (("gcloud", GCLOUD), ("python3", PYTHON3), ("uv", UV), ("venv_python", VENV_PYTHON)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("REMOTE_PYTHON", "PYTHON_VERSION", "NUM_SLICES")}
    env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", STUB_DIR=str(tmp_path), TPU_NAME="llava", ZONE="us-east5-a")
    env.update(TRAIN_RCS="0", TMPDIR=str(tmp_path))
    env.update(extra)
    return env


def _run(tmp_path: Path, *args: str, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(TPU_POD), *args, "--config", "configs/tiny.py", "--workdir", "gs://bucket/run"],
        env=_env(tmp_path, **extra),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _gcloud(tmp_path: Path) -> list[list[str]]:
    calls = tmp_path / "gcloud_calls.jsonl"
    return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []


def _python_calls(tmp_path: Path) -> str:
    calls = tmp_path / "python_calls"
    return calls.read_text() if calls.exists() else ""


def test_an_interpreter_older_than_3_11_is_refused_before_installing(tmp_path):
    proc = _run(tmp_path, REMOTE_PYTHON="python3")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "REMOTE_PYTHON=python3" in proc.stderr and "is Python 3.10.12" in proc.stderr
    assert "needs Python >= 3.11" in proc.stderr
    calls = _python_calls(tmp_path)
    assert "python3 -c" in calls and "pip install" not in calls and "-m venv" not in calls
    assert "llava_jax.cli train" not in calls


def test_python_version_setting_checked_before_any_cloud_call(tmp_path):
    proc = _run(tmp_path, PYTHON_VERSION="3.10")
    assert proc.returncode == 2 and "needs Python 3.11 or newer" in proc.stderr
    assert _gcloud(tmp_path) == []


@pytest.mark.parametrize(("train_rcs", "expected_rc", "trains"), [(f"{PREEMPTED_EXIT_CODE} 0", 0, 2), ("1", 1, 1)])
def test_uv_environment_and_restart_on_a_restartable_status(tmp_path, train_rcs, expected_rc, trains):
    proc = _run(tmp_path, TRAIN_RCS=train_rcs)
    log = proc.stdout + proc.stderr
    assert proc.returncode == expected_rc, log
    calls = _gcloud(tmp_path)
    creates = [c for c in calls if "create" in c]
    assert len(creates) == 1 and creates[0][:5] == ["compute", "tpus", "tpu-vm", "create", "llava"]
    assert "--accelerator-type=v5p-8" in creates[0] and "--version=v2-alpha-tpuv5" in creates[0]
    home = tmp_path / "home"
    assert (home / "llava_jax" / "setup.py").exists(), "the checkout was not unpacked on the worker"
    python = _python_calls(tmp_path)
    assert f"uv venv --seed --python 3.11 {home}/llava_jax_venv" in python
    assert f"-m pip install -q -e {home}/llava_jax jax[tpu]==0.10.2" in python
    train_lines = [line for line in python.splitlines() if "llava_jax.cli train" in line]
    assert len(train_lines) == trains and all(line.startswith("venv-python ") for line in train_lines)
    assert "--workdir gs://bucket/run" in train_lines[0]
    if expected_rc == 0:
        assert "restart 1 of 3" in proc.stdout
    else:
        assert "not restarting" in proc.stderr


def test_dry_run_of_two_slices_uses_a_queued_resource(tmp_path):
    proc = _run(tmp_path, "--dry-run", NUM_SLICES="2")
    assert proc.returncode == 0, proc.stderr
    assert _gcloud(tmp_path) == [], "a dry run called gcloud"
    out = proc.stdout
    assert (
        "+ gcloud compute tpus queued-resources create llava --zone=us-east5-a --node-count=2 --node-prefix=llava "
        "--accelerator-type=v5p-8 --runtime-version=v2-alpha-tpuv5" in out
    )
    for node in ("llava-0", "llava-1"):
        assert f"tpu-vm scp {tmp_path}" in out and f" {node}:llava_jax_src.tar.gz --zone=us-east5-a --worker=all" in out
    assert "+ gcloud compute tpus queued-resources ssh llava --zone=us-east5-a --node=all --worker=all" in out
    assert "uv venv --seed --python 3.11" in out
    assert "llava_jax_venv/bin/python -m llava_jax.cli train --config configs/tiny.py --workdir gs://bucket/run" in out
