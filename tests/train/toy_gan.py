"""A two-optimizer toy (a 1-D GAN) for the trainer's several-parts path; runnable as a script so a test can
SIGKILL it: `python -m tests.train.toy_gan OUT_DIR STEPS [SLEEP_S]`."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from genforge.checkpoint import ModuleFamily, register_family, write_checkpoint_files
from genforge.train.trainer import Part, TrainConfig, Trainer


@dataclass
class ToyGANConfig:
    noise: int = 4
    hidden: int = 16


class ToyGAN(nn.Module):
    """Generator: noise (B, z) -> sample (B, 1); discriminator: sample (B, 1) -> logit (B,)."""

    def __init__(self, config: ToyGANConfig):
        super().__init__()
        self.config = config
        self.gen = nn.Sequential(nn.Linear(config.noise, config.hidden), nn.Tanh(), nn.Linear(config.hidden, 1))
        self.disc = nn.Sequential(nn.Linear(1, config.hidden), nn.Tanh(), nn.Linear(config.hidden, 1))


register_family(ModuleFamily("toy_gan", ToyGAN, ToyGANConfig))


class GANData:
    """Real samples from N(3, 0.5) and generator noise; a pure function of (step, micro), as the trainer needs."""

    def __init__(self, noise: int, batch: int = 16, sleep_s: float = 0.0):
        self.noise, self.batch, self.sleep_s = noise, batch, sleep_s

    def get_batch(self, step: int, micro: int, rank: int, world: int) -> dict:
        time.sleep(self.sleep_s)  # slow enough for a test to kill it mid-run
        g = torch.Generator().manual_seed(step * 1000 + micro)
        return {"real": 3 + 0.5 * torch.randn(self.batch, 1, generator=g),
                "z": torch.randn(self.batch, self.noise, generator=g)}


def d_loss(model: ToyGAN, batch: dict) -> tuple[torch.Tensor, int, dict]:
    """Non-saturating GAN discriminator loss (Goodfellow et al. 2014); the generator's sample is detached."""
    fake = model.gen(batch["z"]).detach()
    bce = nn.functional.binary_cross_entropy_with_logits
    real_l, fake_l = model.disc(batch["real"]).squeeze(-1), model.disc(fake).squeeze(-1)
    loss = (bce(real_l, torch.ones_like(real_l), reduction="sum")
            + bce(fake_l, torch.zeros_like(fake_l), reduction="sum"))
    return loss, len(real_l), {}


def g_loss(model: ToyGAN, batch: dict) -> tuple[torch.Tensor, int, dict]:
    """The generator wants its samples called real: -log D(G(z))."""
    fake = model.gen(batch["z"])
    logit = model.disc(fake).squeeze(-1)
    loss = nn.functional.binary_cross_entropy_with_logits(logit, torch.ones_like(logit), reduction="sum")
    return loss, len(logit), {"fake_mean": fake.mean().item()}


def make_trainer(out_dir: str, steps: int, sleep_s: float = 0.0, **cfg) -> Trainer:
    torch.manual_seed(0)
    model = ToyGAN(ToyGANConfig())
    # D steps every step; G every second step (alternating schedules, as many GAN recipes use)
    parts = [Part("disc", model.disc, d_loss, lr=2e-3), Part("gen", model.gen, g_loss, every=2, phase=1, lr=1e-3)]
    base = dict(max_steps=steps, micro_batch=16, grad_accum=2, warmup_steps=2, log_every=1, eval_every=0,
                ckpt_every=5, progress=False, threads=1, seed=0)
    base.update(cfg)
    return Trainer(model, TrainConfig(**base), parts, GANData(model.config.noise, sleep_s=sleep_s), out_dir,
                   save_fn=lambda folder: write_checkpoint_files(folder, model), name="gan")


if __name__ == "__main__":
    make_trainer(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 0.0).fit()
