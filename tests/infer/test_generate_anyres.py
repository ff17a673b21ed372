"""Generation and chat with high-resolution (anyres) images: greedy tokens equal transformers' LlavaNext."""

import numpy as np
import pytest
from PIL import Image

import llava_jax
from llava_jax.infer.chat import chat, encode_batch
from tests.hf_fixtures import hf_llava_next, hf_next_image_processor, save
from tests.infer.conftest import EOS

N = 8
SIZES = [(30, 70), (200, 150)]  # a 1x2 grid and one larger than every pinpoint (2x2)


@pytest.fixture(scope="module")
def next_pair(tmp_path_factory, torch_cpu):
    hf = hf_llava_next(seed=9)
    hf.generation_config.eos_token_id = EOS
    hf.generation_config.pad_token_id = 0
    return hf, llava_jax.load(save(hf, str(tmp_path_factory.mktemp("next_gen"))))


def _batch(hf, model):
    """Left-padded rows: an image of each size and a text-only row; (ids, mask, pixels, sizes)."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]
    out = hf_next_image_processor(hf.config)(images, return_tensors="np")
    rows = []
    for n in [model.config.image_tokens(h, w) for h, w in SIZES] + [0]:
        text = rng.integers(3, 120, size=6 + n % 5)
        rows.append(np.concatenate([[1], np.full(n, hf.config.image_token_index), text]))
    t = max(len(r) for r in rows)
    ids, mask = np.zeros((3, t), np.int64), np.zeros((3, t), np.int64)
    for b, row in enumerate(rows):
        ids[b, t - len(row) :], mask[b, t - len(row) :] = row, 1
    return ids, mask, out["pixel_values"], out["image_sizes"]


def test_greedy_batch_matches_hf_generate(next_pair, torch_cpu):
    hf, model = next_pair
    ids, mask, pixels, sizes = _batch(hf, model)
    with torch_cpu.no_grad():
        ref = hf.generate(
            input_ids=torch_cpu.tensor(ids),
            attention_mask=torch_cpu.tensor(mask),
            pixel_values=torch_cpu.tensor(pixels),
            image_sizes=torch_cpu.tensor(sizes),
            do_sample=False,
            max_new_tokens=N,
            eos_token_id=None,
        )[:, ids.shape[1] :].numpy()
    out = model.generate(ids, pixels, mask, image_sizes=sizes, max_new_tokens=N, eos_token_id=())
    np.testing.assert_array_equal(out, ref)


def test_chat_with_high_resolution_images(chat_model):
    """chat tiles each image, gives it as many placeholders as its size makes, and a batch answers
    as its rows one at a time."""
    from llava_jax.presets import with_anyres

    config = with_anyres(chat_model.config, pinpoints=((28, 56), (56, 28), (56, 56)))
    model = llava_jax.random_model(config, seed=4, tokenizer=chat_model.tokenizer)
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, hw + (3,), dtype=np.uint8)) for hw in [(40, 100), (300, 310)]]
    prompts = ["What is in the image?", "Describe it."]
    ids, pixels, mask, sizes = encode_batch(model, images, prompts, with_sizes=True)
    assert [p.shape for p in pixels] == [(3, 3, 28, 28), (5, 3, 28, 28)]
    assert sizes.tolist() == [[40, 100], [300, 310]]
    counts = (ids == config.image_token_index).sum(axis=1)
    assert counts.tolist() == [config.image_tokens(40, 100), config.image_tokens(300, 310)]
    batch = chat(model, images, prompts, max_new_tokens=6)
    single = [chat(model, im, p, max_new_tokens=6)[0] for im, p in zip(images, prompts)]
    assert batch == single and all(isinstance(a, str) for a in batch)
