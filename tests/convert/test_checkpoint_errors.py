"""Broken checkpoints and configs end in a `CheckpointError` / `ConfigError` naming the file and key at fault."""

import glob
import json
import os
import shutil
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import llava_jax
from llava_jax.cli import main
from llava_jax.config import ConfigError
from llava_jax.convert.hf_config import llama_config_from_hf, llava_config_from_hf, llava_config_to_hf
from llava_jax.convert.native import save_native
from llava_jax.convert.tensors import CheckpointError, SafetensorsFile, write_safetensors
from llava_jax.model.params import abstract_params
from llava_jax.presets import tiny


def test_a_non_integer_config_field_is_named():
    with pytest.raises(ConfigError, match=r"^num_hidden_layers='three' is not an integer$"):
        llama_config_from_hf({"num_hidden_layers": "three"})
    with pytest.raises(ConfigError, match=r"rms_norm_eps='small' is not a number"):
        llama_config_from_hf({"rms_norm_eps": "small"})
    with pytest.raises(ConfigError, match=r"num_attention_heads=0 must be at least 1"):
        llama_config_from_hf({"num_attention_heads": 0})
    hf = llava_config_to_hf(tiny())
    assert llava_config_from_hf(json.loads(json.dumps(hf))) == tiny().with_dtype(hf["dtype"])
    hf["vision_config"]["patch_size"] = [14]
    with pytest.raises(ConfigError, match=r"patch_size=\[14\] is not an integer"):
        llava_config_from_hf(hf)


KEY = "vision_tower.vision_model.post_layernorm.bias"  # any known key: the config is read before the tensors


def test_through_load_the_message_names_the_file(tmp_path):
    hf = llava_config_to_hf(tiny())
    hf["text_config"]["num_hidden_layers"] = "three"
    (tmp_path / "config.json").write_text(json.dumps(hf))
    write_safetensors(
        str(tmp_path / "model.safetensors"), iter([(KEY, np.zeros(2, np.float32))]), {KEY: ((2,), "float32")}
    )
    with pytest.raises(CheckpointError, match=r"config.json: num_hidden_layers='three' is not an integer"):
        llava_jax.load(str(tmp_path))


def test_a_safetensors_header_entry_that_is_not_a_dict(tmp_path):
    """safetensors' own reader (safe_open) refuses it; the error names the file."""
    header = json.dumps({"w": [1, 2, 3], "__metadata__": {"format": "pt"}}).encode()
    header += b" " * (-len(header) % 8)
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    with pytest.raises(CheckpointError, match=r"bad.safetensors: .*not a safetensors file.*header"):
        SafetensorsFile(str(path))


@pytest.fixture(scope="module")
def native_dir(tmp_path_factory):
    """A llava_jax checkpoint of the tiny preset with random (incompressible) parameters."""
    config = tiny()
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), a.dtype), abstract_params(config))
    directory = str(tmp_path_factory.mktemp("native") / "ckpt")
    save_native(directory, params, config)
    return directory


def test_a_native_checkpoint_without_params_is_named_as_such(native_dir, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(native_dir, copy, ignore=shutil.ignore_patterns("params"))
    with pytest.raises(CheckpointError, match=r"copy: a llava_jax checkpoint \(config.json\) without its params/"):
        llava_jax.load(str(copy))
    assert main(["export", str(copy), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llava-jax export: error: ") and "without its params/" in err and err.count("\n") == 1
    assert not os.path.exists(tmp_path / "hf")


def test_truncated_native_params_are_a_checkpoint_error(native_dir, tmp_path):
    copy = tmp_path / "cut"
    shutil.copytree(native_dir, copy)
    data = max(glob.glob(f"{copy}/params/**/d/*", recursive=True), key=os.path.getsize)
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)
    with pytest.raises(CheckpointError, match=r"cut: params/ cannot be read .*truncated or corrupt files"):
        llava_jax.load(str(copy))
    assert llava_jax.load(native_dir).config == tiny()  # the original is untouched


def test_convert_reports_a_checkpoint_error_in_one_line(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"llava-jax convert: error: {tmp_path / 'nope'}: no such model directory (--debug for the traceback)\n"
    )
    assert not os.path.exists(tmp_path / "out")
