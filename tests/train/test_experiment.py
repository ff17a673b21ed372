"""Experiment configs: `path.py:arg` files and `--config.x=y` overrides (ml_collections.config_flags)."""

import os

import pytest

from llava_jax.config import ConfigError
from llava_jax.train.defaults import stage2
from llava_jax.train.experiment import apply_overrides, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.py")


def test_config_overrides():
    c = apply_overrides(
        stage2(),
        [
            "--config.optim.lr=3e-5",
            "--config.model.freeze_vision=false",
            "--config.trainable=['^projector/']",
            "--config.data.template=plain",
            "--config.batch_size=64",
        ],
    )
    assert (c.optim.lr, c.model.freeze_vision, list(c.trainable), c.data.template, c.batch_size) == (
        3e-5,
        False,
        ["^projector/"],
        "plain",
        64,
    )
    with pytest.raises(ConfigError, match="unknown config field 'optim.nope'"):
        apply_overrides(stage2(), ["--config.optim.nope=1"])
    with pytest.raises(ConfigError, match="unknown config field 'nope.lr'"):
        apply_overrides(stage2(), ["--config.nope.lr=1"])
    with pytest.raises(ValueError, match=r"--config.batch_size=abc: invalid literal for int"):
        apply_overrides(stage2(), ["--config.batch_size=abc"])
    with pytest.raises(ValueError, match=r"--config.model.freeze_vision=maybe: .*Non-boolean"):
        apply_overrides(stage2(), ["--config.model.freeze_vision=maybe"])
    with pytest.raises(ValueError, match="must look like --config.field=value"):
        apply_overrides(stage2(), ["config.batch_size=1"])


def test_lists_stay_lists_and_the_config_keeps_its_order_and_lock():
    c = stage2()
    order = list(c.keys())
    c.lock()
    apply_overrides(c, ["--config.trainable=^projector/", "--config.optim.lr=1"])
    assert c.trainable == ["^projector/"] and type(c.trainable) is list  # a bare element is a 1-tuple
    assert c.optim.lr == 1.0 and type(c.optim.lr) is float
    assert list(c.keys()) == order and c.is_locked
    assert apply_overrides(stage2(), ["--config.trainable=[]"]).trainable == []
    flag = apply_overrides(stage2(), ["--config.model.freeze_vision"])  # absl's boolean syntax
    assert flag.model.freeze_vision is True


def test_load_config_file_and_argument():
    pretrain = load_config(TINY)
    finetune = load_config(f"{TINY}:finetune", ["--config.batch_size=3"])
    assert (pretrain.stage, pretrain.batch_size, list(pretrain.trainable)) == (1, 16, ["^projector/"])
    assert (finetune.stage, finetune.batch_size, list(finetune.trainable)) == (2, 3, ["^projector/", "^llm/"])
    with pytest.raises(ValueError, match="takes 'pretrain' or 'finetune', not 'bogus'"):
        load_config(f"{TINY}:bogus")
    with pytest.raises(FileNotFoundError, match="config file '.*nope.py' does not exist"):
        load_config(os.path.join(ROOT, "configs", "nope.py"))
    with pytest.raises(ConfigError, match="unknown config field 'optim.nope'"):
        load_config(TINY, ["--config.optim.nope=1"])


def test_config_file_edge_cases(tmp_path):
    (tmp_path / "typed.py").write_text(
        "import ml_collections\n"
        "from ml_collections import config_dict\n\n\n"
        "def get_config():\n"
        "    c = ml_collections.ConfigDict()\n"
        "    c.name = config_dict.placeholder(str)\n"
        "    c.untyped = None\n"
        "    c.sizes = (1, 2)\n"
        "    return c\n"
    )
    c = load_config(str(tmp_path / "typed.py"), ["--config.name=run", "--config.sizes=(3, 4, 5)"])
    assert (c.name, c.sizes) == ("run", (3, 4, 5))
    assert load_config(str(tmp_path / "typed.py")).name is None
    # A bare None has no type to parse with: an error naming the field.
    with pytest.raises(ValueError, match="config.untyped is not supported"):
        load_config(str(tmp_path / "typed.py"), ["--config.untyped=3"])
    # config_flags loads every file as one module name: a file without get_config must not borrow the last one's.
    (tmp_path / "empty.py").write_text("X = 1\n")
    with pytest.raises(AttributeError, match="empty.py defines no get_config"):
        load_config(str(tmp_path / "empty.py"))
