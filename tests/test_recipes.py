"""Every shipped recipe loads into its config class (a renamed field would otherwise break it silently)."""

from pathlib import Path

import pytest

from genforge.config import load_config
from genforge.train.pretrain import PretrainConfig
from genforge.train.sft import SFTConfig

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))
CLASSES = {"pretrain": PretrainConfig, "sft": SFTConfig}


def test_there_are_recipes():
    assert RECIPES


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_loads(path):
    cls = CLASSES[path.stem.split("_")[0]]
    cfg = load_config(cls, path)
    assert cfg.out_dir
