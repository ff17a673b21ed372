"""Several real processes (JAX's multi-controller runtime, gloo on CPU): the end of the data and SIGTERM.

Packed stage-2 data whose per-process slices pack into different numbers of
batches (checked below: 2 processes and 3 processes each get unequal counts),
`num_epochs=1` and more planned steps than any slice has. The runs:
  reference  2 processes run to the end of the data;
  stopped    2 processes, SIGTERM to both (as a launcher sends it) once step 1 is logged:
             both stop at the step JAX's preemption service agrees on, write its
             checkpoint and exit 76;
  resumed    2 processes restarted on that workdir, run to the end of the data;
  three      3 processes run to the end of the data.
Before the agreement a process whose slice ran out left the loop while the
others waited in the next step's collectives forever (the runs time out).
The processes are started directly, as `launch/local.sh` starts them.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llava_jax.runtime.exit_codes import PREEMPTED_EXIT_CODE
from llava_jax.runtime.ports import free_port

REPO = Path(__file__).resolve().parents[2]
# The first samples of the synthetic stage-2 set: 144 pack into [7, 8] batches for 2 processes
# (enough steps to stop in the middle), 48 into [3, 4, 3] for 3.
SAMPLES = {2: 144, 3: 48}
RUN_TIMEOUT_S = 240
PEERS_AFTER_FAILURE_S = 30  # more than the 10 s heartbeat timeout below


def _train_args(n: int, data: Path, workdir: Path, batch: int) -> list[str]:
    return [
        "--config",
        str(REPO / "configs" / "tiny.py"),
        "--workdir",
        str(workdir),
        f"--config.data.json={data / f'train_{n}.json'}",
        f"--config.data.image_root={data / 'images'}",
        "--config.data.template=vicuna_v1",
        "--config.data.image_mode=pad",
        "--config.data.batching=pack",
        "--config.data.num_epochs=1",
        "--config.num_steps=1000",  # more than the data has: the data ends the run
        f"--config.batch_size={batch}",  # one row per device
        "--config.checkpoint.every_steps=1000",
        "--config.progress=False",
    ]


def _start(n: int, devices: int, data: Path, workdir: Path) -> list[tuple[subprocess.Popen, Path]]:
    port = free_port()
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    logs = workdir.parent / f"{workdir.name}_logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(n):
        env = dict(
            os.environ,  # the suite's compilation cache included
            JAX_PLATFORMS="cpu",
            XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={devices}",
            LLAVA_JAX_COORDINATOR=f"127.0.0.1:{port}",
            LLAVA_JAX_NUM_PROCESSES=str(n),
            LLAVA_JAX_PROCESS_ID=str(i),
            LLAVA_JAX_HEARTBEAT_TIMEOUT_S="10",
            PYTHONPATH=str(REPO),
            PYTHONUNBUFFERED="1",
        )
        cmd = [sys.executable, "-m", "llava_jax.cli", "train", *_train_args(n, data, workdir, n * devices)]
        log = logs / f"process_{i}.log"
        with open(log, "w") as out:
            procs.append((subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT), log))
    return procs


def _finish(procs) -> dict:
    """Exit statuses and logs; on a timeout every process is killed and the status is None.

    Once one process has failed, the others get PEERS_AFTER_FAILURE_S to follow (they would
    otherwise wait out JAX's timeouts) before they are killed.
    """
    deadline = time.time() + RUN_TIMEOUT_S
    while time.time() < deadline and any(proc.poll() is None for proc, _ in procs):
        if any(proc.poll() not in (None, 0) for proc, _ in procs):
            deadline = min(deadline, time.time() + PEERS_AFTER_FAILURE_S)
        time.sleep(0.1)
    codes = [proc.poll() for proc, _ in procs]
    for proc, _ in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {"codes": codes, "logs": [log.read_text() for _, log in procs]}


def _steps_logged(workdir: Path) -> list[int]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]


def _rows(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _ends(logs) -> list[int]:
    """The step each process says the data ended after."""
    return [int(m.group(1)) for log in logs for m in [re.search(r"end of the data after step (\d+)", log)] if m]


def _packed_counts(data: Path, processes: int, batch: int) -> list[int]:
    from llava_jax.data.pipeline import DataConfig, build_dataset
    from llava_jax.data.sources import open_source
    from llava_jax.demo.synthetic import synthetic_tokenizer
    from llava_jax.presets import SYNTHETIC_IMAGE_TOKEN

    config = DataConfig(
        template="vicuna_v1",
        image_mode="pad",
        image_size=56,
        image_seq_length=16,
        image_token_index=SYNTHETIC_IMAGE_TOKEN,
        max_length=256,
        global_batch_size=batch,
        batching="pack",
        max_images_per_row=4,
        num_epochs=1,
    )
    source = open_source(str(data / f"train_{processes}.json"), str(data / "images"))
    tokenizer = synthetic_tokenizer()
    return [
        sum(1 for _ in build_dataset(config, source, tokenizer, process_index=i, process_count=processes))
        for i in range(processes)
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from llava_jax.demo.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("multiprocess_runs")
    data = root / "data"
    write_synthetic_dataset(str(data), num_captions=8, num_qa=160, num_eval=8, image_size=56, seed=0)
    rows = json.loads((data / "stage2_instruct.json").read_text())
    for n, samples in SAMPLES.items():
        (data / f"train_{n}.json").write_text(json.dumps(rows[:samples]))
    out = {"counts2": _packed_counts(data, 2, 8), "counts3": _packed_counts(data, 3, 6)}
    # Two runs at a time (much of a run is start-up and barriers, not computation): reference and
    # stopped, then resumed and three.
    reference = _start(2, 4, data, root / "reference")
    stopped = _start(2, 4, data, root / "stopped")
    deadline = time.time() + RUN_TIMEOUT_S
    while time.time() < deadline and not _steps_logged(root / "stopped") and stopped[0][0].poll() is None:
        time.sleep(0.05)
    for proc, _ in stopped:  # to every process, as a launcher does
        proc.send_signal(signal.SIGTERM)
    out["stopped"] = _finish(stopped)
    ckpt = root / "stopped" / "checkpoints"
    out["stopped_checkpoints"] = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    out["stopped_steps"] = _steps_logged(root / "stopped")
    resumed = _start(2, 4, data, root / "stopped")
    three = _start(3, 2, data, root / "three")
    out["reference"] = _finish(reference)
    out["reference_rows"] = _rows(root / "reference") if (root / "reference" / "metrics.jsonl").exists() else []
    out["resumed"] = _finish(resumed)
    out["resumed_rows"] = _rows(root / "stopped")
    out["three"] = _finish(three)
    return out


def _ok(run) -> str:
    """The processes' statuses and log tails, for a failure message."""
    return "\n".join(
        f"--- process {i} (status {code})\n{log[-3000:]}"
        for i, (code, log) in enumerate(zip(run["codes"], run["logs"]))
    )


@pytest.mark.slow
def test_processes_with_unequal_data_stop_together_at_its_end(runs):
    counts2, counts3 = runs["counts2"], runs["counts3"]
    assert len(set(counts2)) > 1 and len(set(counts3)) > 1, (counts2, counts3)  # the premise
    for name, counts in (("reference", counts2), ("resumed", counts2), ("three", counts3)):
        run = runs[name]
        assert run["codes"] == [0] * len(counts), _ok(run)
        assert _ends(run["logs"]) == [min(counts)] * len(counts), _ok(run)
    assert [r["step"] for r in runs["reference_rows"]] == list(range(1, min(counts2) + 1))


@pytest.mark.slow
def test_sigterm_stops_every_process_at_the_agreed_step_and_the_resume_is_bit_identical(runs):
    stopped = runs["stopped"]
    assert stopped["codes"] == [PREEMPTED_EXIT_CODE] * 2, _ok(stopped)
    agreed = [int(m) for log in stopped["logs"] for m in re.findall(r"checkpoint of step (\d+) written", log)]
    assert len(agreed) == 2 and agreed[0] == agreed[1], _ok(stopped)
    step = agreed[0]
    assert 1 <= step < min(runs["counts2"])  # mid-run
    assert runs["stopped_checkpoints"][-1] == step and runs["stopped_steps"][-1] == step
    resumed, reference = runs["resumed_rows"], runs["reference_rows"]
    assert [r["step"] for r in resumed] == [r["step"] for r in reference]  # each step once
    assert [r["train/loss"] for r in resumed] == [r["train/loss"] for r in reference]
    assert re.search(rf"resumed from .*stopped/checkpoints step {step}\b", runs["resumed"]["logs"][0])
    first = resumed[step]  # the resume's first row records the restart
    assert first["restart/redone_steps"] == 0 and first["restart/downtime_s"] >= 0
