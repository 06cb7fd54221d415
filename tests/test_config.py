"""Typed configs: YAML + key=value overrides, type coercion, unknown keys suggest the closest one."""

import pytest

from genforge.config import load_config, to_dict
from genforge.errors import ConfigError
from genforge.train.pretrain import PretrainConfig


def test_yaml_then_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("seq_len: 128\nmodel:\n  depth: 6\ntrain:\n  lr: 1e-3\n  compile: true\n")
    cfg = load_config(PretrainConfig, recipe, ["model.depth=3", "train.max_steps=7"])
    assert cfg.seq_len == 128 and cfg.model.depth == 3 and cfg.train.max_steps == 7
    assert cfg.train.lr == 1e-3 and cfg.train.compile is True
    assert to_dict(cfg)["model"]["depth"] == 3


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match="did you mean 'train.max_steps'"):
        load_config(PretrainConfig, None, ["train.max_step=5"])
    with pytest.raises(ConfigError, match="did you mean 'seq_len'"):
        load_config(PretrainConfig, None, ["seqlen=5"])


def test_bad_values():
    with pytest.raises(ConfigError, match="expected int"):
        load_config(PretrainConfig, None, ["seq_len=abc"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(PretrainConfig, None, ["seq_len"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(PretrainConfig, "/nonexistent.yaml")


def test_mapping_override_from_the_command_line():
    from genforge.speedrun import SpeedrunConfig

    cfg = load_config(SpeedrunConfig, None, ["pretrain={train: {max_steps: 7}}", "align={ppo_lr: 0.001}"])
    assert cfg.pretrain.train.max_steps == 7 and cfg.align.ppo_lr == 0.001
    with pytest.raises(ConfigError, match="mapping"):
        load_config(SpeedrunConfig, None, ["align=5"])
    with pytest.raises(ConfigError, match="did you mean 'align.ppo_lr'"):
        load_config(SpeedrunConfig, None, ["align={ppo_lrr: 0.1}"])


def test_overrides_run_the_configs_own_checks(tmp_path):
    """A value the config's `__post_init__` refuses is refused from the command line, a recipe and `update` too
    (setattr alone would let it through), in a nested section."""
    from genforge.config import update
    from genforge.speedrun import SpeedrunConfig

    with pytest.raises(ConfigError, match="sft.chat_steps=0"):
        load_config(SpeedrunConfig, None, ["sft.chat_steps=0"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sft:\n  closings: 1.5\n")
    with pytest.raises(ConfigError, match="sft.closings=1.5"):
        load_config(SpeedrunConfig, recipe)
    cfg = load_config(SpeedrunConfig, None, ["sft.chat_steps=3"])
    assert cfg.sft.chat_steps == 3
    with pytest.raises(ConfigError, match="sft.closings=-0.1"):
        update(cfg, ["sft.closings=-0.1"])
