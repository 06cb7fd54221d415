"""DDPM noise scheduler (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", arXiv:2006.11239).

The scheduler owns the noise schedule and the two directions of the chain; the denoiser (`image/unet.py`) only
predicts the noise eps. Semantics follow diffusers' `DDPMScheduler` (epsilon prediction, "leading" timestep
spacing, "fixed_small" variance, x0 clipping) and a test checks the numbers against it.

Notation: beta_t the per-step noise variance, alpha_t = 1 - beta_t, abar_t = prod_{s<=t} alpha_s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from genforge.errors import ConfigError


@dataclass
class SchedulerOutput:
    """One reverse step: the sample at the previous timestep and the model's current guess of x0."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def make_betas(num_train_timesteps: int, schedule: str = "linear", beta_start: float = 1e-4,
               beta_end: float = 0.02) -> torch.Tensor:
    """(T,) float32 betas. 'linear' (Ho et al. 2020, sec. 4: 1e-4 -> 0.02), 'scaled_linear' (linear in sqrt(beta),
    as latent diffusion uses) or 'squaredcos_cap_v2' (the cosine schedule of Nichol & Dhariwal 2021, eq. 17,
    betas capped at 0.999)."""
    if num_train_timesteps < 1:
        raise ConfigError(f"num_train_timesteps={num_train_timesteps}: must be >= 1")
    if schedule in ("linear", "scaled_linear") and not 0 < beta_start <= beta_end < 1:
        raise ConfigError(f"beta_start={beta_start}, beta_end={beta_end}: need 0 < beta_start <= beta_end < 1")
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    if schedule == "squaredcos_cap_v2":
        def abar(s: float) -> float:  # alpha-bar as a function of s in [0, 1], with offset 0.008 (their eq. 17)
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        T = num_train_timesteps
        return torch.tensor([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)], dtype=torch.float32)
    raise ConfigError(f"beta_schedule={schedule!r}: use 'linear', 'scaled_linear' or 'squaredcos_cap_v2'")


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, ...) so a per-example scalar broadcasts over the image."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


class DDPMScheduler:
    """Forward noising q(x_t | x_0) and ancestral reverse steps p(x_{t-1} | x_t)."""

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "linear", beta_start: float = 1e-4,
                 beta_end: float = 0.02, clip_sample: bool = True, clip_sample_range: float = 1.0) -> None:
        self.num_train_timesteps = num_train_timesteps
        self.betas = make_betas(num_train_timesteps, beta_schedule, beta_start, beta_end)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)  # abar_t
        self.clip_sample, self.clip_sample_range = clip_sample, clip_sample_range
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1)

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Use every (T // n)-th timestep, descending from the largest multiple ("leading" spacing)."""
        if not 1 <= num_inference_steps <= self.num_train_timesteps:
            raise ConfigError(f"num_inference_steps={num_inference_steps}: must be in [1, {self.num_train_timesteps}]")
        self.num_inference_steps = num_inference_steps
        ratio = self.num_train_timesteps // num_inference_steps
        self.timesteps = torch.arange(num_inference_steps - 1, -1, -1, dtype=torch.long) * ratio

    def previous_timestep(self, t: int) -> int:
        """The timestep after `t` in the current chain (-1 after the last)."""
        if self.num_inference_steps is None:
            return t - 1
        return t - self.num_train_timesteps // self.num_inference_steps

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps — the closed form of the forward process (eq. 4)."""
        abar = self.alphas_cumprod.to(x0.device, x0.dtype)[t.to(x0.device)]
        return _expand(abar.sqrt(), x0) * x0 + _expand((1 - abar).sqrt(), x0) * noise

    def _abar(self, t: int) -> torch.Tensor:
        return self.alphas_cumprod[t] if t >= 0 else torch.tensor(1.0)

    def step(self, eps: torch.Tensor, t: int, sample: torch.Tensor, generator: torch.Generator | None = None,
             noise: torch.Tensor | None = None) -> SchedulerOutput:
        """One ancestral step x_t -> x_{t-1} from the predicted noise `eps` (same shape as `sample`).

        With inference steps (t -> t' = t - T/n) the same formulas apply with alpha_t := abar_t / abar_t'.
        Noise comes from `noise` if given, else `torch.randn(..., generator=generator)`.
        """
        t = int(t)
        prev_t = self.previous_timestep(t)
        abar_t, abar_prev = self._abar(t), self._abar(prev_t)
        beta_prod, beta_prod_prev = 1 - abar_t, 1 - abar_prev
        alpha_t = abar_t / abar_prev  # the "current" alpha of the (possibly strided) step
        beta_t = 1 - alpha_t
        # 1. x0 from the noise prediction, inverting eq. 4: x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (eq. 15)
        x0 = (sample - beta_prod.sqrt() * eps) / abar_t.sqrt()
        # 2. clip x0 to the data range (images live in [-1, 1]); keeps early, very noisy steps from overshooting
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        # 3. posterior mean mu~_t(x_t, x0) of q(x_{t-1} | x_t, x0), eq. 7
        mean = (abar_prev.sqrt() * beta_t / beta_prod) * x0 + (alpha_t.sqrt() * beta_prod_prev / beta_prod) * sample
        # 4. add noise with the posterior variance beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t (eq. 7,
        #    "fixed small"); no noise on the final step t = 0
        if t > 0:
            var = (beta_prod_prev / beta_prod * beta_t).clamp(min=1e-20)
            if noise is None:
                noise = torch.randn(eps.shape, generator=generator, dtype=eps.dtype, device=eps.device)
            mean = mean + var.sqrt() * noise
        return SchedulerOutput(mean, x0)
