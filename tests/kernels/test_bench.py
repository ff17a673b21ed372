"""bench/attention.py runs end to end on CPU (interpret mode, tiny sizes)."""

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "attention.py"


def test_cpu_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_attention", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(bench)
    bench.main(["--cpu-smoke", "--out", str(tmp_path)])

    result = json.loads((tmp_path / "attention.json").read_text())
    checked = {r["impl"]: r for r in result["correctness"]}
    assert checked["pallas_gpu"]["ok"] and checked["splash"]["ok"]
    assert "GPU" in checked["cudnn"]["skipped"]
    timed = {r["impl"]: r for r in result["timing"]}
    for impl in ("xla", "pallas_gpu", "splash"):
        assert timed[impl]["fwd_ms"] > 0 and timed[impl]["fwd_bwd_ms"] > 0, timed[impl]
        assert timed[impl]["fwd_tflops"] > 0
    assert timed["xla"]["fwd_speedup"] == 1.0
    assert "skipped" in timed["cudnn*"]
    assert "| pallas_gpu |" in (tmp_path / "attention.md").read_text()
