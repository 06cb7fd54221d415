"""`genforge image train|sample|eval` mains: each family end to end, resume, wrong-family checkpoints, bad configs."""

import json

import pytest

from genforge.errors import CheckpointError, ConfigError
from genforge.image.diffusion import DiffusionConfig
from genforge.image.flow import FlowConfig
from genforge.image.gan import GANConfig
from genforge.image.run import (
    ImageEvalConfig,
    ImageSampleConfig,
    ImageTrainConfig,
    load_image_model,
    main_eval,
    main_sample,
    main_train,
)
from genforge.image.vae import VAEConfig

SMALL = {"steps": 6, "batch_size": 16, "n_samples": 40, "classifier_steps": 20, "progress": False, "ckpt_every": 3}


@pytest.mark.parametrize("family,extra", [
    ("ddpm", {"ddpm": DiffusionConfig(hidden=32, num_train_timesteps=20, cond="class"), "guidance_scale": 2.0}),
    ("ddpm", {"ddpm": DiffusionConfig(hidden=32, num_train_timesteps=20, arch="unet"), "sampler": "ddim"}),
    ("vae", {"vae": VAEConfig(hidden=32, latent_dim=4)}),
    ("flow", {"flow": FlowConfig(hidden=32, n_layers=2), "eval_every": 3}),
    ("gan", {"gan": GANConfig(hidden=32)}),
])
def test_each_family_trains_samples_and_evaluates(tmp_path, family, extra):
    res = main_train(ImageTrainConfig(family=family, out_dir=str(tmp_path / "run"), **SMALL, **extra))
    for name in ("samples.png", "metrics.json", "metrics.jsonl", "checkpoint/genforge.json",
                 "checkpoint/model.safetensors", "checkpoint/trainer_state.pt"):
        assert (tmp_path / "run" / name).exists(), name
    assert res["steps"] == 6 and res["fid"] >= 0 and res["fid_noise"] > 0 and 0 <= res["precision"] <= 1
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["family"] == family
    if family == "flow":
        assert res["best_step"] in (3, 6)  # early stopping kept one of the two checks
    ck = str(tmp_path / "run" / "checkpoint")
    assert load_image_model(ck)[0] == family
    png = main_sample(ImageSampleConfig(checkpoint=ck, family=family, n=5, out=str(tmp_path / "s.png")))
    assert png.exists()
    ev = main_eval(ImageEvalConfig(checkpoint=ck, n_samples=30, classifier_steps=5, sampler=extra.get("sampler",
                                                                                                    "ddpm")))
    assert ev["family"] == family and ev["n"] == 30


def test_text_conditioned_ddpm_on_shapes(tmp_path):
    cfg = ImageTrainConfig(family="ddpm", out_dir=str(tmp_path), dataset="shapes", n_shapes=100,
                           ddpm=DiffusionConfig(cond="text", arch="unet", hidden=64, num_train_timesteps=10), **SMALL)
    assert main_train(cfg)["steps"] == 6
    png = main_sample(ImageSampleConfig(checkpoint=str(tmp_path / "checkpoint"), n=4, prompt="a large red square "
                                        "in the center", guidance_scale=3.0, out=str(tmp_path / "red.png")))
    assert png.exists()


def test_resume_continues_and_wrong_family_is_refused(tmp_path):
    cfg = ImageTrainConfig(family="gan", out_dir=str(tmp_path), gan=GANConfig(hidden=16), **SMALL)
    assert main_train(cfg)["steps"] == 6
    cfg.steps = 9
    assert main_train(cfg)["steps"] == 9  # picked up at step 6
    with pytest.raises(CheckpointError, match="a 'image_gan' checkpoint, but family=ddpm"):
        main_train(ImageTrainConfig(family="ddpm", out_dir=str(tmp_path), **SMALL))
    with pytest.raises(CheckpointError, match="use family=gan"):
        main_sample(ImageSampleConfig(checkpoint=str(tmp_path / "checkpoint"), family="vae"))
    with pytest.raises(CheckpointError, match="no checkpoint folder"):
        main_sample(ImageSampleConfig(checkpoint=str(tmp_path / "nothing")))


def test_a_text_checkpoint_is_not_an_image_model(tmp_path):
    (tmp_path / "genforge.json").write_text(json.dumps({"family": "gpt", "model": {}}))
    with pytest.raises(CheckpointError, match="not an image model"):
        load_image_model(tmp_path)


def test_bad_configs():
    with pytest.raises(ConfigError, match="dataset="):
        ImageTrainConfig(dataset="cifar")
    with pytest.raises(ConfigError, match="cond='text' needs captions"):
        ImageTrainConfig(ddpm=DiffusionConfig(cond="text"))
    with pytest.raises(ConfigError, match="folder=PATH"):
        ImageTrainConfig(dataset="folder")
    with pytest.raises(ConfigError, match="family="):
        ImageTrainConfig(family="vqgan")
    with pytest.raises(ConfigError, match="checkpoint is not set"):
        main_sample(ImageSampleConfig())


# ------------------------------------------------------------------------------------------------ token families
def _vq(tmp_path):
    from genforge.image.vq import VQConfig

    res = main_train(ImageTrainConfig(family="vq", out_dir=str(tmp_path / "vq"), vq=VQConfig(hidden=8, code_dim=4,
                                                                                           codebook_size=16), **SMALL))
    assert res["steps"] == 6 and 0 < res["perplexity"] <= 16 and res["recon_mse"] > 0
    return str(tmp_path / "vq" / "checkpoint")


@pytest.mark.parametrize("family", ["ar", "maskgit"])
def test_token_priors_train_sample_evaluate_and_resume_exactly(tmp_path, family, monkeypatch):
    import torch

    from genforge.image import run as image_run
    from genforge.image.ar import ARConfig
    from genforge.image.maskgit import MaskGITConfig
    from genforge.image.run import train

    vq = _vq(tmp_path)
    extra = {"ar": {"ar": ARConfig(width=32)}, "maskgit": {"maskgit": MaskGITConfig(width=32), "sample_steps": 3}}
    res = main_train(ImageTrainConfig(family=family, vq_checkpoint=vq, out_dir=str(tmp_path / "p"), **SMALL,
                                      **extra[family]))
    assert res["steps"] == 6 and res["fid"] >= 0
    ck = str(tmp_path / "p" / "checkpoint")
    assert load_image_model(ck)[0] == family
    assert main_sample(ImageSampleConfig(checkpoint=ck, family=family, n=4, digit=7, out=str(tmp_path / "s.png")
                                         )).exists()
    assert main_eval(ImageEvalConfig(checkpoint=ck, n_samples=30, classifier_steps=5))["family"] == family
    # exact resume: a run killed during step 7 (checkpoint at 6) and resumed == 9 steps in one go
    small = {**SMALL, "steps": 9}
    one, _ = train(ImageTrainConfig(family=family, vq_checkpoint=vq, out_dir=str(tmp_path / "a"), resume=False,
                                    **small, **extra[family]))
    get_batch = image_run.ImageBatches.get_batch

    def dying(self, step, *a):
        if step == 7:
            raise KeyboardInterrupt("killed")
        return get_batch(self, step, *a)

    monkeypatch.setattr(image_run.ImageBatches, "get_batch", dying)
    with pytest.raises(KeyboardInterrupt):
        train(ImageTrainConfig(family=family, vq_checkpoint=vq, out_dir=str(tmp_path / "b"), resume=False, **small,
                               **extra[family]))
    monkeypatch.setattr(image_run.ImageBatches, "get_batch", get_batch)
    two, _ = train(ImageTrainConfig(family=family, vq_checkpoint=vq, out_dir=str(tmp_path / "b"), resume=True,
                                    **small, **extra[family]))
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(one.vq.codebook, load_image_model(vq, "vq")[1].codebook)


def test_token_priors_need_a_vq_checkpoint_of_the_right_family(tmp_path):
    with pytest.raises(ConfigError, match="vq_checkpoint=FOLDER"):
        ImageTrainConfig(family="ar")
    gan = tmp_path / "gan"
    main_train(ImageTrainConfig(family="gan", out_dir=str(gan), gan=GANConfig(hidden=16), **SMALL))
    with pytest.raises(CheckpointError, match="a 'image_gan' checkpoint, but family=vq"):
        main_train(ImageTrainConfig(family="maskgit", vq_checkpoint=str(gan / "checkpoint"),
                                    out_dir=str(tmp_path / "m"), **SMALL))
    with pytest.raises(CheckpointError, match="use family=gan"):
        main_sample(ImageSampleConfig(checkpoint=str(gan / "checkpoint"), family="maskgit"))
