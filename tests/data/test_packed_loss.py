"""Packing changes nothing a model computes: per-sample loss packed == unpacked (toy LLaVA-like model).

The toy model follows the batch contract the real model implements: image
features scattered in order into each row's placeholder positions, position
embeddings from `positions`, causal attention restricted to equal
`segment_ids`, next-token loss on `labels` (shifted, -100 ignored).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from llava_jax.data.encode import IGNORE_INDEX, EncodeFn
from llava_jax.data.pipeline import DataConfig, create_loader
from llava_jax.data.sources import JsonSource
from llava_jax.kernels.attention import reference_attention

IMG = -200
ISL = 4
SIZE = 14  # 14 * 14 * 3 = 588 = ISL * 147 pixel values per image token
D = 16


def init(vocab, key):
    keys = jax.random.split(key, 6)
    n = lambda k, s: jax.random.normal(k, s, jnp.float32) * 0.3
    return {
        "tok": n(keys[0], (vocab, D)),
        "pos": n(keys[1], (512, D)),
        "img": n(keys[2], (SIZE * SIZE * 3 // ISL, D)),
        "qkv": n(keys[3], (3, D, 2, D // 2)),
        "out": n(keys[4], (D, vocab)),
    }


def per_token_loss(params, batch):
    """float32[B, T]: next-token cross-entropy at each target position (0 where ignored)."""
    ids, labels = batch["input_ids"], batch["labels"]
    b, t = ids.shape
    is_image = ids == IMG
    x = params["tok"][jnp.where(is_image, 0, ids)] + params["pos"][batch["positions"]]
    feats = batch["images"].reshape(b, -1, ISL, SIZE * SIZE * 3 // ISL) @ params["img"]
    feats = feats.reshape(b, -1, D)  # [B, M * ISL, D], images in order
    slot = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, feats.shape[1] - 1)
    x = jnp.where(is_image[..., None], jnp.take_along_axis(feats, slot[..., None], axis=1), x)
    q, k, v = jnp.einsum("btd,cdnh->cbtnh", x, params["qkv"])
    h = reference_attention(q, k, v, causal=True, segment_ids=batch["segment_ids"]).reshape(b, t, D)
    logits = (x + h) @ params["out"]
    targets = labels[:, 1:]
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.maximum(targets, 0)[..., None], axis=-1)[..., 0]
    nll = jnp.where(targets != IGNORE_INDEX, nll, 0.0)
    return jnp.pad(nll, ((0, 0), (1, 0)))  # aligned with the target token


def sample_losses(params, batch):
    """{token ids of a sample: its summed loss} for every sample of a batch."""
    losses = np.asarray(jax.jit(per_token_loss)(params, batch))
    out = {}
    for r in range(batch["input_ids"].shape[0]):
        seg = np.asarray(batch["segment_ids"][r])
        for s in np.unique(seg[seg > 0]):
            mask = seg == s
            out[tuple(np.asarray(batch["input_ids"][r])[mask].tolist())] = losses[r][mask].sum()
    return out


def test_packed_equals_unpacked_per_sample_loss(dataset, tokenizer):
    source = JsonSource(*dataset)
    config = DataConfig(
        image_size=SIZE,
        image_seq_length=ISL,
        image_token_index=IMG,
        max_length=256,
        global_batch_size=4,
        batching="pack",
        max_images_per_row=3,
        pack_window=40,
        seed=0,
    )
    params = init(len(tokenizer), jax.random.key(0))
    packed = {}
    n_multi = 0
    for batch in create_loader(config, source, tokenizer):
        n_multi += int((batch["segment_ids"].max(axis=1) > 1).sum())
        packed.update(sample_losses(params, batch))
    assert n_multi >= 4  # rows really hold several samples
    unpacked = {}
    # One sample per row, padded to the same length: one compiled shape.
    one = dataclasses.replace(config, batching="pad", global_batch_size=1, pad_multiple=256)
    for batch in create_loader(one, source, tokenizer):
        unpacked.update(sample_losses(params, batch))
    encode = EncodeFn(tokenizer, config)
    keys = {tuple(encode(source[i])["input_ids"].tolist()) for i in range(len(source))}
    assert set(unpacked) == keys and set(packed) <= keys and len(packed) >= 0.8 * len(keys)
    for key, loss in packed.items():
        np.testing.assert_allclose(loss, unpacked[key], rtol=1e-5, atol=1e-5)
