"""Generative adversarial networks (Goodfellow et al. 2014) with an EMA generator.

The discriminator D is a learned critic that scores real vs generated images — a reward model for the generator —
and the two are trained in alternation: a D step on real and (detached) fake images, then a G step through D. We use
the non-saturating generator loss (their sec. 3: maximise log D(G(z))) and keep an exponential moving average of G's
weights for sampling (`image/ema.py`). `GAN` bundles G, D and the EMA for the shared Trainer: two `Part`s (D, then G
through the freshly updated D) in one step, as Goodfellow et al.'s alg. 1 alternates.
`MLPGenerator`/`MLPDiscriminator` fit 8x8 digits; `DCGenerator` / `DCDiscriminator` are the DCGAN layout (Radford et
al. 2016: strided convs, batch norm in G, LeakyReLU in D) for 16x16 shapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from genforge.checkpoint import ModuleFamily, register_family
from genforge.errors import ConfigError
from genforge.image.ema import ema_copy, update_ema


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


@torch.no_grad()
def gan_sample(g: nn.Module, n: int, seed: int = 0) -> torch.Tensor:
    """n images from a (usually EMA) generator, (n, C, H, W) in [0, 1]."""
    was = g.training
    g.eval()
    z = torch.randn(n, g.z_dim, generator=torch.Generator().manual_seed(seed))
    out = g(z.to(next(g.parameters()).device))
    g.train(was)
    return out


@dataclass
class GANConfig:
    """A GAN's networks: MLPs (8x8 digits) or the DCGAN layout (16x16)."""

    image_shape: tuple[int, int, int] = (1, 8, 8)
    arch: str = "mlp"  # 'mlp' or 'dcgan' (16x16 only)
    z_dim: int = 32
    hidden: int = 256  # MLP width (DCGAN: base channels = hidden // 8)
    ema_decay: float = 0.995

    def __post_init__(self) -> None:
        if self.arch not in ("mlp", "dcgan"):
            raise ConfigError(f"arch={self.arch!r}: use 'mlp' or 'dcgan'")


class GAN(nn.Module):
    """Generator `g`, discriminator `d` and the generator's EMA `ema` (what `sample` draws from)."""

    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        self.config = c = config
        shape = tuple(c.image_shape)
        if c.arch == "dcgan":
            if shape[1:] != (16, 16):
                raise ConfigError(f"gan.arch='dcgan' needs 16x16 images, got {shape}; use gan.arch=mlp")
            base = max(8, c.hidden // 8)
            self.g, self.d = DCGenerator(shape, c.z_dim, base), DCDiscriminator(shape, base)
        else:
            self.g, self.d = MLPGenerator(shape, c.z_dim, c.hidden), MLPDiscriminator(shape, c.hidden)
        self.ema = ema_copy(self.g)

    def _z(self, n: int, device: torch.device) -> torch.Tensor:
        # the global RNG: the trainer seeds and checkpoints it, so resume replays the same z
        return torch.randn(n, self.config.z_dim).to(device)

    def d_loss(self, batch: dict) -> tuple[torch.Tensor, int, dict]:
        """The trainer's D part: eq. 1's discriminator loss, summed over the batch; G's sample is detached."""
        real = batch["x"]
        fake = self.g(self._z(real.shape[0], real.device))
        return d_loss(self.d, real, fake) * real.shape[0], real.shape[0], {}

    def g_loss(self, batch: dict) -> tuple[torch.Tensor, int, dict]:
        """The trainer's G part: the non-saturating loss through the discriminator D just updated."""
        n = batch["x"].shape[0]
        return g_loss(self.d, self.g(self._z(n, batch["x"].device))) * n, n, {}

    def after_step(self) -> None:
        update_ema(self.ema, self.g, self.config.ema_decay)

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, **_: object) -> torch.Tensor:
        """n images (n, C, H, W) in [0, 1] from the EMA generator."""
        return gan_sample(self.ema if self.config.ema_decay > 0 else self.g, n, seed)


register_family(ModuleFamily("image_gan", GAN, GANConfig))
