"""Denoisers, classifier-free guidance and the diffusion loss/sampling loop."""

import pytest
import torch

from genforge.errors import ConfigError
from genforge.image.diffusion import diffusion_loss, sample
from genforge.image.schedulers import DDIMScheduler, DDPMScheduler
from genforge.image.text import CaptionTokenizer
from genforge.image.unet import MLPDenoiser, TinyUNet, guided_eps, timestep_embedding


def _perturb(model):
    # the output layers start at zero; make them non-zero so the tests see real differences
    torch.manual_seed(0)
    for p in model.parameters():
        if p.abs().sum() == 0:
            p.data.normal_(0, 0.1)
    return model


def test_timestep_embedding_shape_and_distinct():
    e = timestep_embedding(torch.tensor([0, 1, 50]), 16)
    assert e.shape == (3, 16) and not torch.allclose(e[1], e[2])


@pytest.mark.parametrize("make", [
    lambda: MLPDenoiser((1, 8, 8), hidden=64, depth=2, emb_dim=32, cond="class", num_classes=10),
    lambda: TinyUNet(in_ch=1, base=8, emb_dim=32, cond="class", num_classes=10),
])
def test_cfg_scale_zero_is_unconditional_and_one_is_conditional(make):
    model = _perturb(make()).eval()
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([1, 10, 30, 99]), torch.tensor([0, 3, 5, 9])
    null = model.embed.conditioner.null(4)
    uncond, cond = model(x, t, null), model(x, t, y)
    assert not torch.allclose(uncond, cond)  # the condition matters
    assert torch.allclose(guided_eps(model, x, t, y, 0.0), uncond, atol=1e-6)
    assert torch.allclose(guided_eps(model, x, t, y, 1.0), cond, atol=1e-6)
    assert torch.allclose(guided_eps(model, x, t, y, 3.0), uncond + 3 * (cond - uncond), atol=1e-5)
    assert torch.allclose(model(x, t, None), uncond)  # None means the null condition


def test_text_conditioning_and_empty_caption_is_null():
    tok = CaptionTokenizer()
    ids = tok(["a small red circle in the top left", "a large blue square in the center"])
    assert ids.shape == (2, tok.max_len) and (ids[0] > 1).sum() == 8
    model = _perturb(TinyUNet(in_ch=3, base=8, emb_dim=32, cond="text", vocab_size=len(tok))).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 5])
    assert not torch.allclose(model(x, t, ids)[0], model(x, t, ids)[1])
    assert torch.allclose(model(x, t, tok(["", ""])), model(x, t, None))
    assert torch.allclose(guided_eps(model, x, t, ids, 0.0), model(x, t, None), atol=1e-6)


def test_condition_dropout_rate():
    model = MLPDenoiser((1, 8, 8), hidden=16, depth=1, emb_dim=16, cond="class", num_classes=10)
    y = torch.zeros(10000, dtype=torch.long)
    dropped = model.embed.conditioner.drop(y, 0.2, torch.Generator().manual_seed(0))
    assert 0.18 < (dropped == 10).float().mean() < 0.22


class _ExactEps(torch.nn.Module):
    """The optimal eps-predictor when the data is one image x0: eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)."""

    def __init__(self, x0, scheduler):
        super().__init__()
        self.x0, self.abar = x0, scheduler.alphas_cumprod
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, t, cond=None):
        abar = self.abar[t].view(-1, 1, 1, 1)
        return (x - abar.sqrt() * self.x0) / (1 - abar).sqrt()


@pytest.mark.parametrize("steps", [None, 10])
@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_sampling_loop_with_exact_eps_returns_the_data(kind, steps):
    x0 = torch.zeros(1, 8, 8)
    x0[:, 2:6, 2:6] = 1.0
    sched = (DDPMScheduler if kind == "ddpm" else DDIMScheduler)(num_train_timesteps=100)
    out = sample(_ExactEps(x0 * 2 - 1, sched), sched, 4, (1, 8, 8), num_inference_steps=steps, seed=0)
    assert torch.allclose(out, x0.expand(4, 1, 8, 8), atol=1e-3)


def test_training_reduces_loss():
    torch.manual_seed(0)
    data = torch.zeros(32, 1, 8, 8)
    data[:, :, 2:6, 2:6] = 1.0
    model = MLPDenoiser((1, 8, 8), hidden=64, depth=2, emb_dim=32, cond="class", num_classes=2)
    sched = DDPMScheduler(num_train_timesteps=100)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(32, dtype=torch.long)
    losses = []
    for _ in range(200):
        loss = diffusion_loss(model, sched, data, cond=y, p_uncond=0.1, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) / 20 < 0.75 * sum(losses[:10]) / 10
    out = sample(model, DDIMScheduler(num_train_timesteps=100), 4, (1, 8, 8), cond=torch.zeros(4, dtype=torch.long),
                 guidance_scale=2.0, num_inference_steps=10, seed=1)
    assert out.shape == (4, 1, 8, 8) and 0 <= out.min() and out.max() <= 1
    assert torch.equal(out, sample(model, DDIMScheduler(num_train_timesteps=100), 4, (1, 8, 8),
                                   cond=torch.zeros(4, dtype=torch.long), guidance_scale=2.0, num_inference_steps=10,
                                   seed=1))


def test_bad_conditioning_config():
    with pytest.raises(ConfigError, match="cond="):
        MLPDenoiser((1, 8, 8), cond="image")
    with pytest.raises(ConfigError, match="num_classes"):
        TinyUNet(cond="class")
