"""bench/attention.py on CPU (interpret mode, tiny sizes): its correctness rows catch a wrong kernel, its tables
list every implementation."""

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "attention.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_attention", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(bench)
    return bench


def test_cpu_smoke_flags_a_wrong_kernel(tmp_path, monkeypatch):
    bench = _load_bench()
    attention = bench.K.attention

    def splash_off_by_two_percent(q, k, v, *, impl, **kw):
        out = attention(q, k, v, impl=impl, **kw)
        return out * 1.02 if impl == "splash" else out

    monkeypatch.setattr(bench.K, "attention", splash_off_by_two_percent)
    bench.main(["--cpu-smoke", "--out", str(tmp_path)])

    result = json.loads((tmp_path / "attention.json").read_text())
    checked = {r["impl"]: r for r in result["correctness"]}
    assert set(checked) == {"pallas_gpu", "splash", "cudnn"}
    assert checked["pallas_gpu"]["ok"] and max(checked["pallas_gpu"]["errors"]) < 1e-5
    # The wrong kernel fails, by about what it is off (out, then dq, dk, dv through the scaled output).
    assert checked["splash"]["ok"] is False
    assert 5e-3 < checked["splash"]["errors"][0] <= 0.02
    assert "GPU" in checked["cudnn"]["skipped"]
    timed = {r["impl"]: r for r in result["timing"]}
    assert list(timed) == ["xla", "cudnn", "pallas_gpu", "splash", "cudnn*"]
    for impl in ("xla", "pallas_gpu", "splash"):
        assert {"fwd_ms", "fwd_bwd_ms", "fwd_tflops", "fwd_speedup"} <= set(timed[impl]), timed[impl]
    assert "skipped" in timed["cudnn"] and "skipped" in timed["cudnn*"]
    # The tables: a row per correctness check with its status, a row per timed implementation.
    rows = [line.split("|")[1:-1] for line in (tmp_path / "attention.md").read_text().splitlines() if "|" in line]
    status = {cells[1].strip(): cells[3].strip() for cells in rows if len(cells) == 4 and "T=" in cells[0]}
    assert status["pallas_gpu"] == "ok" and status["splash"].startswith("FAIL")
    assert [cells[1].strip() for cells in rows if len(cells) == 10 and cells[0].strip().isdigit()] == list(timed)
