"""LLaVA-NeXT checkpoints: transformers' LlavaNext and the original repo's v1.6 layout, both ways."""

import dataclasses
import json
import os

import numpy as np
import pytest
from PIL import Image

import llava_jax
from llava_jax.config import ConfigError
from llava_jax.convert.hf_config import llava_config_from_hf, llava_config_to_hf, original_llava_config
from llava_jax.convert.loaders import with_image_newline
from tests import released_fixtures as rf
from tests.hf_fixtures import hf_llava_next, hf_next_image_processor, save

ATOL = 1e-4
# (height, width), not symmetric: the original repo's (width, height) order must be turned around.
PINPOINTS = [[28, 56], [56, 56], [84, 28]]
SIZES = [(30, 70), (90, 40), (10, 12), (300, 200)]


@pytest.fixture(scope="module")
def next_release(tmp_path_factory, torch_cpu):
    """A tiny HF LlavaNext saved by transformers, inputs with images of several sizes, its logits."""
    hf = hf_llava_next(seed=2, image_grid_pinpoints=PINPOINTS)
    root = tmp_path_factory.mktemp("next")
    path = save(hf, str(root / "hf"))
    rng = np.random.default_rng(4)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]
    out = hf_next_image_processor(hf.config)(images, return_tensors="np")
    model = llava_jax.load(path)
    counts = [model.config.image_tokens(h, w) for h, w in SIZES]
    ids = rng.integers(3, 120, size=(2, sum(counts[:2]) + counts[3] + 8))
    pos = {0: 1, 1: 1}
    for b, row in ((0, [0, 1]), (1, [2, 3])):
        for i in row:
            ids[b, pos[b] : pos[b] + counts[i]] = hf.config.image_token_index
            pos[b] += counts[i] + 1
    with torch_cpu.no_grad():
        ref = hf(
            input_ids=torch_cpu.tensor(ids),
            pixel_values=torch_cpu.tensor(out["pixel_values"]),
            image_sizes=torch_cpu.tensor(out["image_sizes"]),
        ).logits.numpy()
    return {"hf": hf, "path": path, "root": root, "model": model, "inputs": (ids, out), "ref": ref}


def _check(model, release, image_token=None):
    ids, out = release["inputs"]
    if image_token is not None:
        ids = np.where(ids == release["hf"].config.image_token_index, image_token, ids)
    logits = model.logits(ids, out["pixel_values"], image_sizes=out["image_sizes"])
    np.testing.assert_allclose(logits, release["ref"], atol=ATOL, rtol=0)


def test_hf_llava_next_loads_and_converts_to_its_logits(next_release, tmp_path):
    model = next_release["model"]
    assert model.config.image_grid_pinpoints == tuple(map(tuple, PINPOINTS))
    _check(model, next_release)
    converted = llava_jax.convert(next_release["path"], str(tmp_path / "jax"))
    assert converted.config == model.config
    _check(llava_jax.load(str(tmp_path / "jax")), next_release)


def test_export_is_a_transformers_llava_next(next_release, tmp_path, torch_cpu):
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    from llava_jax.demo.synthetic.tokenizer import synthetic_tokenizer

    model = next_release["model"]
    model.tokenizer = synthetic_tokenizer()  # so the processor files are written too
    try:
        model.export_hf(str(tmp_path / "hf"))
    finally:
        model.tokenizer = None
    with open(tmp_path / "hf" / "config.json") as f:
        written = json.load(f)
    assert written["architectures"] == ["LlavaNextForConditionalGeneration"] and written["model_type"] == "llava_next"
    assert written["image_grid_pinpoints"] == PINPOINTS
    hf = LlavaNextForConditionalGeneration.from_pretrained(str(tmp_path / "hf")).eval()
    ids, out = next_release["inputs"]
    with torch_cpu.no_grad():
        logits = hf(
            input_ids=torch_cpu.tensor(ids),
            pixel_values=torch_cpu.tensor(out["pixel_values"]),
            image_sizes=torch_cpu.tensor(out["image_sizes"]),
        ).logits.numpy()
    np.testing.assert_allclose(logits, next_release["ref"], atol=ATOL, rtol=0)
    # The exported processor tiles and counts images as llava_jax does.
    processor = AutoProcessor.from_pretrained(str(tmp_path / "hf"))
    assert type(processor).__name__ == "LlavaNextProcessor"
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 90, 3), dtype=np.uint8))
    got = processor(images=image, text="<image> hi", return_tensors="np")
    assert (got["input_ids"] == processor.image_token_id).sum() == model.config.image_tokens(40, 90)
    ours = llava_jax.preprocess_image(image, mode="anyres", size=28, grid_pinpoints=PINPOINTS)
    np.testing.assert_allclose(got["pixel_values"][0].transpose(0, 2, 3, 1), ours, atol=1e-5)


def _write_v16_original(directory, hf, *, merge="spatial_unpad"):
    """The original repo's llava-v1.6-vicuna layout at tiny size: flat config with anyres, pinpoints as
    (width, height), safetensors shards + index, the tower and `model.image_newline` inside."""
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    state = rf.numpy_state(hf)
    tensors = rf.rename_keys(
        state,
        {
            "model.language_model.": "model.",
            "lm_head.": "lm_head.",
            "model.multi_modal_projector.linear_1.": "model.mm_projector.0.",
            "model.multi_modal_projector.linear_2.": "model.mm_projector.2.",
            "model.vision_tower.": "model.vision_tower.vision_tower.vision_model.",
            "model.image_newline": "model.image_newline",
        },
    )
    if merge == "flat":
        del tensors["model.image_newline"]
    keys = sorted(tensors)
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    weight_map = {}
    for i, name in enumerate(names):
        part = {k: np.ascontiguousarray(tensors[k]) for k in keys[i::2]}
        save_file(part, os.path.join(directory, name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    rf.dump_json(directory, "model.safetensors.index.json", {"metadata": {}, "weight_map": weight_map})
    config = rf.original_config(variant="7b-later")
    t = hf.config.text_config
    config.update(
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads,
        num_hidden_layers=t.num_hidden_layers,
        vocab_size=t.vocab_size,
        image_aspect_ratio="anyres",
        image_grid_pinpoints=[[w, h] for h, w in PINPOINTS],
        mm_patch_merge_type=merge,
        image_crop_resolution=224,
        image_split_resolution=224,
        mm_vision_tower_lr=2e-6,
        unfreeze_mm_vision_tower=True,
        tokenizer_model_max_length=4096,
        torch_dtype="bfloat16",
        transformers_version="4.36.2",
    )
    rf.dump_json(directory, "config.json", config)
    return directory


def _clip_config_dir(directory, hf):
    os.makedirs(directory, exist_ok=True)
    rf.dump_json(directory, "config.json", {**hf.config.vision_config.to_dict(), "model_type": "clip_vision_model"})
    return directory


def test_original_v16_layout_loads_to_transformers_logits(next_release):
    root, hf = next_release["root"], next_release["hf"]
    path = _write_v16_original(str(root / "llava-v1.6-vicuna"), hf)
    model = llava_jax.load(path, vision_tower=_clip_config_dir(str(root / "clip"), hf))
    c = model.config
    assert (c.image_aspect_ratio, c.patch_merge_type) == ("anyres", "spatial_unpad")
    assert c.image_grid_pinpoints == tuple(map(tuple, PINPOINTS))  # (width, height) turned into (height, width)
    _check(model, next_release, image_token=c.image_token_index)  # spliced at the first id past the vocab


def test_flat_v16_loads_and_is_no_transformers_model(next_release, tmp_path):
    root, hf = next_release["root"], next_release["hf"]
    path = _write_v16_original(str(root / "llava-v1.6-flat"), hf, merge="flat")
    model = llava_jax.load(path, vision_tower=_clip_config_dir(str(root / "clip"), hf))
    assert model.config.patch_merge_type == "flat" and "image_newline" not in model.params["projector"]
    with pytest.raises(ConfigError, match=r"patch_merge_type 'flat'.*only merges tiles by 'spatial_unpad'"):
        model.export_hf(str(tmp_path / "hf"))
    assert not os.path.exists(tmp_path / "hf")  # nothing written
    model.save(str(tmp_path / "jax"))
    assert llava_jax.load(str(tmp_path / "jax")).config == model.config


def test_next_configs_both_ways():
    base = llava_config_to_hf(llava_jax.presets.llava_v16_vicuna_7b(vocab_size=32064))
    assert base["model_type"] == "llava_next" and base["image_grid_pinpoints"][0] == [336, 672]
    assert llava_config_from_hf(base) == llava_jax.presets.llava_v16_vicuna_7b(vocab_size=32064)
    defaults = {k: v for k, v in base.items() if k != "image_grid_pinpoints"}
    assert llava_config_from_hf(defaults).image_grid_pinpoints[-1] == (336, 1008)  # transformers' default grid
    with pytest.raises(ConfigError, match=r"spatial_unpad' lays each tile's patch tokens on a grid"):
        llava_config_from_hf({**base, "vision_feature_select_strategy": "full"})
    with pytest.raises(ConfigError, match=r"not a \(height, width\) pair of multiples of the vision tower's"):
        llava_config_from_hf({**base, "image_grid_pinpoints": [[336, 500]]})


def test_original_anyres_settings():
    v16 = {**rf.original_config(variant="7b-later"), "image_aspect_ratio": "anyres", "mm_hidden_size": 1024}
    del v16["mm_vision_tower"]  # the default CLIP ViT-L/14-336
    as_string = {**v16, "image_grid_pinpoints": "[(672, 336), (336, 672)]", "mm_patch_merge_type": "spatial_unpad"}
    assert original_llava_config(as_string).image_grid_pinpoints == ((336, 672), (672, 336))
    cases = {
        "no pinpoints": ({**v16, "mm_patch_merge_type": "spatial_unpad"}, r"has no image_grid_pinpoints"),
        "spatial": ({**as_string, "mm_patch_merge_type": "spatial"}, r"'spatial' is not supported with anyres"),
        "bad pinpoints": ({**as_string, "image_grid_pinpoints": "336x672"}, r"not a list of \(height, width\)"),
    }
    for name, (config, message) in cases.items():
        with pytest.raises(ConfigError, match=message):
            original_llava_config(config)
        assert name


def test_image_newline_added_or_dropped_for_the_config(next_release):
    """An anyres model started from LLaVA-1.5 weights gets a fresh newline; a plain one drops it."""
    import jax

    model = next_release["model"]
    plain_config = dataclasses.replace(
        model.config, image_aspect_ratio="pad", image_grid_pinpoints=(), patch_merge_type="flat"
    )
    projector = {k: v for k, v in model.params["projector"].items() if k != "image_newline"}
    completed = with_image_newline({**model.params, "projector": projector}, model.config, jax.random.PRNGKey(0))
    newline = np.asarray(completed["projector"]["image_newline"])
    assert newline.shape == (64,) and 0.05 < newline.std() < 0.25  # HF's N(0, 1/D): std 0.125
    assert completed["projector"]["linear_1"] is projector["linear_1"]
    assert "image_newline" not in with_image_newline(completed, plain_config, None)["projector"]
