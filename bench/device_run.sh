#!/usr/bin/env bash
# The one prepared run for a lent GPU: kernel correctness + attention timings, then training MFU.
# Usage (on the device machine, repo root): bash bench/device_run.sh  (writes under $OUT)
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
timeout 150 python3 bench/attention.py --out "$OUT" --budget-s 95 2>&1 | tee "$OUT/attention.log" | tail -30
timeout 170 python3 bench/mfu.py --out "$OUT" --budget-s 90 2>&1 | tee "$OUT/mfu.log" | tail -12
