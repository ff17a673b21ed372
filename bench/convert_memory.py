"""Peak host memory of `llava-jax convert` on a synthetic >= 1B-parameter LLaVA checkpoint.

Writes a random HF-layout LLaVA (bfloat16 safetensors, sharded with an index,
as llava-hf ships) of about 1.3B parameters, converts it to a bfloat16
llava_jax checkpoint in a child process under `/usr/bin/time -v`, and prints
peak RSS over the model's size in the target dtype (target < 1.3).

Usage: python bench/convert_memory.py [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import ml_dtypes
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llava_jax.config import LlamaConfig, VisionConfig, compose_llava  # noqa: E402
from llava_jax.convert.hf import write_hf_weights  # noqa: E402
from llava_jax.convert.hf_config import llava_config_to_hf  # noqa: E402
from llava_jax.model.params import abstract_params, count_params  # noqa: E402


def synthetic_config():
    """~1.3B parameters: a ViT-B-sized tower and a 20-layer 2048-wide LLaMA."""
    vision = VisionConfig(
        hidden_size=768, intermediate_size=3072, num_layers=12, num_heads=12, image_size=336, patch_size=14
    )
    llm = LlamaConfig(
        vocab_size=32064,
        hidden_size=2048,
        intermediate_size=5504,
        num_layers=20,
        num_heads=16,
        num_kv_heads=16,
        head_dim=128,
    )
    return compose_llava(
        vision,
        llm,
        image_token_index=32000,
    )


class _LazyRandom:
    """A params-like tree whose leaves are generated on access (never all in memory)."""

    def __init__(self, abstract):
        self.abstract = abstract

    def __getitem__(self, key):
        sub = self.abstract[key]
        if isinstance(sub, dict):
            return _LazyRandom(sub)
        return _Leaf(sub.shape)


class _Leaf:
    def __init__(self, shape):
        self.shape, self.dtype = shape, np.dtype(ml_dtypes.bfloat16)

    def __getitem__(self, i):
        return _Leaf(self.shape[1:]) if isinstance(i, int) else NotImplemented

    def __array__(self, dtype=None, copy=None):
        rng = np.random.default_rng(abs(hash(self.shape)) % 2**32)
        return (rng.standard_normal(self.shape, np.float32) * 0.02).astype(ml_dtypes.bfloat16)


def write_checkpoint(config, directory):
    """Stream a random bf16 checkpoint in llava-hf's on-disk layout into `directory`."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({**llava_config_to_hf(config), "dtype": "bfloat16"}, f)
    write_hf_weights(_LazyRandom(abstract_params(config)), config, directory, max_shard_bytes=1 << 30)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="convert_mem_")
    config = synthetic_config()
    n = count_params(abstract_params(config))
    model_bytes = n * 2
    src, dst = os.path.join(work, "hf"), os.path.join(work, "jax")
    shutil.rmtree(dst, ignore_errors=True)
    if not os.path.exists(os.path.join(src, "config.json")):
        write_checkpoint(config, src)
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "llava_jax.cli", "convert", src, dst, "--dtype", "bfloat16"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        print(proc.stdout, proc.stderr)
        raise SystemExit(proc.returncode)
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", proc.stderr).group(1)
    ratio = peak_kib * 1024 / model_bytes
    print(proc.stdout.strip())
    print(f"parameters            {n / 1e9:.3f} B")
    print(f"model size (bf16)     {model_bytes / 2**30:.2f} GiB")
    print(f"peak RSS (convert)    {peak_kib / 2**20:.2f} GiB   wall {wall}")
    print(f"peak / model size     {ratio:.2f}x   (target < 1.30x)")
    if not args.keep and args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
