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
            row[2 + i * (per + 1):2 + i * (per + 1) + per] = config.image_token_index
        ids[b, t - n:] = row
        mask[b, t - n:] = 1
    s = config.vision_config.image_size
    pixels = rng.standard_normal((sum(images), 3, s, s)).astype(np.float32)
    return ids, pixels, mask


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    from tests.data.helpers import write_tokenizer

    return write_tokenizer(str(tmp_path_factory.mktemp("tokenizer")))


@pytest.fixture(scope="session")
def chat_model(tokenizer_dir):
    """A tiny random `Llava` with a 512-piece SentencePiece tokenizer (image token id 512, past the vocab)."""
    import transformers

    import llava_jax
    from llava_jax.config import tiny

    tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    return llava_jax.random_model(tiny(vocab_size=512, image_token_index=512), seed=3, tokenizer=tok)
