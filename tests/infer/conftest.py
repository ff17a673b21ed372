"""Fixtures of the inference tests: a tiny HF LLaVA with its llava_jax twin, and a model with a tokenizer."""

import numpy as np
import pytest

from tests.hf_fixtures import hf_llava, save

EOS = 2  # both sides get this EOS id explicitly, so HF never stops for another reason


@pytest.fixture(scope="session")
def hf_pair(tmp_path_factory, torch_cpu):
    """(HF `LlavaForConditionalGeneration`, the same weights loaded by `llava_jax.load`)."""
    import llava_jax

    hf = hf_llava(seed=7)
    hf.generation_config.eos_token_id = EOS
    hf.generation_config.pad_token_id = 0
    return hf, llava_jax.load(save(hf, str(tmp_path_factory.mktemp("hf_llava"))))


def left_padded_batch(config, lengths=(14, 9, 11), images=(1, 1, 0), seed=0):
    """HF-style inputs: rows of different lengths, left padded; row b has `images[b]` images.

    Returns input_ids int64[B, T], pixel_values float32[N, 3, S, S], attention_mask int64[B, T].
    """
    rng = np.random.default_rng(seed)
    per, t = config.image_seq_length, max(lengths)
    ids = np.zeros((len(lengths), t), np.int64)
    mask = np.zeros((len(lengths), t), np.int64)
    for b, (n, k) in enumerate(zip(lengths, images)):
        row = rng.integers(3, config.text_config.vocab_size - 1, size=n)
        row[0] = 1  # BOS
        for i in range(k):
            row[2 + i * (per + 1) : 2 + i * (per + 1) + per] = config.image_token_index
        ids[b, t - n :] = row
        mask[b, t - n :] = 1
    s = config.vision_config.image_size
    pixels = rng.standard_normal((sum(images), 3, s, s)).astype(np.float32)
    return ids, pixels, mask


@pytest.fixture(scope="session")
def chat_model():
    """A tiny random `Llava` with the project's small SentencePiece tokenizer (the shipped asset).

    The LLM's vocabulary is the SentencePiece pieces; the image id (the tokenizer's `<image>`,
    right after them) lies past it, so answers never contain it.
    """
    import llava_jax
    from llava_jax.demo.synthetic.tokenizer import synthetic_tokenizer
    from llava_jax.presets import tiny

    tok = synthetic_tokenizer()
    image_id = tok.convert_tokens_to_ids("<image>")
    assert image_id == tok.vocab_size
    return llava_jax.random_model(tiny(vocab_size=tok.vocab_size, image_token_index=image_id), seed=3, tokenizer=tok)
