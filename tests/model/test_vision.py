"""CLIP vision tower hidden states vs transformers' CLIPVisionModel."""

import numpy as np
import pytest

from llava_jax.convert.hf import canonical_sources, read_params
from llava_jax.convert.hf_config import llava_config_from_hf
from llava_jax.convert.tensors import weight_files
from llava_jax.model.vision import VisionTower
from tests.hf_fixtures import VISION, hf_llava_config, perturb_norms, save


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_hidden_states_match_hf(act, tmp_path, torch_cpu):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch_cpu.manual_seed(0)
    hf = perturb_norms(CLIPVisionModel(CLIPVisionConfig(**{**VISION, "hidden_act": act})).eval())
    save(hf, str(tmp_path))
    config = llava_config_from_hf(hf_llava_config(vision={"hidden_act": act}).to_dict())
    params = read_params(
        config, canonical_sources(weight_files(str(tmp_path)), where="t"), dtype="float32", parts=("vision",)
    )["vision"]
    pixels = np.random.default_rng(0).standard_normal((2, 3, 28, 28)).astype(np.float32)
    with torch_cpu.no_grad():
        ref = hf(pixel_values=torch_cpu.tensor(pixels), output_hidden_states=True).hidden_states
    layers = tuple(range(len(ref)))
    out = VisionTower(config.vision).apply({"params": params}, pixels.transpose(0, 2, 3, 1), layers)
    assert len(out) == len(ref) == VISION["num_hidden_layers"] + 1
    for i, (o, r) in enumerate(zip(out, ref)):
        np.testing.assert_allclose(np.asarray(o), r.numpy(), atol=1e-5, rtol=0, err_msg=f"hidden state {i}")
    # Asking only for layer -2 gives the same state, computed without the last layer.
    (penultimate,) = VisionTower(config.vision, num_layers_to_run=2).apply(
        {"params": params}, pixels.transpose(0, 2, 3, 1), (-2,)
    )
    np.testing.assert_allclose(np.asarray(penultimate), ref[-2].numpy(), atol=1e-5, rtol=0)


def test_layers_after_the_feature_layer_are_not_computed():
    import jax
    import jax.numpy as jnp

    from llava_jax.model.params import init_params
    from llava_jax.presets import tiny

    config = tiny()
    params = init_params(config)["vision"]
    images = jnp.zeros((1, 28, 28, 3))
    # Poison the last layer: if it ran, its NaNs would reach the output.
    poisoned = jax.tree.map(lambda x: x.at[-1].set(jnp.nan) if x.ndim and x.shape[0] == 3 else x, params["layers"])
    params = {**params, "layers": poisoned}
    (out,) = VisionTower(config.vision, num_layers_to_run=2).apply({"params": params}, images, (-2,))
    assert np.isfinite(np.asarray(out)).all()
