"""The package layout: imports go one way between subpackages (module-level and deferred imports alike)."""

from __future__ import annotations

import ast
import collections
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "llava_jax"

# Each unit may import only units of a lower rank: cli -> api -> {infer, train, eval, convert} -> model
# -> kernels, sharding, config (STYLE.md). The root package is the curated facade; nothing imports it.
RANK = {
    "kernels": 0,
    "sharding": 0,
    "runtime": 0,
    "config": 1,
    "presets": 2,
    "model": 2,
    "data": 2,
    "convert": 3,
    "infer": 3,
    "train": 4,
    "eval": 4,
    "api": 5,
    "demo": 6,
    "serve": 6,
    "cli": 7,
    "": 8,  # llava_jax/__init__.py
}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _targets(node) -> list[str]:
    """The llava_jax modules an import statement names (`from llava_jax import demo` names llava_jax.demo)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "llava_jax":
        return [f"llava_jax.{a.name}" if a.name in RANK else "llava_jax" for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module]
    return []


def import_edges(package: Path = PACKAGE) -> dict[tuple[str, str], list[str]]:
    """(importing unit, imported unit) -> the modules where it happens, for every llava_jax import in the tree."""
    edges: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for path in sorted(package.rglob("*.py")):
        module = ".".join(path.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for name in _targets(node):
                if name.split(".")[0] == "llava_jax" and _unit(name) != _unit(module):
                    edges[(_unit(module), _unit(name))].append(module)
    return dict(edges)


def test_every_unit_has_a_rank():
    units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if not p.name.startswith("__")}
    units = {u for u in units if (PACKAGE / u).is_dir() or (PACKAGE / f"{u}.py").exists()}
    assert units - {"assets"} <= set(RANK), sorted(units - set(RANK))


def test_imports_only_go_down():
    upward = {
        f"{a or 'llava_jax'} -> {b or 'llava_jax'}": sorted(set(where))
        for (a, b), where in import_edges().items()
        if RANK[b] >= RANK[a]
    }
    assert not upward, upward


def test_the_walk_sees_deferred_imports(tmp_path):
    """The walk must catch an upward import hidden inside a function, or the layout test proves nothing."""
    pkg = tmp_path / "llava_jax"
    (pkg / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "model" / "__init__.py").write_text("def f():\n    from llava_jax.api import load\n    return load\n")
    assert import_edges(pkg) == {("model", "api"): ["llava_jax.model"]}


def test_the_command_line_and_the_package_load_jax_only_when_used():
    """`llava-jax train` re-executes itself (runtime/hugepages.py): its first process imports no JAX.
    The package's names still resolve, `convert` to the function even after its subpackage loads."""
    import subprocess
    import sys

    code = (
        "import sys, llava_jax.cli, llava_jax.runtime.ports\n"
        "assert 'jax' not in sys.modules, 'jax imported'\n"
        "import llava_jax.convert.hf_config, llava_jax\n"
        "assert callable(llava_jax.convert) and llava_jax.convert.__module__ == 'llava_jax.api'\n"
        "from llava_jax import Llava, PRESETS, load, preprocess_image, tiny\n"
        "assert sorted(llava_jax.__all__) == sorted(set(llava_jax.__all__) & set(dir(llava_jax)))\n"
        "assert tiny().llm.num_layers > 0 and 'llava_v15_7b' in PRESETS\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
