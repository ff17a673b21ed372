"""KV-cache generation: HF parity, cache vs full-sequence logits, sampling, stopping, batching.

Tests share a few input shapes (SINGLE, BATCH, N new tokens) so compilations are reused.
"""

import numpy as np
import pytest

from tests.infer.conftest import left_padded_batch

LAYOUTS = ["unrolled", "scan"]
N = 10
SINGLE = {"lengths": (13,), "images": (1,)}
BATCH = {"lengths": (14, 7, 10), "images": (1, 1, 0)}


def _hf_generate(hf, ids, pixels, mask, torch, **kw):
    inputs = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
    if pixels is not None and len(pixels):
        inputs["pixel_values"] = torch.tensor(pixels)
    with torch.no_grad():
        out = hf.generate(
            **inputs, do_sample=False, max_new_tokens=N, output_scores=True, return_dict_in_generate=True, **kw
        )
    return out.sequences[:, ids.shape[1] :].numpy(), torch.stack(out.scores, 1).numpy()


def test_greedy_single_prompt_matches_hf(hf_pair, torch_cpu):
    hf, model = hf_pair
    ids, pixels, mask = left_padded_batch(hf.config, **SINGLE)
    ref, ref_scores = _hf_generate(hf, ids, pixels, mask, torch_cpu, eos_token_id=None)
    out, logits = model.generate(ids, pixels, mask, max_new_tokens=N, eos_token_id=(), return_logits=True)
    assert out.dtype == np.int32 and out.shape == (1, N)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_allclose(logits, ref_scores, atol=1e-4, rtol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_greedy_left_padded_batch_matches_hf(hf_pair, torch_cpu, layout):
    hf, model = hf_pair
    ids, pixels, mask = left_padded_batch(hf.config, **BATCH)
    ref, _ = _hf_generate(hf, ids, pixels, mask, torch_cpu, eos_token_id=None)
    out = model.generate(ids, pixels, mask, max_new_tokens=N, eos_token_id=(), layout=layout)
    np.testing.assert_array_equal(out, ref)


def test_eos_stops_rows_like_hf(hf_pair, torch_cpu):
    """A token the model really emits serves as EOS: rows stop there, pad after, as HF returns them."""
    hf, model = hf_pair
    ids, pixels, mask = left_padded_batch(hf.config, **BATCH, seed=1)
    free = model.generate(ids, pixels, mask, max_new_tokens=N, eos_token_id=())
    eos = int(free[0, 3])
    ref, _ = _hf_generate(hf, ids, pixels, mask, torch_cpu, eos_token_id=eos, pad_token_id=0)
    out = model.generate(ids, pixels, mask, max_new_tokens=N, eos_token_id=eos, pad_token_id=0)
    np.testing.assert_array_equal(out, ref)
    for b in range(3):
        hits = np.nonzero(free[b] == eos)[0]
        if len(hits):  # the row ends with its first EOS, then pads
            k = hits[0]
            np.testing.assert_array_equal(out[b, : k + 1], free[b, : k + 1])
            assert (out[b, k + 1 :] == 0).all()
        else:
            np.testing.assert_array_equal(out[b], free[b, : out.shape[1]])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cached_logits_equal_full_sequence_logits(hf_pair, layout):
    hf, model = hf_pair
    ids, pixels, mask = left_padded_batch(hf.config, **BATCH, seed=0)
    out, logits = model.generate(
        ids, pixels, mask, max_new_tokens=N, eos_token_id=(), layout=layout, return_logits=True
    )
    # (A generated image id would read as a placeholder in the uncached pass; this seed emits none.)
    assert not (out[:, :-1] == hf.config.image_token_index).any()
    full_ids = np.concatenate([ids, out[:, :-1]], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(out[:, :-1])], axis=1)
    # Uncached: one forward over prompt + generated tokens; position t predicts token t + 1.
    full = model.logits(full_ids, pixels, full_mask)[:, ids.shape[1] - 1 :]
    np.testing.assert_allclose(logits, full, atol=1e-4, rtol=0)


def test_batch_equals_one_at_a_time(hf_pair):
    hf, model = hf_pair
    ids, pixels, mask = left_padded_batch(hf.config, **BATCH, seed=3)
    # pad_to_multiple=16: every call below has T = 16, one compilation for all singles.
    batch = model.generate(ids, pixels, mask, max_new_tokens=N, eos_token_id=(), pad_to_multiple=16)
    k = 0
    for b in range(3):
        keep = mask[b].astype(bool)
        n_img = int((ids[b] == hf.config.image_token_index).sum() // hf.config.image_seq_length)
        row_pixels = pixels[k : k + n_img] if n_img else None
        k += n_img
        single = model.generate(ids[b : b + 1, keep], row_pixels, max_new_tokens=N, eos_token_id=(), pad_to_multiple=16)
        np.testing.assert_array_equal(single[0], batch[b])


def test_sampling_is_seeded_and_reproducible(hf_pair):
    hf, model = hf_pair
    ids, pixels, mask = left_padded_batch(hf.config, **BATCH, seed=4)
    kw = {"max_new_tokens": N, "eos_token_id": (), "temperature": 1.5}
    a = model.generate(ids, pixels, mask, seed=11, **kw)
    b = model.generate(ids, pixels, mask, seed=11, **kw)
    c = model.generate(ids, pixels, mask, seed=12, **kw)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    # Chunked decoding (as when streaming) draws the same tokens: keys depend on the step, not the call.
    np.testing.assert_array_equal(model.generate(ids, pixels, mask, seed=11, chunk_size=3, **kw), a)


def test_top_k_and_top_p_restrict_the_draw(hf_pair):
    hf, model = hf_pair
    ids, pixels, mask = left_padded_batch(hf.config, **SINGLE, seed=5)
    greedy = model.generate(ids, pixels, mask, max_new_tokens=N, eos_token_id=())
    # top_k=1 and a tiny top_p leave only the argmax: sampling becomes greedy.
    for kw in ({"top_k": 1}, {"top_p": 1e-6}):
        sampled = model.generate(ids, pixels, mask, max_new_tokens=N, eos_token_id=(), temperature=2.0, **kw)
        np.testing.assert_array_equal(sampled, greedy)
    out, logits = model.generate(
        ids, pixels, mask, max_new_tokens=N, eos_token_id=(), temperature=3.0, top_k=5, seed=1, return_logits=True
    )
    top5 = np.argsort(-logits, axis=-1)[..., :5]
    assert all(out[0, i] in top5[0, i] for i in range(N))


def test_max_new_tokens_and_prompt_padding(hf_pair):
    hf, model = hf_pair
    ids, pixels, mask = left_padded_batch(hf.config, **SINGLE)
    full = model.generate(ids, pixels, mask, max_new_tokens=N, eos_token_id=())
    one = model.generate(ids, pixels, mask, max_new_tokens=1, eos_token_id=())
    np.testing.assert_array_equal(one, full[:, :1])
    # Extra left padding (shape buckets) and a larger cache leave the answer unchanged.
    padded = model.generate(ids, pixels, mask, max_new_tokens=N, eos_token_id=(), pad_to_multiple=16, max_len=40)
    np.testing.assert_array_equal(padded, full)


def test_stop_token_ids(hf_pair):
    hf, model = hf_pair
    ids, pixels, mask = left_padded_batch(hf.config, **SINGLE, seed=6)
    free = model.generate(ids, pixels, mask, max_new_tokens=N, eos_token_id=())
    stop = int(free[0, 2])
    cut = int(np.nonzero(free[0] == stop)[0][0]) + 1
    out = model.generate(ids, pixels, mask, max_new_tokens=N, eos_token_id=(), stop_token_ids=[stop])
    np.testing.assert_array_equal(out, free[:, :cut])


def test_stop_strings_and_streaming(chat_model):
    tok = chat_model.tokenizer
    ids = np.asarray([tok("USER: what is this? ASSISTANT:")["input_ids"]])
    free = chat_model.generate(ids, max_new_tokens=24, eos_token_id=())
    text = tok.decode(free[0], skip_special_tokens=True)
    pieces = tok.convert_ids_to_tokens([int(t) for t in free[0]])
    # A whole word the model emits mid-answer serves as the stop string.
    k = next(k for k in range(3, 20) if pieces[k].startswith("\u2581") and pieces[k][1:].isalpha())
    stop = pieces[k][1:]
    cut = next(k for k in range(1, 25) if stop in tok.decode(free[0, :k], skip_special_tokens=True))

    deltas = []
    out = chat_model.generate(
        ids, max_new_tokens=24, eos_token_id=(), stop_strings=[stop], stream=lambda d: deltas.append(d[0])
    )
    np.testing.assert_array_equal(out[0], free[0, :cut])
    streamed = "".join(deltas)
    assert stop not in streamed and streamed == text[: text.index(stop)]
    assert len(deltas) > 1

    # Streaming alone reproduces the whole text (byte-fallback runs included) and the same tokens.
    deltas = []
    out = chat_model.generate(ids, max_new_tokens=24, eos_token_id=(), stream=lambda d: deltas.append(d[0]))
    np.testing.assert_array_equal(out, free)
    assert "".join(deltas) == text


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sharded_model_generates_the_same_tokens(hf_pair, tmp_path, layout):
    """Parameters sharded over 8 simulated devices (data x fsdp x tensor): same tokens as one device."""
    import llava_jax
    from llava_jax.sharding import make_mesh
    from tests.hf_fixtures import save

    hf, model = hf_pair
    sharded = llava_jax.load(save(hf, str(tmp_path / "hf")), mesh=make_mesh((2, 2, 2)))
    ids, pixels, mask = left_padded_batch(hf.config, lengths=(14, 7, 10, 12), images=(1, 1, 0, 1), seed=8)
    kw = {"max_new_tokens": N, "eos_token_id": (), "layout": layout}
    np.testing.assert_array_equal(sharded.generate(ids, pixels, mask, **kw), model.generate(ids, pixels, mask, **kw))


def test_layout_choice(hf_pair):
    from llava_jax.infer.decode import resolve_layout

    _, model = hf_pair
    assert resolve_layout("auto", model) == "unrolled"  # CPU devices report no memory limit
    assert resolve_layout("scan", model) == "scan"
    with pytest.raises(ValueError, match="layout 'fast' not in"):
        resolve_layout("fast", model)
