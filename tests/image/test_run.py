"""The per-family mains: a few steps each end to end, resume, wrong-family checkpoints, bad configs."""

import json

import pytest

from genforge.errors import CheckpointError, ConfigError
from genforge.image.run import DDPMConfig, FlowConfig, GANConfig, VAEConfig, main

SMALL = {"steps": 6, "batch_size": 16, "n_samples": 40, "classifier_steps": 20}


@pytest.mark.parametrize("cfg_cls,extra", [
    (DDPMConfig, {"hidden": 32, "num_train_timesteps": 20, "cond": "class", "guidance_scale": 2.0}),
    (DDPMConfig, {"hidden": 32, "num_train_timesteps": 20, "sampler": "ddim", "model": "unet"}),
    (VAEConfig, {"hidden": 32, "latent_dim": 4}),
    (FlowConfig, {"hidden": 32, "n_layers": 2, "eval_every": 3}),
    (GANConfig, {"hidden": 32}),
])
def test_each_family_runs_and_writes_outputs(tmp_path, cfg_cls, extra):
    cfg = cfg_cls(out_dir=str(tmp_path / "run"), **SMALL, **extra)
    res = main(cfg)
    for name in ("samples.png", "metrics.json", "genforge.json", "state.pt"):
        assert (tmp_path / "run" / name).exists(), name
    assert res["fid"] >= 0 and res["fid_noise"] > 0 and 0 <= res["precision"] <= 1
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["family"] == res["family"]


def test_text_conditioned_ddpm_on_shapes(tmp_path):
    cfg = DDPMConfig(out_dir=str(tmp_path), dataset="shapes", n_shapes=100, cond="text", model="unet", hidden=64,
                     num_train_timesteps=10, **SMALL)
    assert main(cfg)["steps"] == 6


def test_resume_continues_and_wrong_family_is_refused(tmp_path):
    cfg = GANConfig(out_dir=str(tmp_path), hidden=16, **SMALL)
    assert main(cfg)["steps"] == 6
    cfg.steps = 9
    assert main(cfg)["steps"] == 9  # picked up at step 6
    with pytest.raises(CheckpointError, match="a 'gan' checkpoint, but a 'ddpm' model"):
        main(DDPMConfig(out_dir=str(tmp_path), hidden=16, **SMALL))


def test_bad_configs():
    with pytest.raises(ConfigError, match="dataset="):
        DDPMConfig(dataset="cifar")
    with pytest.raises(ConfigError, match="cond='text' needs captions"):
        DDPMConfig(cond="text")
    with pytest.raises(ConfigError, match="folder=PATH"):
        VAEConfig(dataset="folder")
