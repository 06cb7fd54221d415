"""Our DDPM/DDIM schedulers against diffusers' and against the forward-noising closed form."""

import pytest
import torch

from genforge.errors import ConfigError
from genforge.image.schedulers import DDIMScheduler, DDPMScheduler

diffusers = pytest.importorskip("diffusers", reason="parity tests need diffusers (pip install 'genforge[image]')")

SCHEDULES = ["linear", "scaled_linear", "squaredcos_cap_v2"]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_betas_and_alphas_match_diffusers(schedule):
    ours = DDPMScheduler(num_train_timesteps=200, beta_schedule=schedule)
    ref = diffusers.DDPMScheduler(num_train_timesteps=200, beta_schedule=schedule)
    assert torch.allclose(ours.betas, ref.betas, atol=1e-7)
    assert torch.allclose(ours.alphas_cumprod, ref.alphas_cumprod, atol=1e-7)


def test_add_noise_matches_diffusers_and_closed_form():
    ours, ref = DDPMScheduler(num_train_timesteps=100), diffusers.DDPMScheduler(num_train_timesteps=100)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 3, 4, 4, generator=g), torch.randn(6, 3, 4, 4, generator=g)
    t = torch.tensor([0, 5, 17, 50, 98, 99])
    got = ours.add_noise(x0, noise, t)
    assert torch.allclose(got, ref.add_noise(x0, noise, t), atol=1e-6)
    # closed form: abar_t = prod_{s<=t} (1 - beta_s), computed here independently in float64
    betas = torch.linspace(1e-4, 0.02, 100, dtype=torch.float64)
    abar = torch.tensor([float(torch.prod(1 - betas[: int(s) + 1])) for s in t], dtype=torch.float64)
    want = abar.sqrt().view(-1, 1, 1, 1) * x0.double() + (1 - abar).sqrt().view(-1, 1, 1, 1) * noise.double()
    assert torch.allclose(got.double(), want, atol=1e-5)


def test_forward_process_marginal_statistics():
    # iterating q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t) for t steps gives the closed form's moments
    s = DDPMScheduler(num_train_timesteps=50)
    g = torch.Generator().manual_seed(1)
    x0 = torch.full((20000,), 0.7)
    x = x0.clone()
    for b in s.betas[:30]:
        x = (1 - b).sqrt() * x + b.sqrt() * torch.randn(x.shape, generator=g)
    abar = s.alphas_cumprod[29]
    assert abs(float(x.mean()) - 0.7 * float(abar.sqrt())) < 0.02
    assert abs(float(x.var()) - float(1 - abar)) < 0.02


@pytest.mark.parametrize("n_steps", [None, 10])
def test_ddpm_step_matches_diffusers(n_steps):
    T = 100
    ours, ref = DDPMScheduler(num_train_timesteps=T), diffusers.DDPMScheduler(num_train_timesteps=T)
    if n_steps:
        ours.set_timesteps(n_steps)
        ref.set_timesteps(n_steps)
        assert torch.equal(ours.timesteps, ref.timesteps)
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 3, 4, 4, generator=g)
    x_ours, x_ref = sample.clone(), sample.clone()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for t in ours.timesteps.tolist():
        eps = torch.sin(x_ours * 3 + t)  # any deterministic "model"
        x_ours = ours.step(eps, t, x_ours, generator=g1).prev_sample
        out = ref.step(torch.sin(x_ref * 3 + t), t, x_ref, generator=g2)
        x_ref = out.prev_sample
        assert torch.allclose(x_ours, x_ref, atol=1e-5), t


@pytest.mark.parametrize(("eta", "clipped_eps"), [(0.0, False), (1.0, False), (0.0, True)])
def test_ddim_step_matches_diffusers(eta, clipped_eps):
    T = 200
    ours, ref = DDIMScheduler(num_train_timesteps=T), diffusers.DDIMScheduler(num_train_timesteps=T)
    ours.set_timesteps(20)
    ref.set_timesteps(20)
    assert torch.equal(ours.timesteps, ref.timesteps)
    x_ours = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x_ref = x_ours.clone()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for t in ours.timesteps.tolist():
        # 3 * tanh: an eps whose x0 guess leaves [-1, 1], so clipping (and the clipped-eps flag) matters
        x_ours = ours.step(3 * torch.tanh(x_ours + t / T), t, x_ours, eta=eta, generator=g1,
                           use_clipped_model_output=clipped_eps).prev_sample
        x_ref = ref.step(3 * torch.tanh(x_ref + t / T), t, x_ref, eta=eta, generator=g2,
                         use_clipped_model_output=clipped_eps).prev_sample
        assert torch.allclose(x_ours, x_ref, atol=1e-5), t


def test_ddim_with_true_noise_recovers_x0():
    # If the model predicts the true noise, deterministic DDIM walks straight back to x0 in any number of steps.
    s = DDIMScheduler(num_train_timesteps=100, clip_sample=False)
    s.set_timesteps(5)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 1, 4, 4, generator=g) * 0.5, torch.randn(3, 1, 4, 4, generator=g)
    t0 = int(s.timesteps[0])
    x = s.add_noise(x0, noise, torch.full((3,), t0))
    for t in s.timesteps.tolist():
        x = s.step(noise, t, x).prev_sample
    assert torch.allclose(x, x0, atol=1e-4)


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="beta_schedule"):
        DDPMScheduler(beta_schedule="cosine-ish")
    with pytest.raises(ConfigError, match="beta_end=2.0"):
        DDPMScheduler(num_train_timesteps=10, beta_end=2.0)
    with pytest.raises(ConfigError, match="num_inference_steps"):
        DDPMScheduler(num_train_timesteps=10).set_timesteps(11)
    with pytest.raises(ConfigError, match="set_timesteps"):
        DDIMScheduler(num_train_timesteps=10).step(torch.zeros(1), 5, torch.zeros(1))
