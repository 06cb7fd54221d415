"""Noise schedulers, separate from the denoiser (the diffusers split): `set_timesteps`, `add_noise`, `step`."""

from genforge.image.schedulers.ddim import DDIMScheduler
from genforge.image.schedulers.ddpm import DDPMScheduler, SchedulerOutput, make_betas

__all__ = ["DDIMScheduler", "DDPMScheduler", "SchedulerOutput", "make_betas"]
