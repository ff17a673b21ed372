"""Full LLaVA logits parity with transformers' LlavaForConditionalGeneration (tiny random models)."""

import numpy as np
import pytest

from llava_jax.api import load
from tests.hf_fixtures import hf_llava, random_inputs, save

TOL = 1e-4


def _hf_logits(model, ids, pixels, mask, torch):
    with torch.no_grad():
        return model(
            input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels), attention_mask=torch.tensor(mask)
        ).logits.numpy()


CASES = {
    "gqa_layer-2_default": dict(),
    "mha": dict(text=dict(num_key_value_heads=4)),
    "layer-1": dict(vision_feature_layer=-1),
    "strategy_full": dict(vision_feature_select_strategy="full"),
    "layers_list": dict(vision_feature_layer=[-3, -1]),
    "tied_rope_linear": dict(
        text=dict(
            tie_word_embeddings=True, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0}
        ),
        tie_word_embeddings=True,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_hf(case, tmp_path, torch_cpu):
    hf = hf_llava(seed=len(case), **CASES[case])
    ids, pixels, mask = random_inputs(hf.config, batch=2, length=14, images_per_row=(1, 1))
    mask[1, -4:] = 0  # right padding in row 1
    ref = _hf_logits(hf, ids, pixels, mask, torch_cpu)
    model = load(save(hf, str(tmp_path / "hf")))
    out = model.logits(ids, pixels, mask)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=TOL, rtol=0)


def test_two_images_in_one_sequence(tmp_path, torch_cpu):
    hf = hf_llava(seed=3)
    ids, pixels, mask = random_inputs(hf.config, batch=2, length=20, images_per_row=(2, 1))
    ref = _hf_logits(hf, ids, pixels, mask, torch_cpu)
    out = load(save(hf, str(tmp_path / "hf"))).logits(ids, pixels, mask)
    np.testing.assert_allclose(out, ref, atol=TOL, rtol=0)


def test_text_only_batch(tmp_path, torch_cpu):
    hf = hf_llava(seed=4)
    ids = np.random.default_rng(0).integers(3, 100, size=(2, 9))
    with torch_cpu.no_grad():
        ref = hf(input_ids=torch_cpu.tensor(ids)).logits.numpy()
    out = load(save(hf, str(tmp_path / "hf"))).logits(ids)
    np.testing.assert_allclose(out, ref, atol=TOL, rtol=0)


def test_placeholder_count_mismatch_is_an_error(tmp_path):
    hf = hf_llava(seed=5)
    model = load(save(hf, str(tmp_path / "hf")))
    ids, pixels, mask = random_inputs(hf.config, batch=2, length=14, images_per_row=(1, 1))
    with pytest.raises(ValueError, match=r"placeholders for 2 image\(s\).*but 1 image"):
        model.logits(ids, pixels[:1], mask)
    ids[0, 1] = 5  # a partial image block
    with pytest.raises(ValueError, match="not a multiple of image_seq_length"):
        model.logits(ids, pixels, mask)
