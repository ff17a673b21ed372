"""Test set-up: 8 simulated CPU devices, fast XLA compiles, float32 highest matmul precision, offline hub,
one compilation cache.

The persistent JAX compilation cache is on for the whole run, in this process
and in every subprocess a test starts (they inherit the environment): a program
compiled once (the tiny train step of the CLI runs, the multi-process runs, the
demo's stages) is loaded from disk by every later compile of the same program.
The cache is a fresh temporary directory per pytest run, removed at exit, so the
suite's time is that of a cold run and no test depends on what an earlier run
(or an earlier test) left behind. Under pytest-xdist the workers share the
controller's directory.
"""

import atexit
import os
import shutil
import tempfile

# 8 simulated devices; XLA's CPU backend at optimisation level 0 (LLVM's passes off): the tests' programs
# are tiny, so compiling dominates, and level 0 compiles the tiny train step in less than half the CPU time
# (init_params: a third). Results differ from the default level by float rounding only (fused
# multiply-adds): the tiny train step's loss agrees to every printed digit. A flag the caller set wins.
_FLAGS = {"xla_force_host_platform_device_count": "8", "xla_backend_optimization_level": "0"}
_flags = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = " ".join([_flags, *(f"--{k}={v}" for k, v in _FLAGS.items() if k not in _flags)]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Set by the process that made this run's cache; an xdist worker (a child of it) reuses the directory.
_CACHE_OWNER = "LLAVA_JAX_TEST_CACHE_OWNER"
if (
    os.environ.get("PYTEST_XDIST_WORKER")
    and os.environ.get(_CACHE_OWNER)
    and os.environ.get("JAX_COMPILATION_CACHE_DIR")
):
    JAX_CACHE_DIR = os.environ["JAX_COMPILATION_CACHE_DIR"]
else:
    JAX_CACHE_DIR = tempfile.mkdtemp(prefix="llava_jax_tests_jax_cache_")
    os.environ[_CACHE_OWNER] = str(os.getpid())
    atexit.register(shutil.rmtree, JAX_CACHE_DIR, True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = JAX_CACHE_DIR
# Only programs that take a while to compile are written (the tiny eager ops are not worth a file each).
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.3"

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
# The environment variables above already set these when jax is first imported here; set them explicitly
# in case something imported jax earlier (a plugin), so this process caches from its first compile.
jax.config.update("jax_compilation_cache_dir", JAX_CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)


@pytest.fixture(scope="session")
def torch_cpu():
    """torch, limited to the CPU threads CI has."""
    import torch

    torch.set_num_threads(2)
    return torch


# The longest files first (measured with `--durations`, bench/RESULTS.md "Test suite"): `make test`'s
# workers take whole files (`--dist loadfile --no-loadscope-reorder`) in collection order, so a long
# file collected late would run alone at the end while the other worker idles (xdist's own reordering,
# by number of tests, put these files with few long tests last). The rest keep their order.
LONGEST_FILES = (
    "tests/demo/test_demo.py",
    "tests/train/test_loop_multiprocess.py",
    "tests/launch/test_multiprocess.py",
    "tests/train/test_step.py",
    "tests/train/test_production_path.py",
    "tests/train/test_loop.py",
    "tests/infer/test_generate.py",
    "tests/train/test_plan.py",
    "tests/data/test_pipeline_workers.py",
    "tests/serve/test_api.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    root = config.rootpath
    items.sort(key=lambda item: rank.get(item.path.relative_to(root).as_posix(), len(rank)))
