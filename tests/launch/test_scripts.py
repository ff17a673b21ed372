"""Launch scripts and manifests, checked without a cluster: syntax, lint, XLA flags, rendering."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llava_jax.runtime.exit_codes import RESTARTABLE_EXIT_CODES

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch"
SCRIPTS = [LAUNCH / "local.sh", LAUNCH / "tpu_pod.sh", LAUNCH / "slurm.sbatch"]
ENV = {
    "NAME": "llava-ft13b",
    "IMAGE": "example/llava-jax:tag",
    "BUCKET": "my-bucket",
    "KSA": "llava-jax",
    "TPU_ACCELERATOR": "tpu-v5p-slice",
    "TPU_TOPOLOGY": "4x4x4",
    "SLICES": "2",
    "HOSTS": "16",
    "CHIPS_PER_HOST": "4",
    "GPU_ACCELERATOR": "nvidia-h100-80gb",
    "NODES": "2",
    "MAX_RESTARTS": "10",
    "CONFIG": "configs/finetune_13b.py",
    "RUN": "runs/ft13b",
    "MESH_DATA": "4",
    "MESH_FSDP": "4",
    "MESH_TENSOR": "1",
}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_syntax_and_shellcheck(script):
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed")
    proc = subprocess.run(["shellcheck", str(script)], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def _gpu_flags() -> list[str]:
    """The XLA flags slurm.sbatch and the GPU JobSet set, with the script's default threshold."""
    text = (LAUNCH / "slurm.sbatch").read_text()
    threshold = int(re.search(r"COMBINE_THRESHOLD_BYTES:-(\d+)", text).group(1))
    text = text.replace("${threshold}", str(threshold)).replace("$((threshold / 2))", str(threshold // 2))
    flags = set(re.findall(r"--xla_[a-z0-9_]+=[^\s\\\"]*", text))
    flags |= set(re.findall(r"--xla_[a-z0-9_]+=\S+", (LAUNCH / "gke" / "jobset-gpu.yaml").read_text()))
    return sorted(flags)


def _xla_accepts(flags: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-c", "import jax; jax.devices()"],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_gpu_xla_flags_exist_in_the_pinned_jaxlib():
    """XLA aborts on an unknown flag; GPU flags are registered in every jaxlib build, so CPU checks them."""
    flags = _gpu_flags()
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in flags
    assert any("combine_threshold_bytes" in f for f in flags)
    proc = _xla_accepts(flags)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _xla_accepts(["--xla_gpu_no_such_flag_for_the_test=true"]).returncode != 0  # the check can fail


def _render(name: str) -> dict:
    text = (LAUNCH / "gke" / name).read_text()
    names = set(re.findall(r"\$\{([A-Z_]+)\}", text))
    assert names <= set(ENV), names - set(ENV)
    rendered = re.sub(r"\$\{([A-Z_]+)\}", lambda m: ENV[m.group(1)], text)
    return yaml.safe_load(rendered)


def _pod(jobset: dict) -> tuple[dict, dict]:
    job = jobset["spec"]["replicatedJobs"][0]
    return job, job["template"]["spec"]["template"]["spec"]


def test_tpu_jobset_renders():
    jobset = _render("jobset-tpu.yaml")
    assert jobset["kind"] == "JobSet" and jobset["metadata"]["name"] == ENV["NAME"]
    job, pod = _pod(jobset)
    assert job["template"]["spec"]["parallelism"] == job["template"]["spec"]["completions"] == 16
    assert job["template"]["spec"]["backoffLimit"] == 0
    assert pod["nodeSelector"]["cloud.google.com/gke-tpu-topology"] == "4x4x4"
    container = pod["containers"][0]
    assert container["resources"]["limits"]["google.com/tpu"] == 4
    assert container["command"][-1] == "train" and "--workdir=/gcs/runs/ft13b" in container["args"]
    _restart_policy(jobset)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LLAVA_JAX_DISTRIBUTED"] == "1"


def _restart_policy(jobset: dict) -> None:
    """75/76/77 and signals restart the JobSet; any other status fails it at once."""
    job, pod = _pod(jobset)
    assert jobset["spec"]["failurePolicy"]["rules"] == [
        {"action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]}
    ]
    (rule,) = job["template"]["spec"]["podFailurePolicy"]["rules"]
    codes = rule["onExitCodes"]
    assert rule["action"] == "FailJob" and codes["operator"] == "NotIn" and codes["containerName"] == "train"
    assert set(codes["values"]) == {*RESTARTABLE_EXIT_CODES, 137, 143}
    assert pod["containers"][0]["name"] == "train" and pod["terminationGracePeriodSeconds"] == 30


@pytest.mark.parametrize(("slices", "expected"), [("2", True), ("1", False)])
def test_tpu_jobset_joins_slices_only_when_there_are_several(tmp_path, slices, expected):
    """Run the container's command with a stub python that prints what JAX would read."""
    text = (LAUNCH / "gke" / "jobset-tpu.yaml").read_text()
    jobset = yaml.safe_load(re.sub(r"\$\{([A-Z_]+)\}", lambda m: dict(ENV, SLICES=slices)[m.group(1)], text))
    job, pod = _pod(jobset)
    assert job["replicas"] == int(slices)
    _restart_policy(jobset)
    container = pod["containers"][0]
    (tmp_path / "python").write_text('#!/usr/bin/env bash\necho "args: $*"; env | grep ^MEGASCALE_ | sort\n')
    (tmp_path / "python").chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", SLICE_INDEX="1")
    out = subprocess.run(
        container["command"] + container["args"], env=env, capture_output=True, text=True, check=True, timeout=30
    ).stdout
    assert out.startswith("args: -m llava_jax.cli train --config=configs/finetune_13b.py --workdir=/gcs/runs/ft13b")
    megascale = [line for line in out.splitlines() if line.startswith("MEGASCALE_")]
    if expected:
        assert megascale == [
            f"MEGASCALE_COORDINATOR_ADDRESS={ENV['NAME']}-slice-0-0.{ENV['NAME']}",
            "MEGASCALE_NUM_SLICES=2",
            "MEGASCALE_SLICE_ID=1",
        ]
    else:
        assert megascale == []


def test_gpu_jobset_renders_with_a_resolvable_coordinator():
    jobset = _render("jobset-gpu.yaml")
    job, pod = _pod(jobset)
    spec = job["template"]["spec"]
    assert spec["completionMode"] == "Indexed" and spec["parallelism"] == 2
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    # Pod 0's hostname in a JobSet: <jobset>-<replicated job>-<job index>-<pod index>.<subdomain = jobset>.
    host = f"{ENV['NAME']}-{job['name']}-0-0.{ENV['NAME']}"
    assert env["LLAVA_JAX_COORDINATOR"]["value"].startswith(host + ":")
    assert env["LLAVA_JAX_NUM_PROCESSES"]["value"] == "2"
    assert "job-completion-index" in env["LLAVA_JAX_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 8
    _restart_policy(jobset)
