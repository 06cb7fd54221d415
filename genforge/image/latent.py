"""Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models",
arXiv:2112.10752): the three-part text-to-image framework of Stable Diffusion, DALL-E 2 and Imagen.

1. an autoencoder trained on images alone (here the MLP `VAE` of `vae.py` with a small KL weight, the
   "KL-reg" first stage of their sec. 3.1), frozen afterwards;
2. a diffusion model in its latent space, conditioned on text (the caption encoder of `text.py`, trained with
   the denoiser; 10 % of captions dropped so classifier-free guidance works, Ho & Salimans 2021);
3. the autoencoder's decoder turns the sampled latent into pixels.

The latent is rescaled to unit variance before diffusion (their sec. 4.3.2 / app. G: "we rescale the latents by
a component-wise scale factor", the 0.18215 of Stable Diffusion, estimated here from the training latents), and,
unlike pixels, it is not clipped to [-1, 1] while sampling. The denoiser is the MLP eps-predictor of `unet.py` on
the (latent_dim, 1, 1) latent: at 16x16x3 = 768 numbers per picture the latent (16 numbers) is 48x smaller, which
is what lets a CPU afford 16x16 pictures.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genforge.checkpoint import ModuleFamily, register_family
from genforge.image.ema import ema_copy, update_ema
from genforge.image.schedulers import DDIMScheduler, DDPMScheduler
from genforge.image.unet import MLPDenoiser, guided_eps
from genforge.image.vae import VAE, VAEConfig


@dataclass
class LatentConfig:
    """The first stage (a VAE on images) and the latent denoiser with its schedule."""

    image_shape: tuple[int, int, int] = (3, 16, 16)
    latent_dim: int = 16
    vae_hidden: int = 256
    vae_beta: float = 0.02  # small KL weight: a nearly deterministic autoencoder, as LDM's first stage
    hidden: int = 256  # latent denoiser MLP width
    depth: int = 3
    vocab_size: int = 0  # caption tokenizer length
    num_train_timesteps: int = 200
    beta_schedule: str = "linear"
    p_uncond: float = 0.1
    ema_decay: float = 0.995


class LatentDiffusion(nn.Module):
    """VAE (frozen first stage) + latent eps-model + its EMA copy; `scale` maps VAE means to unit variance."""

    def __init__(self, config: LatentConfig) -> None:
        super().__init__()
        self.config = c = config
        self.vae = VAE(VAEConfig(image_shape=tuple(c.image_shape), latent_dim=c.latent_dim, hidden=c.vae_hidden,
                                 beta=c.vae_beta))
        self.latent_shape = (c.latent_dim, 1, 1)
        self.denoiser = MLPDenoiser(self.latent_shape, hidden=c.hidden, depth=c.depth, cond="text",
                                    vocab_size=c.vocab_size)
        self.ema = ema_copy(self.denoiser)
        self.register_buffer("shift", torch.zeros(c.latent_dim))
        self.register_buffer("scale", torch.ones(c.latent_dim))
        self.train_scheduler = self.scheduler("ddpm")

    def scheduler(self, kind: str = "ddpm") -> DDPMScheduler:
        """DDPM/DDIM over the latent; no x0 clipping (a latent has no [-1, 1] range)."""
        T = self.config.num_train_timesteps
        kw = {"beta_start": 1e-4 * 1000 / T, "beta_end": min(0.02 * 1000 / T, 0.5), "clip_sample": False}
        return (DDIMScheduler if kind == "ddim" else DDPMScheduler)(T, self.config.beta_schedule, **kw)

    # ---- part 1 -> 2: pixels <-> diffusion latents
    @torch.no_grad()
    def fit_scale(self, images: torch.Tensor) -> None:
        """Set shift/scale so the training latents have zero mean and unit variance per component."""
        mu, _ = self.vae.encode(images)
        self.shift.copy_(mu.mean(0))
        self.scale.copy_(mu.std(0).clamp(min=1e-3))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> diffusion latents (B, latent_dim, 1, 1) (the posterior mean, rescaled)."""
        mu, _ = self.vae.encode(images)
        return ((mu - self.shift) / self.scale).view(-1, *self.latent_shape)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim, 1, 1) diffusion latents -> (B, C, H, W) pixels in [0, 1] (part 3)."""
        return self.vae.images(z.flatten(1) * self.scale + self.shift)

    # ---- part 2: the latent diffusion model
    def loss(self, batch: dict) -> tuple[torch.Tensor, int, dict]:
        """L_simple (Ho et al. 2020 eq. 14) on latents: batch {'x': latents (B, L, 1, 1), 'cond': ids (B, Lc)}."""
        z0, cond = batch["x"], batch.get("cond")
        t = torch.randint(0, self.train_scheduler.num_train_timesteps, (len(z0),), device=z0.device)
        eps = torch.randn_like(z0)
        z_t = self.train_scheduler.add_noise(z0, eps, t)
        cond = self.denoiser.embed.conditioner.drop(cond, self.config.p_uncond)
        loss = nn.functional.mse_loss(self.denoiser(z_t, t, cond), eps)
        return loss * len(z0), len(z0), {}

    def after_step(self) -> None:
        update_ema(self.ema, self.denoiser, self.config.ema_decay)

    @torch.no_grad()
    def sample_latents(self, n: int, cond: torch.Tensor | None = None, guidance_scale: float = 1.0,
                       sampler: str = "ddim", steps: int | None = 50, seed: int = 0,
                       net: nn.Module | None = None) -> torch.Tensor:
        """The reverse chain in latent space: (n, latent_dim, 1, 1). `net` overrides the EMA denoiser."""
        net = net or (self.ema if self.config.ema_decay > 0 else self.denoiser)
        net.eval()
        sched = self.scheduler(sampler)
        sched.set_timesteps(steps or sched.num_train_timesteps)
        g = torch.Generator().manual_seed(seed)
        z = torch.randn((n, *self.latent_shape), generator=g)  # z_T ~ N(0, I)
        for t in sched.timesteps.tolist():
            tt = torch.full((n,), t, dtype=torch.long)
            eps = guided_eps(net, z, tt, cond, guidance_scale)  # eps_u + s (eps_c - eps_u)
            if isinstance(sched, DDIMScheduler):
                z = sched.step(eps, t, z, eta=0.0).prev_sample  # DDIM eq. 12
            else:
                z = sched.step(eps, t, z, generator=g).prev_sample  # DDPM eq. 7 (ancestral)
        return z

    @torch.no_grad()
    def sample(self, n: int, cond: torch.Tensor | None = None, guidance_scale: float = 1.0, sampler: str = "ddim",
               steps: int | None = 50, seed: int = 0, net: nn.Module | None = None) -> torch.Tensor:
        """Text -> latent -> pixels: n images (n, C, H, W) in [0, 1]."""
        return self.decode(self.sample_latents(n, cond, guidance_scale, sampler, steps, seed, net))


register_family(ModuleFamily("image_latent", LatentDiffusion, LatentConfig))


def train_latent(model: LatentDiffusion, images: torch.Tensor, caption_ids: torch.Tensor, out_dir: str, *,
                 vae_steps: int, steps: int, batch_size: int = 64, seed: int = 0, threads: int = 0,
                 progress: bool = False) -> dict:
    """Train the two parts in order, each on the shared Trainer: the VAE on the images alone (part 1), then, with
    the VAE frozen, the latent denoiser on (latent, caption) pairs (part 2). Returns both summaries."""
    from pathlib import Path

    from genforge.checkpoint import write_checkpoint_files
    from genforge.image.run import ImageBatches, ImageTrainer
    from genforge.train.trainer import Part, TrainConfig

    def tcfg(n: int, lr: float, clip: float) -> TrainConfig:
        return TrainConfig(max_steps=n, micro_batch=batch_size, lr=lr, warmup_steps=min(20, n), weight_decay=0.0,
                           beta2=0.999, grad_clip=clip, eval_every=0, ckpt_every=0, log_every=max(1, n // 20),
                           seed=seed, device="cpu", threads=threads, resume=False, progress=progress)

    torch.manual_seed(seed)
    vae = model.vae
    # part 1: images alone (no captions)
    t1 = ImageTrainer(vae, tcfg(vae_steps, 1e-3, 0.0), [Part("vae", vae, lambda m, b: m.train_loss(b))],
                      ImageBatches(images, None, batch_size, seed), Path(out_dir) / "vae", name="latent-vae")
    s1 = t1.fit()
    vae.requires_grad_(False).eval()
    model.fit_scale(images)
    latents = model.encode(images)  # (N, L, 1, 1), computed once: the first stage is frozen
    # part 2: the latent denoiser conditioned on the captions (the text encoder inside it trains with it)
    t2 = ImageTrainer(model, tcfg(steps, 1e-3, 1.0), [Part("denoiser", model.denoiser, lambda m, b: m.loss(b))],
                      ImageBatches(latents, caption_ids, batch_size, seed + 1), Path(out_dir), name="latent-diffusion",
                      save_fn=lambda folder: write_checkpoint_files(folder, model))
    s2 = t2.fit()
    return {"vae": s1, "diffusion": s2}
