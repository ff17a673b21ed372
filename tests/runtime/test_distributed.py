"""`llava_jax.runtime.distributed`: when it starts the runtime, and how a lost peer is recognised."""

import pytest

from llava_jax.runtime import distributed

CLUSTER_VARS = [
    "LLAVA_JAX_DISTRIBUTED",
    "LLAVA_JAX_COORDINATOR",
    "LLAVA_JAX_NUM_PROCESSES",
    "LLAVA_JAX_PROCESS_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_STEP_NUM_TASKS",
    "SLURM_NTASKS",
    "SLURM_JOB_ID",
    "OMPI_COMM_WORLD_SIZE",
    "TPU_WORKER_HOSTNAMES",
    "TPU_PROCESS_ADDRESSES",
]


@pytest.fixture
def clean_env(monkeypatch):
    for name in CLUSTER_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    return monkeypatch


def test_a_lone_process_starts_nothing(clean_env):
    assert not distributed.cluster_detected()
    assert distributed.initialize() is False
    clean_env.setenv("LLAVA_JAX_COORDINATOR", "127.0.0.1:1234")
    clean_env.setenv("LLAVA_JAX_NUM_PROCESSES", "1")
    assert distributed.initialize() is False  # one process needs no coordinator


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}, False),  # the batch shell, not a step
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_STEP_NUM_TASKS": "2"}, True),
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_STEP_NUM_TASKS": "1"}, False),
        ({"OMPI_COMM_WORLD_SIZE": "4"}, True),
        ({"TPU_WORKER_HOSTNAMES": "host-0,host-1"}, True),
        ({"TPU_WORKER_HOSTNAMES": "host-0"}, False),
        ({"LLAVA_JAX_DISTRIBUTED": "1"}, True),
        ({"LLAVA_JAX_DISTRIBUTED": "0", "OMPI_COMM_WORLD_SIZE": "4"}, False),
    ],
)
def test_cluster_detection(clean_env, env, expected):
    for name, value in env.items():
        clean_env.setenv(name, value)
    assert distributed.cluster_detected() is expected


def test_switched_off_wins_over_an_explicit_coordinator(clean_env):
    for name, value in {
        "LLAVA_JAX_DISTRIBUTED": "off",
        "LLAVA_JAX_COORDINATOR": "127.0.0.1:1",
        "LLAVA_JAX_NUM_PROCESSES": "2",
        "LLAVA_JAX_PROCESS_ID": "0",
    }.items():
        clean_env.setenv(name, value)
    assert distributed.initialize() is False


def test_peer_loss_is_recognised_through_exception_chains():
    gloo = RuntimeError(
        "UNKNOWN: Gloo AllGather failed: [pair.cc:538] Read error [127.0.0.1]:5: Connection reset by peer"
    )
    assert distributed.is_peer_loss(gloo)
    heartbeat = RuntimeError("UNAVAILABLE: Task 1 heartbeat timeout. This indicates that the remote task has failed")
    assert distributed.is_peer_loss(heartbeat)
    try:
        try:
            raise gloo
        except RuntimeError as e:
            raise ValueError("while fetching metrics") from e
    except ValueError as wrapped:
        assert distributed.is_peer_loss(wrapped)
    assert not distributed.is_peer_loss(ValueError("global batch 10 not divisible by 4 processes"))
    assert not distributed.is_peer_loss(FloatingPointError("non-finite loss"))


def test_heartbeat_timeout_defaults_to_jaxs_100_s(clean_env):
    import inspect

    import jax

    jax_default = inspect.signature(jax.distributed.initialize).parameters["heartbeat_timeout_seconds"].default
    calls = []
    clean_env.setattr(distributed, "_initialized", False)
    clean_env.setattr(jax.distributed, "initialize", lambda *a, **kw: calls.append(kw))
    clean_env.setenv("JAX_PLATFORMS", "")  # keeps this process's CPU collectives setting as it is
    clean_env.delenv("LLAVA_JAX_HEARTBEAT_TIMEOUT_S", raising=False)
    assert distributed.initialize("127.0.0.1:1234", 2, 0) is True
    clean_env.setattr(distributed, "_initialized", False)
    clean_env.setenv("LLAVA_JAX_HEARTBEAT_TIMEOUT_S", "7")
    assert distributed.initialize("127.0.0.1:1234", 2, 1) is True
    assert [c["heartbeat_timeout_seconds"] for c in calls] == [jax_default, 7]
