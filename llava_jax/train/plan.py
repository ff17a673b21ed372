"""Per-device memory plan of a training config on a mesh, without weights or accelerators.

Parameters, optimizer state and gradients are exact: shapes from `jax.eval_shape`
of the model and of the optimizer's `init`, divided as the sharding rules place
them on an abstract mesh. Activations are an analytic estimate for the config's
remat policy and attention implementation (`activation_bytes`); where the
devices exist (or CPU devices can be simulated), `compiled_memory` compiles the
real train step from abstract arrays and reports XLA's buffer assignment, which
the tests use to check the estimate on the tiny and bench-small models.

Letters: B rows per device and micro-batch, T row length, D width, F MLP width,
N query heads, K kv heads, H head dim, V vocab, P image patches, L layers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh, AxisType

from llava_jax.config import LlavaConfig, compose_llava
from llava_jax.convert.hf_config import llama_config_from_hf, llava_config_from_hf, vision_config_from_hf
from llava_jax.model.llama import REMAT_SAVES
from llava_jax.presets import PRESETS
from llava_jax.sharding import DEFAULT_RULES, MESH_AXES, Rules, batch_sharding, resolve_mesh_shape
from llava_jax.train.state import abstract_state, model_config, state_shardings

GIB = 2**30


# --------------------------------------------------------------------- model config
def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _config_from_dir(path: str) -> LlavaConfig:
    hf = _read_json(os.path.join(path, "config.json"))
    if hf.get("format") == "llava_jax":
        return LlavaConfig.from_dict(hf)
    return llava_config_from_hf(hf)


def _guess_preset(cfg) -> str | None:
    """'llava_v15_13b' / 'llava_v15_7b' from the init paths' names (e.g. `vicuna-13b-v1.5`)."""
    init = cfg.init
    text = " ".join(str(init[k]) for k in ("path", "vision_dir", "llm_dir", "projector_from")).lower()
    if re.search(r"13b", text):
        return "llava_v15_13b"
    if re.search(r"7b", text):
        return "llava_v15_7b"
    return None


def base_model_config(cfg, preset: str | None = None) -> tuple[LlavaConfig, str]:
    """(model config before the experiment's overrides, where it came from).

    Read from the init directories' `config.json` when they exist; otherwise from
    `preset` (or one guessed from the init paths' names), so no weights are needed.
    """
    init = cfg.init
    if preset is None and init.kind == "random":
        preset = init.preset
    if preset is None:
        if init.kind == "llava" and os.path.exists(os.path.join(init.path, "config.json")):
            return _config_from_dir(init.path), init.path
        if init.kind == "components" and all(
            os.path.exists(os.path.join(d, "config.json")) for d in (init.vision_dir, init.llm_dir)
        ):
            llm = llama_config_from_hf(_read_json(os.path.join(init.llm_dir, "config.json")))
            vision = vision_config_from_hf(_read_json(os.path.join(init.vision_dir, "config.json")))
            config = compose_llava(
                vision,
                llm,
                image_token_index=llm.vocab_size,
            )
            return config, f"{init.vision_dir} + {init.llm_dir}"
        preset = _guess_preset(cfg)
        if preset is None:
            raise ValueError(
                "the config's init directories do not exist and their names name no model size; "
                f"pass a preset ({sorted(PRESETS)})"
            )
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} not in {sorted(PRESETS)}")
    kwargs = {}
    if init.kind == "random":
        kwargs = {k: init[k] for k in ("vocab_size", "image_token_index", "image_size") if init[k]}
    return PRESETS[preset](**kwargs), f"preset {preset}"


# ------------------------------------------------------------------------ shapes
def abstract_mesh(shape: tuple[int, int, int]) -> AbstractMesh:
    """A device-free mesh over (`data`, `fsdp`, `tensor`)."""
    return AbstractMesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def row_length(cfg) -> int:
    """Tokens per row of the compiled step: `max_length` rounded up to `pad_multiple` (padding mode)."""
    d = cfg.data
    if d.batching == "pack":
        return int(d.max_length)
    multiple = max(1, int(d.pad_multiple))
    return int(math.ceil(d.max_length / multiple) * multiple)


def abstract_batch(cfg, config: LlavaConfig) -> dict:
    """`jax.ShapeDtypeStruct`s of one global batch as the loader delivers it."""
    b, t = int(cfg.batch_size), row_length(cfg)
    images = 1 if cfg.data.batching == "pad" else int(cfg.data.max_images_per_row)
    s = config.vision.image_size
    out = {k: jax.ShapeDtypeStruct((b, t), jnp.int32) for k in ("input_ids", "labels", "positions", "segment_ids")}
    tiles = (config.anyres.max_tiles,) if config.anyres else ()  # anyres: K tile slots per image
    out["images"] = jax.ShapeDtypeStruct((b, images) + tiles + (s, s, config.vision.num_channels), jnp.float32)
    if config.anyres:
        out["image_grids"] = jax.ShapeDtypeStruct((b, images, 6), jnp.int32)
    return out


def per_device_bytes(tree, shardings) -> int:
    """Bytes one device holds of `tree` placed with `shardings` (the largest shard of each leaf)."""
    total = 0
    for leaf, sharding in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
        shape = sharding.shard_shape(leaf.shape) if leaf.shape else ()
        total += int(np.prod(shape, dtype=np.int64)) * jnp.dtype(leaf.dtype).itemsize
    return total


def _tree_bytes(tree) -> int:
    return sum(int(np.prod(x.shape, dtype=np.int64)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


# ------------------------------------------------------------------ compiled step
def compiled_memory(cfg, config: LlavaConfig, mesh, rules: Rules = DEFAULT_RULES) -> dict:
    """XLA's per-device memory for the real train step on `mesh` (real devices), compiled from abstract arrays.

    Returns bytes: `arguments` (state + batch), `outputs`, `aliased` (donated
    state reused for the new state), `temporaries`, and `peak` = arguments +
    outputs - aliased + temporaries. Empty when the backend reports nothing.
    """
    from flax import linen as nn

    from llava_jax.train.step import jit_train_step

    abstract, optimizer, lr_fn = abstract_state(cfg, config)
    shardings = state_shardings(cfg, config, mesh, abstract, rules)
    sds = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
    state = jax.tree.map(sds, abstract, shardings)
    batch_spec = batch_sharding(mesh, rules)
    batch = {k: sds(v, batch_spec) for k, v in abstract_batch(cfg, config).items()}
    step_fn = jit_train_step(
        config=config,
        optimizer=optimizer,
        lr_fn=lr_fn,
        micro_batches=cfg.micro_batches,
        freeze_vision=cfg.model.freeze_vision,
        loss_chunk=cfg.loss_chunk,
        state_shardings=shardings,
        batch_sharding=batch_spec,
    )
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        compiled = step_fn.lower(state, batch).compile()
    try:
        mem = compiled.memory_analysis()
    except (RuntimeError, NotImplementedError):  # not every backend reports it
        return {}
    if mem is None:
        return {}
    out = {
        "arguments": int(mem.argument_size_in_bytes),
        "outputs": int(mem.output_size_in_bytes),
        "aliased": int(mem.alias_size_in_bytes),
        "temporaries": int(mem.temp_size_in_bytes),
    }
    out["peak"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"]
    return out


# ------------------------------------------------------------------- activations
FLASH_IMPLS = ("splash", "cudnn", "pallas_gpu")
AUTO_IMPL = {"tpu": "splash", "gpu": "cudnn", "cuda": "cudnn", "rocm": "pallas_gpu"}


def _impl(config: LlavaConfig, platform: str) -> str:
    impl = config.llm.attention_impl
    return AUTO_IMPL.get(platform, "xla") if impl == "auto" else impl


def attention_kind(config: LlavaConfig, platform: str) -> str:
    """'flash' when the attention kernel never materialises the [T, T] scores, else 'xla'."""
    return "flash" if _impl(config, platform) in FLASH_IMPLS else "xla"


def saved_per_layer(cfg, config: LlavaConfig, mesh_shape, *, platform: str = "cpu") -> int:
    """Bytes per device one decoder layer keeps for the backward under the config's remat policy.

    What each policy keeps (llava_jax.model.llama.REMAT_POLICIES), per token of a layer:
    `none` every intermediate (q, k, v, attention output, gate, up, silu(gate), product,
    two norms, o_proj, residual) and, on `xla`, the [T, S] logits and probabilities;
    `dots` every matmul output (the seven projections, attention output, on `xla` the
    logits); `dots_with_no_batch_dims` the seven projections; `qkv_proj` q, k, v;
    `minimal` q, k, v, attention output, o_proj, gate, up and (pallas_gpu) the kernel's
    float32 softmax statistics; `full` nothing (the scan carry is counted apart).
    """
    data, fsdp, tp = mesh_shape
    llm = config.llm
    a = jnp.dtype(llm.dtype).itemsize
    rows = math.ceil(math.ceil(cfg.batch_size / (data * fsdp)) / max(1, cfg.micro_batches))
    t = row_length(cfg)
    tok = rows * t
    d, f, n, k, h = llm.hidden_size, llm.intermediate_size, llm.num_heads, llm.num_kv_heads, llm.head_dim
    kind = attention_kind(config, platform)
    heads = max(1, n // tp)
    scores = rows * heads * t * t * 4 if kind == "xla" else rows * heads * t * 4 * 2
    inner = tok * a * ((2 * n + 2 * k) * h / tp + 4 * f / tp + 4 * d)
    qkv = tok * a * (n + 2 * k) * h / tp
    attn_out = tok * a * n * h / tp
    stats = rows * heads * t * 4 if _impl(config, platform) == "pallas_gpu" else 0
    saved = {
        "none": inner + 2 * scores,
        "dots": qkv + attn_out + tok * a * (2 * f / tp + 2 * d) + scores,
        "dots_with_no_batch_dims": qkv + tok * a * (2 * f / tp + 2 * d),
        "qkv_proj": qkv,
        "minimal": qkv + attn_out + stats + tok * a * (2 * f / tp + d),
        "full": 0,
    }
    return int(saved[llm.remat_policy])


def activation_bytes(cfg, config: LlavaConfig, mesh_shape, *, platform: str = "cpu") -> dict:
    """Analytic per-device activation bytes of one train step, by part.

    Counts what the backward pass keeps for the config's remat policy
    (`saved_per_layer`) plus the scan carries, plus the largest transient (they do not
    overlap): one layer's backward (recomputed forward and its gradients, with that
    layer's weights gathered over fsdp and its float32 gradient before the
    reduce-scatter), one loss chunk's logits, the frozen tower's forward. Elementwise
    temporaries that fuse away are not counted.
    """
    data, fsdp, tp = mesh_shape
    llm, vis = config.llm, config.vision
    a = jnp.dtype(llm.dtype).itemsize
    rows = math.ceil(math.ceil(cfg.batch_size / (data * fsdp)) / max(1, cfg.micro_batches))
    t = row_length(cfg)
    tok = rows * t
    d, f, n, k, h = llm.hidden_size, llm.intermediate_size, llm.num_heads, llm.num_kv_heads, llm.head_dim
    xla = attention_kind(config, platform) == "xla"
    heads = max(1, n // tp)
    scores = rows * heads * t * t * 4 if xla else rows * heads * t * 4 * 2
    # q, k, v, attention out; gate, up, silu(gate), product; two norms, o_proj, residual.
    inner = tok * a * ((2 * n + 2 * k) * h / tp + 4 * f / tp + 4 * d)
    forward = inner + 2 * scores  # one layer's intermediates (scores and probabilities)
    backward = inner + 2 * scores  # their gradients, live while that layer's backward runs
    saved = saved_per_layer(cfg, config, mesh_shape, platform=platform)
    carry = tok * a * d
    llm_saved = llm.num_layers * (carry + saved)
    frozen_bytes = jnp.dtype(cfg.model.frozen_dtype).itemsize
    trained = lambda path: any(re.search(pattern, path) for pattern in cfg.trainable)
    layer_params = _layer_param_count(config) / tp
    layer_trained = trained("llm/layers/mlp/up_proj/kernel")
    # One layer's weights gathered over fsdp (and, when trained, their float32 gradient before the reduce-scatter).
    gathered = layer_params * (8 if layer_trained else frozen_bytes)
    llm_transient = (forward - min(saved, forward)) + backward + gathered
    # Loss: one chunk's float32 logits, their softmax and gradient, next to the gathered LM head.
    chunk = min(cfg.loss_chunk, t - 1)
    head_trained = trained("llm/lm_head/kernel")
    head = llm.vocab_size * d / tp * (8 if head_trained else frozen_bytes)
    loss = rows * chunk * llm.vocab_size / tp * 4 * 3 + head
    # Vision: frozen -> forward only, one layer live; trained -> every layer saved. anyres: every tile slot
    # goes through the tower, and each image's merged tokens fill a buffer of `max_image_tokens`.
    slots = rows * (1 if cfg.data.batching == "pad" else cfg.data.max_images_per_row)
    images = slots * (config.anyres.max_tiles if config.anyres else 1)
    p = vis.num_patches + 1
    v_heads = max(1, vis.num_heads // tp)
    v_scores = images * v_heads * p * p * 4 if xla else images * v_heads * p * 4 * 2
    v_layer = (
        images * p * jnp.dtype(vis.dtype).itemsize * (4 * vis.hidden_size + 2 * vis.intermediate_size / tp)
        + 2 * v_scores
    )
    vision_trained = not cfg.model.freeze_vision and trained("vision/layers/mlp/fc1/kernel")
    vision = v_layer * (config.vision_layers_used if vision_trained else 1)
    projector = images * p * a * (config.projector.in_features + 2 * d)
    if config.anyres:
        projector += slots * config.max_image_tokens * d * a
    embeds = 2 * tok * d * a  # the merged input embeddings and their gradient
    transients = {"layer backward": llm_transient, "loss chunk": loss, "vision tower": vision + projector}
    peak_name = max(transients, key=transients.get)
    parts = {
        "saved for backward": llm_saved,
        "input embeddings": embeds,
        f"largest transient: {peak_name}": transients[peak_name],
    }
    return {name: int(v) for name, v in parts.items()}


def _layer_param_count(config: LlavaConfig) -> int:
    llm = config.llm
    d, f, h = llm.hidden_size, llm.intermediate_size, llm.head_dim
    attn = d * (llm.num_heads + 2 * llm.num_kv_heads) * h + llm.num_heads * h * d
    return attn + 3 * d * f + 2 * d


# -------------------------------------------------------------------------- plan
@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Per-device bytes of one training config on one mesh."""

    mesh: tuple[int, int, int]
    model: str
    params_trainable: int
    params_frozen: int
    optimizer: int
    gradients: int
    batch: int
    activations: dict
    hbm_bytes: int | None
    attention: str
    remat_policy: str = "none"
    compiled: dict | None = None

    @property
    def activation_total(self) -> int:
        return sum(self.activations.values())

    @property
    def total(self) -> int:
        return (
            self.params_trainable
            + self.params_frozen
            + self.optimizer
            + self.gradients
            + self.batch
            + self.activation_total
        )

    @property
    def fits(self) -> bool | None:
        """Whether the estimate (with 10% headroom for the runtime and fragmentation) fits; None without HBM."""
        if self.hbm_bytes is None:
            return None
        return self.total * 1.1 <= self.hbm_bytes


def make_plan(
    cfg,
    mesh_shape,
    *,
    hbm_gib: float | None = None,
    preset: str | None = None,
    platform: str = "cpu",
    rules: Rules = DEFAULT_RULES,
) -> MemoryPlan:
    """The memory plan of experiment config `cfg` on a (data, fsdp, tensor) mesh of that shape."""
    base, source = base_model_config(cfg, preset)
    config = model_config(cfg, base)
    if config.anyres and row_length(cfg) < config.max_image_tokens:
        raise ValueError(
            f"rows of {row_length(cfg)} tokens cannot hold one high-resolution image (up to "
            f"{config.max_image_tokens} tokens with grid pinpoints {list(config.image_grid_pinpoints)}): "
            "raise data.max_length"
        )
    mesh = abstract_mesh(tuple(mesh_shape))
    state, _, _ = abstract_state(cfg, config)
    sh = state_shardings(cfg, config, mesh, state, rules)
    grads = per_device_bytes(
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), state.params), sh.params
    )
    if cfg.micro_batches > 1:
        grads *= 2  # the accumulator and one micro-batch's gradients
    batch = abstract_batch(cfg, config)
    shards = mesh_shape[0] * mesh_shape[1]
    batch_bytes = math.ceil(_tree_bytes(batch) / shards)
    return MemoryPlan(
        mesh=tuple(int(s) for s in mesh_shape),
        model=source,
        params_trainable=per_device_bytes(state.params, sh.params),
        params_frozen=per_device_bytes(state.frozen, sh.frozen),
        optimizer=per_device_bytes(state.opt_state, sh.opt_state),
        gradients=grads,
        batch=batch_bytes,
        activations=activation_bytes(cfg, config, mesh_shape, platform=platform),
        hbm_bytes=None if hbm_gib is None else int(hbm_gib * GIB),
        attention=attention_kind(config, platform),
        remat_policy=config.llm.remat_policy,
    )


def fsdp_candidates(devices: int, tensor: int = 1) -> list[int]:
    """Divisors of `devices / tensor`, ascending: the fsdp sizes a (data, fsdp, tensor) mesh can take."""
    rest = devices // tensor
    return [f for f in range(1, rest + 1) if rest % f == 0]


def smallest_fsdp(cfg, devices: int, hbm_gib: float, *, tensor: int = 1, **kwargs) -> MemoryPlan | None:
    """The plan with the smallest fsdp size (data = the rest) that fits `hbm_gib`, or None."""
    for fsdp in fsdp_candidates(devices, tensor):
        data = devices // (tensor * fsdp)
        if cfg.batch_size % (data * fsdp):
            continue
        plan = make_plan(cfg, (data, fsdp, tensor), hbm_gib=hbm_gib, **kwargs)
        if plan.fits:
            return plan
    return None


def parse_mesh(text: str | None, devices: int) -> tuple[int, int, int]:
    """'data,fsdp,tensor' (one may be -1) -> sizes for `devices` devices."""
    if not text:
        return resolve_mesh_shape((1, -1, 1), devices)
    parts = [int(x) for x in text.split(",")]
    if len(parts) != 3:
        raise ValueError(f"--mesh takes data,fsdp,tensor, got {text!r}")
    return resolve_mesh_shape(parts, devices)


def format_plan(plan: MemoryPlan) -> str:
    """A table of the plan in GiB."""
    g = lambda n: f"{n / GIB:9.3f} GiB"
    head = (
        f"model: {plan.model}; mesh data={plan.mesh[0]} fsdp={plan.mesh[1]} tensor={plan.mesh[2]}; "
        f"attention: {plan.attention}\nremat: {plan.remat_policy} (saves {REMAT_SAVES[plan.remat_policy]})"
    )
    row = lambda label, n: f"{label:<38}{g(n)}"
    lines = [
        head,
        row("  parameters, trainable (float32)", plan.params_trainable),
        row("  parameters, frozen", plan.params_frozen),
        row("  optimizer state", plan.optimizer),
        row("  gradients (float32)", plan.gradients),
        row("  batch", plan.batch),
        row("  activations (estimate)", plan.activation_total),
    ]
    lines += [row(f"    {name}", v) for name, v in plan.activations.items()]
    lines.append(row("  total per device", plan.total))
    if plan.hbm_bytes is not None:
        verdict = "fits" if plan.fits else "does NOT fit"
        lines.append(f"  {verdict} in {plan.hbm_bytes / GIB:.1f} GiB (with 10% headroom)")
    if plan.compiled:
        c = plan.compiled
        lines.append(
            f"  compiled step: arguments {g(c['arguments'])}, temporaries {g(c['temporaries'])}, peak {g(c['peak'])}"
        )
    return "\n".join(lines)
