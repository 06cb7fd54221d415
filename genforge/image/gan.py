"""Generative adversarial networks (Goodfellow et al. 2014) with an EMA generator.

The discriminator D is a learned critic that scores real vs generated images — a reward model for the
generator — and the two are trained in alternation: a D step on real and (detached) fake images, then a G step
through D. We use the non-saturating generator loss (their sec. 3: maximise log D(G(z))) and keep an exponential
moving average of G's weights for sampling, which gives smoother, better samples at no training cost
(Karras et al. 2018; Yazici et al. 2019). `MLPGenerator`/`MLPDiscriminator` fit 8x8 digits; `DCGenerator` /
`DCDiscriminator` are the DCGAN layout (Radford et al. 2016: strided convs, batch norm in G, LeakyReLU in D)
for 16x16 shapes.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F


class MLPGenerator(nn.Module):
    """z (B, z_dim) -> images (B, C, H, W) in [0, 1]."""

    def __init__(self, image_shape: tuple[int, int, int], z_dim: int = 32, hidden: int = 256) -> None:
        super().__init__()
        self.image_shape, self.z_dim = tuple(image_shape), z_dim
        self.net = nn.Sequential(nn.Linear(z_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(0.2), nn.Linear(hidden, math.prod(image_shape)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(z)).view(-1, *self.image_shape)


class MLPDiscriminator(nn.Module):
    """images (B, C, H, W) -> logits (B,): log-odds that each image is real."""

    def __init__(self, image_shape: tuple[int, int, int], hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(math.prod(image_shape), hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1)).squeeze(-1)


class DCGenerator(nn.Module):
    """z -> (B, C, 16, 16): project to 4x4, two stride-2 transposed convs (DCGAN)."""

    def __init__(self, image_shape: tuple[int, int, int] = (3, 16, 16), z_dim: int = 32, base: int = 32) -> None:
        super().__init__()
        c, h, w = image_shape
        self.image_shape, self.z_dim, self.base, self.s = tuple(image_shape), z_dim, base, h // 4
        self.proj = nn.Linear(z_dim, 2 * base * self.s * self.s)
        self.net = nn.Sequential(nn.BatchNorm2d(2 * base), nn.ReLU(),
                                 nn.ConvTranspose2d(2 * base, base, 4, 2, 1), nn.BatchNorm2d(base), nn.ReLU(),
                                 nn.ConvTranspose2d(base, c, 4, 2, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.proj(z).view(-1, 2 * self.base, self.s, self.s)  # (B, 2base, H/4, W/4)
        return torch.sigmoid(self.net(h))


class DCDiscriminator(nn.Module):
    """(B, C, 16, 16) -> logits (B,): two stride-2 convs with LeakyReLU (DCGAN), then a linear read-out."""

    def __init__(self, image_shape: tuple[int, int, int] = (3, 16, 16), base: int = 32) -> None:
        super().__init__()
        c, h, w = image_shape
        self.net = nn.Sequential(nn.Conv2d(c, base, 4, 2, 1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(base, 2 * base, 4, 2, 1), nn.LeakyReLU(0.2), nn.Flatten(),
                                 nn.Linear(2 * base * (h // 4) * (w // 4), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def d_loss(d: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Discriminator loss: -log D(real) - log(1 - D(fake)) (Goodfellow et al. 2014, eq. 1), fake detached."""
    lr, lf = d(real), d(fake.detach())
    return F.binary_cross_entropy_with_logits(lr, torch.ones_like(lr)) + \
        F.binary_cross_entropy_with_logits(lf, torch.zeros_like(lf))


def g_loss(d: nn.Module, fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: -log D(G(z)) (their sec. 3), strong gradients while D still wins."""
    lf = d(fake)
    return F.binary_cross_entropy_with_logits(lf, torch.ones_like(lf))


def make_ema(g: nn.Module) -> nn.Module:
    """A frozen copy of the generator to hold the moving average."""
    ema = copy.deepcopy(g)
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, g: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * g for parameters; buffers (batch-norm statistics) are copied."""
    for pe, pg in zip(ema.parameters(), g.parameters()):
        pe.lerp_(pg, 1 - decay)
    for be, bg in zip(ema.buffers(), g.buffers()):
        be.copy_(bg)


def gan_step(g: nn.Module, d: nn.Module, ema: nn.Module, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
             real: torch.Tensor, generator: torch.Generator, ema_decay: float = 0.999) -> dict[str, float]:
    """One alternating step: update D on real vs fake, then G through the updated D, then the EMA."""
    z = torch.randn(real.shape[0], g.z_dim, generator=generator).to(real.device)
    fake = g(z)
    # 1. discriminator: tell real from fake (fake detached, so G is untouched)
    loss_d = d_loss(d, real, fake)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    # 2. generator: fool the freshly updated discriminator (D's grads from this pass are discarded next step)
    loss_g = g_loss(d, fake)
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    update_ema(ema, g, ema_decay)
    return {"loss_d": loss_d.item(), "loss_g": loss_g.item()}


@torch.no_grad()
def gan_sample(g: nn.Module, n: int, seed: int = 0) -> torch.Tensor:
    """n images from a (usually EMA) generator, (n, C, H, W) in [0, 1]."""
    was = g.training
    g.eval()
    z = torch.randn(n, g.z_dim, generator=torch.Generator().manual_seed(seed))
    out = g(z.to(next(g.parameters()).device))
    g.train(was)
    return out
