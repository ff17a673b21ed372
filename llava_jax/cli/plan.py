"""`llava-jax plan --config configs/NAME.py [--mesh data,fsdp,tensor] [--devices N] [--hbm-gib G]`.

Prints per-device memory (parameters, optimizer state, gradients, batch, an
activation estimate for the config's remat policy), whether it fits in G GiB,
and the smallest fsdp size that does. Needs no weights and no accelerator:
absent init directories fall back to the LLaVA-1.5 preset their names imply
(or `--preset`). `--compile` also compiles the real step on this machine's
devices (simulated CPU devices when there is no accelerator) and prints XLA's
numbers beside the estimate.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `llava-jax plan` (config overrides pass through as `--config.x=y`)."""
    parser.add_argument(
        "--config", required=True, help="experiment file exposing get_config(), e.g. configs/finetune_13b.py"
    )
    parser.add_argument(
        "--mesh", default=None, help="data,fsdp,tensor, one may be -1 (write --mesh=-1,8,1); default: the config's mesh"
    )
    parser.add_argument(
        "--devices",
        type=int,
        default=None,
        help="number of devices (default: the mesh's product, else this machine's device count)",
    )
    parser.add_argument(
        "--hbm-gib",
        type=float,
        default=None,
        help="memory per device in GiB (default: the local accelerator's, if any)",
    )
    parser.add_argument(
        "--preset",
        default=None,
        help="model preset when the config's init directories do not exist (llava_v15_7b, ...)",
    )
    parser.add_argument(
        "--platform",
        default=None,
        choices=("tpu", "gpu", "cpu"),
        help="target platform: decides what attention 'auto' means (default: this machine's)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also compile the train step on this machine's (or simulated CPU) devices",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.epilog = "Any config field can be overridden: --config.batch_size=64 --config.model.remat_policy=dots"


def _mesh_sizes(args, cfg) -> tuple[list[int], int | None]:
    if args.mesh:
        sizes = [int(x) for x in args.mesh.split(",")]
        if len(sizes) != 3:
            raise SystemExit(f"--mesh takes data,fsdp,tensor, got {args.mesh!r}")
    else:
        sizes = [int(cfg.mesh.data), int(cfg.mesh.fsdp), int(cfg.mesh.tensor)]
    devices = args.devices
    if devices is None and -1 not in sizes:
        devices = sizes[0] * sizes[1] * sizes[2]
    return sizes, devices


def _simulate_cpu_devices(n: int) -> None:
    """Ask XLA for `n` host devices; only effective before JAX's backend starts."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    os.environ["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={n}"])


def run(args: argparse.Namespace) -> int:
    """Load the config, plan the mesh, print."""
    from llava_jax.train.experiment import load_config

    cfg = load_config(args.config, getattr(args, "config_overrides", []))
    sizes, devices = _mesh_sizes(args, cfg)
    if args.compile and devices:
        _simulate_cpu_devices(devices)  # harmless on accelerators: the flag affects the host platform only
    import jax

    from llava_jax.sharding import resolve_mesh_shape
    from llava_jax.train import plan as planning

    if devices is None:
        devices = jax.device_count()
    shape = resolve_mesh_shape(sizes, devices)
    local = jax.default_backend()
    platform = args.platform or local
    hbm = args.hbm_gib
    if hbm is None and local != "cpu":
        stats = jax.local_devices()[0].memory_stats() or {}
        if "bytes_limit" in stats:
            hbm = stats["bytes_limit"] / planning.GIB
    plan = planning.make_plan(cfg, shape, hbm_gib=hbm, preset=args.preset, platform=platform)
    if args.compile:
        plan = dataclasses.replace(plan, compiled=_compile(cfg, args, shape))
    best = None
    if hbm is not None:
        best = planning.smallest_fsdp(cfg, devices, hbm, tensor=shape[2], preset=args.preset, platform=platform)
    if args.json:
        out = dataclasses.asdict(plan)
        out.update(
            total=plan.total,
            activation_total=plan.activation_total,
            fits=plan.fits,
            smallest_fsdp=None if best is None else list(best.mesh),
        )
        print(json.dumps(out, indent=2))
        return 0
    print(planning.format_plan(plan))
    if hbm is not None:
        shards = [devices // (shape[2] * f) * f for f in planning.fsdp_candidates(devices, shape[2])]
        if best is None and all(cfg.batch_size % n for n in shards):
            print(
                f"no mesh with tensor={shape[2]} fits the batch: the global batch ({cfg.batch_size}) must be a "
                f"multiple of data*fsdp = {devices // shape[2]}; raise tensor or --config.batch_size"
            )
        elif best is None:
            hint = "" if cfg.model.remat_policy == "full" else ", --config.model.remat_policy=full"
            print(
                f"no fsdp size fits {hbm:.1f} GiB on {devices} devices with tensor={shape[2]}: try "
                f"--config.micro_batches={2 * cfg.micro_batches}{hint}, more devices or tensor parallelism"
            )
        else:
            d, f, t = best.mesh
            print(
                f"smallest fsdp that fits: --mesh {d},{f},{t} ({best.total / planning.GIB:.2f} GiB per device); "
                f"train with --config.mesh.data={d} --config.mesh.fsdp={f} --config.mesh.tensor={t}"
            )
    return 0


def _compile(cfg, args, shape) -> dict:
    import jax

    from llava_jax.sharding import MeshConfig, make_mesh
    from llava_jax.train import plan as planning
    from llava_jax.train.state import model_config

    need = shape[0] * shape[1] * shape[2]
    if jax.device_count() < need:
        raise SystemExit(
            f"--compile needs {need} devices, this machine has {jax.device_count()} "
            f"({jax.default_backend()}); drop --compile or plan a smaller mesh"
        )
    base, _ = planning.base_model_config(cfg, args.preset)
    config = model_config(cfg, base)
    mesh = make_mesh(MeshConfig(*shape), devices=jax.devices()[:need])
    return planning.compiled_memory(cfg, config, mesh)
