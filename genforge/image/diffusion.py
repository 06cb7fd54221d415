"""DDPM training loss and the sampling loop, model-agnostic: any eps_theta(x, t, cond) and any scheduler here.

Images enter in [0, 1] and are mapped to [-1, 1], the range the schedulers clip x0 to.
"""

from __future__ import annotations

import torch
from torch import nn

from genforge.image.schedulers import DDIMScheduler, DDPMScheduler
from genforge.image.unet import guided_eps


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels -> [-1, 1]."""
    return x * 2 - 1


def to_pixel_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] pixels, clamped."""
    return ((x + 1) / 2).clamp(0, 1)


def diffusion_loss(model: nn.Module, scheduler: DDPMScheduler, images: torch.Tensor, cond: torch.Tensor | None = None,
                   p_uncond: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """L_simple of Ho et al. 2020 (eq. 14): E ||eps - eps_theta(sqrt(abar_t) x0 + sqrt(1-abar_t) eps, t)||^2.

    images (B, C, H, W) in [0, 1]; with p_uncond > 0 a share of conditions is replaced by null so the same network
    also learns the unconditional eps that classifier-free guidance needs.
    """
    x0 = to_model_range(images)
    b = x0.shape[0]
    t = torch.randint(0, scheduler.num_train_timesteps, (b,), generator=generator).to(x0.device)  # t ~ U{0..T-1}
    eps = torch.randn(x0.shape, generator=generator).to(x0.device)
    x_t = scheduler.add_noise(x0, eps, t)
    cond = model.embed.conditioner.drop(cond, p_uncond, generator)
    return torch.nn.functional.mse_loss(model(x_t, t, cond), eps)


@torch.no_grad()
def sample(model: nn.Module, scheduler: DDPMScheduler, n: int, image_shape: tuple[int, int, int],
           cond: torch.Tensor | None = None, guidance_scale: float = 1.0, num_inference_steps: int | None = None,
           eta: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Generate n images (n, C, H, W) in [0, 1] by running the reverse chain; DDIM schedulers use `eta`."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    # 1. choose the chain: all T steps (ancestral DDPM) or a strided sub-sequence (DDPM/DDIM with fewer steps)
    scheduler.set_timesteps(num_inference_steps or scheduler.num_train_timesteps)
    # 2. start from pure noise x_T ~ N(0, I)
    x = torch.randn((n, *image_shape), generator=g).to(device)
    for t in scheduler.timesteps.tolist():
        tt = torch.full((n,), t, dtype=torch.long, device=device)
        # 3. predict the noise in x_t, guided toward the condition (scale 1 = plain conditional model)
        eps = guided_eps(model, x, tt, cond, guidance_scale)
        # 4. let the scheduler step x_t -> x_{t-1} (eq. 7 / DDIM eq. 12), adding its own noise
        if isinstance(scheduler, DDIMScheduler):
            x = scheduler.step(eps, t, x, eta=eta, generator=g).prev_sample
        else:
            x = scheduler.step(eps, t, x, generator=g).prev_sample
    # 5. back to pixels
    return to_pixel_range(x)
