"""Conversion round trips, layouts, sharded loading, the CLI and bad inputs."""

import json
import os
import shutil

import numpy as np
import pytest

import llava_jax
from llava_jax.cli import main as cli_main
from llava_jax.convert.tensors import CheckpointError, SafetensorsFile, write_safetensors
from llava_jax.sharding import make_mesh
from tests.hf_fixtures import hf_llava, random_inputs, save


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    model = hf_llava(seed=11)
    return save(model, str(tmp_path_factory.mktemp("hf") / "llava")), model


@pytest.fixture(scope="module")
def inputs(hf_dir):
    _, model = hf_dir
    return random_inputs(model.config, batch=2, length=14)


def _tensors(directory):
    out = {}
    for name in os.listdir(directory):
        if name.endswith(".safetensors"):
            f = SafetensorsFile(os.path.join(directory, name))
            out.update({k: f.get(k) for k in f.keys()})
    return out


def test_hf_to_jax_to_hf_is_identical(hf_dir, tmp_path):
    src, _ = hf_dir
    cli_main(["convert", src, str(tmp_path / "jax")])
    cli_main(["export", str(tmp_path / "jax"), str(tmp_path / "back")])
    a, b = _tensors(src), _tensors(tmp_path / "back")
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_exported_directory_loads_in_transformers_with_same_logits(hf_dir, inputs, tmp_path, torch_cpu):
    from transformers import LlavaForConditionalGeneration

    src, _ = hf_dir
    model = llava_jax.load(src)
    model.export_hf(str(tmp_path / "out"))
    hf = LlavaForConditionalGeneration.from_pretrained(str(tmp_path / "out")).eval()
    ids, pixels, mask = inputs
    with torch_cpu.no_grad():
        ref = hf(input_ids=torch_cpu.tensor(ids), pixel_values=torch_cpu.tensor(pixels)).logits.numpy()
    np.testing.assert_allclose(model.logits(ids, pixels, mask), ref, atol=1e-4, rtol=0)


def test_bin_checkpoint_and_in_memory_layout(hf_dir, inputs, tmp_path):
    import torch

    src, hf = hf_dir
    ids, pixels, mask = inputs
    expected = llava_jax.load(src).logits(ids, pixels, mask)
    # In-memory key names (model.language_model.*) in a pytorch_model.bin.
    os.makedirs(tmp_path / "bin")
    shutil.copy(os.path.join(src, "config.json"), tmp_path / "bin")
    torch.save(dict(hf.state_dict()), tmp_path / "bin" / "pytorch_model.bin")
    np.testing.assert_allclose(llava_jax.load(str(tmp_path / "bin")).logits(ids, pixels, mask), expected, atol=1e-6)


def _original_layout(src, dst, with_vision: bool):
    """Rename a tiny HF LLaVA into the original LLaVA repo's layout and config."""
    os.makedirs(dst)
    tensors = _tensors(src)
    renamed = {}
    for key, value in tensors.items():
        if key.startswith("language_model.lm_head."):
            new = key.replace("language_model.lm_head.", "lm_head.")
        elif key.startswith("language_model.model."):
            new = key.replace("language_model.model.", "model.")
        elif key.startswith("multi_modal_projector.linear_1."):
            new = key.replace("multi_modal_projector.linear_1.", "model.mm_projector.0.")
        elif key.startswith("multi_modal_projector.linear_2."):
            new = key.replace("multi_modal_projector.linear_2.", "model.mm_projector.2.")
        elif key.startswith("vision_tower."):
            if not with_vision:
                continue
            new = key.replace("vision_tower.", "model.vision_tower.vision_tower.vision_model.")
        renamed[new] = value
    write_safetensors(
        os.path.join(dst, "model.safetensors"),
        iter(renamed.items()),
        {k: (v.shape, v.dtype) for k, v in renamed.items()},
    )
    with open(os.path.join(src, "config.json")) as f:
        hf = json.load(f)
    flat = dict(hf["text_config"])
    flat.update(
        model_type="llava_llama",
        mm_vision_tower="openai/clip-vit-large-patch14-336",
        mm_hidden_size=hf["vision_config"]["hidden_size"],
        mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch",
        image_aspect_ratio="pad",
    )
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(flat, f)
    # The original repo's image sentinel is not a vocabulary id: use the first id past the vocab.
    return hf["image_token_index"], flat["vocab_size"]


def _clip_dir(src, dst):
    """An HF CLIPVisionModel directory holding the tiny model's tower."""
    from transformers import CLIPVisionConfig

    os.makedirs(dst)
    with open(os.path.join(src, "config.json")) as f:
        CLIPVisionConfig(**json.load(f)["vision_config"]).save_pretrained(dst)
    tensors = {
        k.replace("vision_tower.", "vision_model."): v
        for k, v in _tensors(src).items()
        if k.startswith("vision_tower.")
    }
    write_safetensors(
        os.path.join(dst, "model.safetensors"),
        iter(tensors.items()),
        {k: (v.shape, v.dtype) for k, v in tensors.items()},
    )


def test_original_layout_loads_to_same_logits(hf_dir, inputs, tmp_path):
    src, _ = hf_dir
    ids, pixels, mask = inputs
    expected = llava_jax.load(src).logits(ids, pixels, mask)
    hf_image_id, vocab = _original_layout(src, str(tmp_path / "orig"), with_vision=True)
    _clip_dir(src, str(tmp_path / "clip"))
    with pytest.raises(CheckpointError, match="mm_hidden_size 32 != vision hidden size 1024"):
        llava_jax.load(str(tmp_path / "orig"))  # the default tower (ViT-L/14-336) does not fit
    model = llava_jax.load(str(tmp_path / "orig"), vision_tower=str(tmp_path / "clip"))
    assert model.config.image_token_index == vocab
    orig_ids = np.where(ids == hf_image_id, vocab, ids)
    np.testing.assert_allclose(model.logits(orig_ids, pixels, mask), expected, atol=1e-6)
    # Without vision weights in the checkpoint: the tower comes from a CLIP directory.
    _original_layout(src, str(tmp_path / "novision"), with_vision=False)
    with pytest.raises(CheckpointError, match="no vision tower weights; pass vision_tower="):
        llava_jax.load(str(tmp_path / "novision"))
    model = llava_jax.load(str(tmp_path / "novision"), vision_tower=str(tmp_path / "clip"))
    np.testing.assert_allclose(model.logits(orig_ids, pixels, mask), expected, atol=1e-6)


def test_load_components_stage1(hf_dir, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    src, hf = hf_dir
    _clip_dir(src, str(tmp_path / "clip"))
    llama = LlamaForCausalLM(LlamaConfig(**hf.config.text_config.to_dict()))
    llama.model.load_state_dict(hf.model.language_model.state_dict())
    llama.lm_head.load_state_dict(hf.lm_head.state_dict())
    save(llama, str(tmp_path / "llama"))
    model = llava_jax.load_components(str(tmp_path / "clip"), str(tmp_path / "llama"))
    reference = llava_jax.load(src)
    for part in ("vision", "llm"):
        for a, b in zip(*(map(np.asarray, __import__("jax").tree.leaves(m.params[part])) for m in (model, reference))):
            np.testing.assert_array_equal(a, b)
    assert model.params["projector"]["linear_1"]["kernel"].shape == (32, 64)
    assert model.config.image_token_index == hf.config.text_config.vocab_size


def test_mesh_loading_matches_single_device(hf_dir, inputs):
    src, _ = hf_dir
    ids, pixels, mask = inputs
    expected = llava_jax.load(src).logits(ids, pixels, mask)
    mesh = make_mesh((2, 2, 2))
    model = llava_jax.load(src, mesh=mesh)
    kernel = model.params["llm"]["layers"]["mlp"]["gate_proj"]["kernel"]
    assert len(kernel.sharding.device_set) == 8
    assert kernel.addressable_shards[0].data.shape == (2, 32, 64)  # embed over fsdp, mlp over tensor
    np.testing.assert_allclose(model.logits(ids, pixels, mask), expected, atol=1e-5)
    # Native checkpoints restore sharded too.


def test_native_checkpoint_roundtrip_and_bfloat16(hf_dir, inputs, tmp_path):
    src, _ = hf_dir
    ids, pixels, mask = inputs
    model = llava_jax.load(src)
    model.save(str(tmp_path / "native"))
    again = llava_jax.load(str(tmp_path / "native"), mesh=make_mesh((1, 8, 1)))
    np.testing.assert_allclose(again.logits(ids, pixels, mask), model.logits(ids, pixels, mask), atol=1e-5)
    half = llava_jax.load(str(tmp_path / "native"), dtype="bfloat16")
    assert half.params["llm"]["embed_tokens"].dtype == np.dtype("bfloat16")
    np.testing.assert_allclose(half.logits(ids, pixels, mask), model.logits(ids, pixels, mask), atol=0.1)


# ---------------------------------------------------------------------- bad inputs
def test_wrong_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such model directory"):
        llava_jax.load(str(tmp_path / "nope"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no config.json"):
        llava_jax.load(str(tmp_path / "empty"))
    with open(tmp_path / "empty" / "config.json", "w") as f:
        json.dump({"model_type": "bert"}, f)
    with pytest.raises(CheckpointError, match="neither an HF LlavaConfig"):
        llava_jax.load(str(tmp_path / "empty"))


def test_truncated_safetensors(hf_dir, tmp_path):
    src, _ = hf_dir
    shutil.copytree(src, tmp_path / "cut")
    path = tmp_path / "cut" / "model.safetensors"
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(CheckpointError, match=r"model.safetensors: truncated safetensors file"):
        llava_jax.load(str(tmp_path / "cut"))


def _rewrite(src, dst, edit):
    shutil.copytree(src, dst)
    tensors = edit(_tensors(dst))
    os.remove(os.path.join(dst, "model.safetensors"))
    write_safetensors(
        os.path.join(dst, "model.safetensors"),
        iter(tensors.items()),
        {k: (v.shape, v.dtype) for k, v in tensors.items()},
    )


def test_missing_tensor(hf_dir, tmp_path):
    src, _ = hf_dir
    key = "language_model.model.layers.1.mlp.up_proj.weight"
    _rewrite(src, tmp_path / "m", lambda t: {k: v for k, v in t.items() if k != key})
    with pytest.raises(CheckpointError, match=r"missing tensor for 'llm.layers.1.mlp.up_proj.weight'"):
        llava_jax.load(str(tmp_path / "m"))


def test_misshaped_tensor(hf_dir, tmp_path):
    src, _ = hf_dir
    key = "multi_modal_projector.linear_2.weight"
    _rewrite(src, tmp_path / "m", lambda t: {**t, key: np.zeros((64, 63), np.float32)})
    with pytest.raises(
        CheckpointError,
        match=r"'multi_modal_projector.linear_2.weight'.*shape \(64, 63\), "
        r"expected \(64, 64\)",
    ):
        llava_jax.load(str(tmp_path / "m"))


def test_unexpected_tensor(hf_dir, tmp_path):
    src, _ = hf_dir
    _rewrite(src, tmp_path / "m", lambda t: {**t, "language_model.model.extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'language_model.model.extra.weight'"):
        llava_jax.load(str(tmp_path / "m"))
