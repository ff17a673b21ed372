"""Time the full `llava-jax demo` from a fresh workdir: wall clock, CPU time, machine load, accuracies.

  .venv/bin/python bench/demo.py [--workdir DIR] [--json OUT.json] [-- extra demo args]

Runs the demo as a subprocess (as `make demo` does), so interpreter start and
imports are counted. On a shared machine the wall time depends on the other
processes: the CPU time of the demo (user + system, children included) and
the load averages before and after are printed beside it, so runs can be
compared. The demo's own per-step times come from its `results.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="fresh workdir (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workdir")
    parser.add_argument("--json", default=None, help="write the measurements here")
    parser.add_argument("demo_args", nargs="*", help="more `llava-jax demo` arguments (after --)")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="llava_jax_demo_bench_")
    if os.path.exists(os.path.join(workdir, "timings.json")):
        print(f"{workdir} already holds a demo run: give a fresh --workdir", file=sys.stderr)
        return 2
    exe = os.path.join(os.path.dirname(sys.executable), "llava-jax")
    cmd = [exe, "demo", "--workdir", workdir, "--seed", "0", *args.demo_args]
    load_before = os.getloadavg()
    t0 = time.time()
    proc = subprocess.run(cmd, check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.time() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_after = os.getloadavg()
    if proc.returncode:
        print(f"demo failed with exit status {proc.returncode}", file=sys.stderr)
        return proc.returncode
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    out = {
        "wall_minutes": round(wall / 60, 2),
        "cpu_minutes": round((usage.ru_utime + usage.ru_stime) / 60, 2),
        "demo_minutes": results["minutes"],
        "cpu_count": os.cpu_count(),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after],
        "accuracy": results["accuracy"],
        "chance": results["chance"],
        "step_seconds": results["step_seconds"],
    }
    print(json.dumps(out, indent=2))
    print(
        "\n| wall min | CPU min | load 1/5/15 before -> after | overall | color | existence |\n"
        "|---|---|---|---|---|---|\n"
        f"| {out['wall_minutes']} | {out['cpu_minutes']} | {'/'.join(map(str, out['load_before']))} -> "
        f"{'/'.join(map(str, out['load_after']))} | {results['accuracy']['overall']:.1f} | "
        f"{results['accuracy']['color']:.1f} | {results['accuracy']['existence']:.1f} |"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    if args.workdir is None and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
