"""DDPM training loss and the sampling loop, model-agnostic: any eps_theta(x, t, cond) and any scheduler here;
and `DiffusionModel`, the checkpointable bundle (denoiser + its EMA copy + the schedule in its config).

Images enter in [0, 1] and are mapped to [-1, 1], the range the schedulers clip x0 to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genforge.checkpoint import ModuleFamily, register_family
from genforge.errors import ConfigError
from genforge.image.ema import ema_copy, update_ema
from genforge.image.schedulers import DDIMScheduler, DDPMScheduler
from genforge.image.unet import MLPDenoiser, TinyUNet, guided_eps


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
        #    (DDIM re-derives eps from the clipped x0, GLIDE's choice: see DDIMScheduler.step for why it matters)
        if isinstance(scheduler, DDIMScheduler):
            x = scheduler.step(eps, t, x, eta=eta, generator=g, use_clipped_model_output=True).prev_sample
        else:
            x = scheduler.step(eps, t, x, generator=g).prev_sample
    # 5. back to pixels
    return to_pixel_range(x)


@dataclass
class DiffusionConfig:
    """A DDPM: the denoiser's shape and conditioning, the noise schedule, and how it is trained."""

    image_shape: tuple[int, int, int] = (1, 8, 8)  # (C, H, W); `genforge image train` sets it from the data
    arch: str = "mlp"  # 'mlp' (flattened images) or 'unet' (TinyUNet; even H and W)
    hidden: int = 512  # MLP width; the U-Net's base channels are hidden // 16
    cond: str = "none"  # 'none', 'class' or 'text'
    num_classes: int = 0  # for cond='class'
    vocab_size: int = 0  # for cond='text': the caption tokenizer's length
    num_train_timesteps: int = 200  # T
    beta_schedule: str = "linear"  # 'linear', 'scaled_linear' or 'squaredcos_cap_v2'
    beta_start: float | None = None  # None: 1e-4 * 1000 / T (Ho et al.'s range rescaled so x_T is still noise)
    beta_end: float | None = None  # None: 0.02 * 1000 / T, at most 0.5
    p_uncond: float = 0.1  # share of conditions dropped in training (classifier-free guidance)
    ema_decay: float = 0.995  # sample from an EMA of the weights (Ho et al. use 0.9999 over 800k steps; a few
    # thousand steps here want a shorter memory); 0 samples from the raw weights

    def __post_init__(self) -> None:
        if self.arch not in ("mlp", "unet"):
            raise ConfigError(f"arch={self.arch!r}: use 'mlp' or 'unet'")


class DiffusionModel(nn.Module):
    """eps_theta plus an EMA copy used for sampling; `scheduler(kind)` rebuilds the schedule from the config."""

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        kw = {"cond": c.cond, "num_classes": c.num_classes, "vocab_size": c.vocab_size}
        if c.arch == "mlp":
            self.denoiser = MLPDenoiser(tuple(c.image_shape), hidden=c.hidden, **kw)
        else:
            self.denoiser = TinyUNet(in_ch=c.image_shape[0], base=max(8, c.hidden // 16), **kw)
        self.ema = ema_copy(self.denoiser)
        self.train_scheduler = self.scheduler("ddpm")  # a plain attribute: the schedule lives in the config

    def scheduler(self, kind: str = "ddpm") -> DDPMScheduler:
        """A fresh DDPM (ancestral) or DDIM scheduler over the trained schedule."""
        c, T = self.config, self.config.num_train_timesteps
        kw = {"beta_start": c.beta_start if c.beta_start is not None else 1e-4 * 1000 / T,
              "beta_end": c.beta_end if c.beta_end is not None else min(0.02 * 1000 / T, 0.5)}
        if kind not in ("ddpm", "ddim"):
            raise ConfigError(f"sampler={kind!r}: use 'ddpm' or 'ddim'")
        return (DDIMScheduler if kind == "ddim" else DDPMScheduler)(T, c.beta_schedule, **kw)

    def loss(self, batch: dict) -> tuple[torch.Tensor, int, dict]:
        """The trainer's loss: L_simple summed over the batch (mean over pixels), batch {'x', optional 'cond'}."""
        x = batch["x"]
        # generator None: the trainer seeds and checkpoints the global RNG, which makes resume exact
        loss = diffusion_loss(self.denoiser, self.train_scheduler, x, batch.get("cond"), self.config.p_uncond)
        return loss * x.shape[0], x.shape[0], {}

    def after_step(self) -> None:
        update_ema(self.ema, self.denoiser, self.config.ema_decay)

    @torch.no_grad()
    def sample(self, n: int, cond: torch.Tensor | None = None, guidance_scale: float = 1.0, sampler: str = "ddpm",
               steps: int | None = None, seed: int = 0, eta: float = 0.0) -> torch.Tensor:
        """n images (n, C, H, W) in [0, 1] from the EMA denoiser; `steps` None = all T."""
        net = self.ema if self.config.ema_decay > 0 else self.denoiser
        return sample(net, self.scheduler(sampler), n, tuple(self.config.image_shape), cond, guidance_scale, steps,
                      eta, seed)


register_family(ModuleFamily("image_ddpm", DiffusionModel, DiffusionConfig))
