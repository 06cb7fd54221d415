"""Latent diffusion: encode -> denoise -> decode shapes, CFG scale 0 = unconditional, and a short training run of
both parts on the shared Trainer."""

import torch

from genforge.image.latent import LatentConfig, LatentDiffusion, train_latent
from genforge.image.text import CaptionTokenizer
from genforge.image.unet import guided_eps
from genforge.world.images import make_shapes


def _model(**kw):
    torch.manual_seed(0)
    m = LatentDiffusion(LatentConfig(vocab_size=len(CaptionTokenizer()), latent_dim=8, vae_hidden=32, hidden=32,
                                     depth=1, num_train_timesteps=50, **kw))
    for p in m.parameters():  # the eps head starts at zero: perturb so the condition shows
        if p.abs().sum() == 0:
            p.data.normal_(0, 0.1)
    return m.eval()


def test_pipeline_shapes():
    m = _model()
    x = make_shapes(6, seed=0).images  # (6, 3, 16, 16)
    m.fit_scale(x)
    z = m.encode(x)
    assert z.shape == (6, 8, 1, 1)
    assert torch.allclose(z.flatten(1).mean(0), torch.zeros(8), atol=1e-5)  # rescaled to zero mean
    ids = CaptionTokenizer()(["a small red circle in the top left"] * 6)
    eps = m.denoiser(z, torch.full((6,), 10), ids)
    assert eps.shape == z.shape
    out = m.sample(6, ids, 2.0, "ddim", 5, seed=0)
    assert out.shape == (6, 3, 16, 16) and out.min() >= 0 and out.max() <= 1
    assert m.sample_latents(3, ids[:3], 1.0, "ddpm", None, seed=0).shape == (3, 8, 1, 1)
    assert torch.equal(m.decode(z), m.vae.images(z.flatten(1) * m.scale + m.shift))


def test_cfg_scale_zero_is_unconditional_in_latent_space():
    m = _model()
    ids = CaptionTokenizer()(["a large blue square in the center"] * 4)
    z, t = torch.randn(4, 8, 1, 1), torch.tensor([1, 10, 20, 40])
    uncond = m.ema(z, t, None)
    assert not torch.allclose(uncond, m.ema(z, t, ids))
    assert torch.allclose(guided_eps(m.ema, z, t, ids, 0.0), uncond, atol=1e-6)
    # whole chains: scale 0 with captions = no captions at all
    a = m.sample(4, ids, 0.0, "ddim", 5, seed=3)
    b = m.sample(4, None, 1.0, "ddim", 5, seed=3)
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, m.sample(4, ids, 1.0, "ddim", 5, seed=3))


def test_train_latent_runs_both_parts(tmp_path):
    data = make_shapes(64, seed=0)
    m = LatentDiffusion(LatentConfig(vocab_size=len(CaptionTokenizer()), latent_dim=8, vae_hidden=32, hidden=32,
                                     depth=1, num_train_timesteps=50))
    vae_before = [p.clone() for p in m.vae.parameters()]
    out = train_latent(m, data.images, CaptionTokenizer()(data.captions), str(tmp_path), vae_steps=5, steps=5,
                       batch_size=16)
    assert out["vae"]["step"] == 5 and out["diffusion"]["step"] == 5
    assert any(not torch.equal(a, b) for a, b in zip(vae_before, m.vae.parameters()))  # part 1 trained
    assert (tmp_path / "checkpoint" / "genforge.json").exists()
    from genforge.checkpoint import load_model

    again = load_model(tmp_path / "checkpoint")
    assert torch.equal(again.scale, m.scale) and torch.equal(again.encode(data.images), m.encode(data.images))
