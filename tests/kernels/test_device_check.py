"""bench/device_check.py (the prepared GPU session of issue #20) runs end to end on CPU at tiny sizes."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "device_check.py"


@pytest.mark.slow
def test_cpu_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_device_check", SCRIPT)
    check = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = check
    spec.loader.exec_module(check)
    check.main(["--cpu-smoke", "--out", str(tmp_path), "--policies", "full,minimal"])

    result = json.loads((tmp_path / "device_check.json").read_text())
    assert result["ceilings"]["matmul_tflops"][0] > 0 and result["ceilings"]["copy_gbs"] > 0
    correct = {r["impl"]: r for r in result["correctness"]}
    assert set(correct) == {"pallas_gpu[default]", "pallas_gpu[q64k64-w4]", "jax_pallas_mha", "jax_pallas_mha[q64k64]"}
    assert all(r["ok"] for r in correct.values()), correct
    timed = {r["impl"]: r for r in result["attention"]}
    assert "pallas_gpu[default] (again)" in timed and result["pallas_best"].startswith("pallas_gpu[")
    for name, row in timed.items():
        assert row["fwd_ms"] > 0 and row["fwd_bwd_ms"] > 0 and row["fwd_floor_ms"] > 0, name
    steps = {r["remat"]: r for r in result["step"]}
    assert set(steps) == {"full", "minimal"}
    assert all(r["step_s"] > 0 and r["loss"] > 0 for r in steps.values()), steps
    table = (tmp_path / "device_check.md").read_text()
    assert "| minimal |" in table and "pallas_gpu sweep winner" in table
