"""Impossible configs and empty data are refused up front, naming the key, with the workdir left untouched."""

import json
import os

import pytest

from llava_jax.cli import main
from llava_jax.config import ConfigError
from llava_jax.train.experiment import load_config
from llava_jax.train.loop import run
from llava_jax.train.validate import validate_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.py")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(json, image root) of a two-example dataset (never read by these tests beyond its length)."""
    base = tmp_path_factory.mktemp("validate_data")
    (base / "images").mkdir()
    example = {"id": "a", "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Yes."}]}
    (base / "data.json").write_text(json.dumps([example, {**example, "id": "b"}]))
    return str(base / "data.json"), str(base / "images")


def _cfg(data, *overrides):
    json_path, root = data
    return load_config(TINY, [f"--config.data.json={json_path}", f"--config.data.image_root={root}", *overrides])


def test_the_tiny_config_and_the_documented_zeros_are_valid(data):
    validate_config(_cfg(data))
    # 0 keeps its documented meaning: one pass over the data / repeat / max_length / all devices / off.
    validate_config(
        _cfg(
            data,
            "--config.num_steps=0",
            "--config.data.num_epochs=0",
            "--config.data.pack_length=0",
            "--config.mesh.num_devices=0",
            "--config.optim.clip_norm=0",
            "--config.guard.spike_factor=0",
        )
    )


BAD = {
    "num_steps": ("--config.num_steps=-5", "num_steps=-5 must be an integer >= 0 (0: one pass over the data"),
    "batch_size": ("--config.batch_size=0", "batch_size=0 must be an integer >= 1"),
    "template": ("--config.data.template=alpaca", "data.template='alpaca' must be one of vicuna_v1"),
    "lr": ("--config.optim.lr=-1e-3", "optim.lr=-0.001 must be a finite number > 0"),
    "warmup": ("--config.optim.warmup_ratio=1.5", "optim.warmup_ratio=1.5 must be in [0, 1]"),
    "every_steps": ("--config.checkpoint.every_steps=0", "checkpoint.every_steps=0 must be an integer >= 1"),
    "log_every": ("--config.log_every=0", "log_every=0 must be an integer >= 1"),
    "atomicity": ("--config.checkpoint.atomicity=atomic", "checkpoint.atomicity='atomic' must be one of auto, rename"),
    "dcn_data": ("--config.mesh.dcn_data=-1", "mesh.dcn_data=-1 must be an integer >= 0 (0: the number of slices)"),
    "image_mode": ("--config.data.image_mode=crop", "data.image_mode='crop' must be 'pad', 'square' or 'anyres'"),
    "skip_fraction": ("--config.data.max_skip_fraction=2.0", "data.max_skip_fraction=2.0 must be in [0, 1]"),
    "spike": ("--config.guard.spike_factor=0.5", "guard.spike_factor=0.5 must be 0 (off) or a number > 1"),
    "micro": ("--config.micro_batches=3", "batch_size=16 does not split into micro_batches=3"),
    "pack_length": ("--config.data.pack_length=100", "data.pack_length=100 must be 0 or >= data.max_length=256"),
    "trainable": ("--config.trainable=('[',)", "trainable pattern '[' is not a regex"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_impossible_values_are_named(data, name):
    override, message = BAD[name]
    with pytest.raises(ConfigError) as info:
        validate_config(_cfg(data, override))
    assert message in str(info.value)


def test_every_problem_is_listed_at_once(data):
    with pytest.raises(ConfigError) as info:
        validate_config(_cfg(data, "--config.batch_size=0", "--config.num_steps=-1", "--config.data.template=x"))
    text = str(info.value)
    assert "batch_size=0" in text and "num_steps=-1" in text and "data.template='x'" in text


def test_data_paths_are_checked(data, tmp_path):
    with pytest.raises(ConfigError, match=r"data.json='.*nope.json' does not exist"):
        validate_config(_cfg(data, f"--config.data.json={tmp_path / 'nope.json'}"))
    with pytest.raises(ConfigError, match=r"data.image_root='.*typo' is not a folder"):
        validate_config(_cfg(data, f"--config.data.image_root={tmp_path / 'typo'}"))
    validate_config(_cfg(data, f"--config.data.json={tmp_path / 'nope.json'}"), paths=False)


def test_a_refused_config_leaves_the_workdir_untouched(data, tmp_path):
    workdir = tmp_path / "run"
    with pytest.raises(ConfigError, match="num_steps=-5"):
        run(_cfg(data, "--config.num_steps=-5"), str(workdir))
    assert not workdir.exists()
    # An existing workdir keeps exactly what it had (no experiment.json rewritten, no final/).
    workdir.mkdir()
    (workdir / "experiment.json").write_text("earlier")
    with pytest.raises(ConfigError, match="batch_size=0"):
        run(_cfg(data, "--config.batch_size=0"), str(workdir))
    assert os.listdir(workdir) == ["experiment.json"] and (workdir / "experiment.json").read_text() == "earlier"


@pytest.mark.parametrize("content", ["", "[]", "\n"])
def test_an_empty_dataset_is_refused_before_the_workdir_exists(tmp_path, content):
    (tmp_path / "empty.json").write_text(content)
    (tmp_path / "images").mkdir()
    workdir = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"data.json='.*empty.json' holds no examples"):
        run(_cfg((str(tmp_path / "empty.json"), str(tmp_path / "images"))), str(workdir))
    assert not workdir.exists()


def test_the_train_command_reports_it_in_one_line(data, tmp_path, capsys):
    json_path, root = data
    argv = ["train", "--config", TINY, "--workdir", str(tmp_path / "run"), f"--config.data.json={json_path}"]
    rc = main([*argv, f"--config.data.image_root={root}", "--config.num_steps=-5", "--config.batch_size=0"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("llava-jax train: error: invalid config: ") and err.count("\n") == 1
    assert "num_steps=-5" in err and "batch_size=0" in err
    assert not (tmp_path / "run").exists()


def test_a_wrong_image_root_is_refused_before_the_model_is_built(tmp_path):
    """Every sampled image file missing: stopped in a second, not after building the model and training."""
    from llava_jax.data.sources import JsonSource
    from llava_jax.train.validate import check_source

    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    qa = [{"from": "human", "value": "<image>\nHi?"}, {"from": "gpt", "value": "Yes."}]
    examples = [{"id": f"ex{i}", "image": f"sub/{i}.jpg", "conversations": qa} for i in range(20)]
    (tmp_path / "data.json").write_text(json.dumps(examples))
    cfg = _cfg((str(tmp_path / "data.json"), str(tmp_path)))  # the root one level too high
    with pytest.raises(
        ConfigError, match=r"none of the 20 image files sampled .* \(e.g. ex0: .*sub/0.jpg: No such file"
    ):
        run(cfg, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    # With most files present, the run goes on (missing ones are the skip guard's to count).
    for i in range(19):
        (images / "sub" / f"{i}.jpg").write_bytes(b"jpeg")
    check_source(_cfg((str(tmp_path / "data.json"), str(images))), JsonSource(tmp_path / "data.json", images))
    # References leaving the root count as unreadable too.
    outside = [{**e, "image": f"../elsewhere/{i}.jpg"} for i, e in enumerate(examples)]
    (tmp_path / "outside.json").write_text(json.dumps(outside))
    with pytest.raises(ConfigError, match="climbs out of"):
        check_source(_cfg((str(tmp_path / "outside.json"), str(images))), JsonSource(tmp_path / "outside.json", images))
