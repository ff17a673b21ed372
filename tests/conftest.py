"""Test set-up: 8 simulated CPU devices, float32 highest matmul precision, offline hub."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ["XLA_FLAGS"] = (
    os.environ["XLA_FLAGS"] + " --xla_force_host_platform_device_count=8"
    if "device_count" not in os.environ["XLA_FLAGS"]
    else os.environ["XLA_FLAGS"]
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def torch_cpu():
    """torch, limited to the CPU threads CI has."""
    import torch

    torch.set_num_threads(2)
    return torch
