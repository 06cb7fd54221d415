"""RealNVP normalizing flow (Dinh, Sohl-Dickstein & Bengio 2017, "Density estimation using Real NVP").

An invertible map f: x -> z with a tractable Jacobian, so log p(x) = log N(f(x); 0, I) + log |det df/dx| exactly
(eq. 3). Each affine coupling layer keeps half the dimensions (a mask) and scales/shifts the other half by
functions of the kept half (eq. 7-9):  y = m*x + (1-m) * (x * exp(s(m*x)) + t(m*x)),  log det = sum (1-m) s.
Images are flattened (this is the MLP version that fits 8x8 digits); masks alternate between a checkerboard
and its complement. Pixels are dequantized with uniform noise and passed through a logit (their sec. 4.1), and
bits/dim accounts for both, so the number is a bound on the discrete data's code length.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from genforge.checkpoint import ModuleFamily, register_family


class Coupling(nn.Module):
    """One affine coupling layer over (B, D) vectors with a fixed binary mask (1 = passed through)."""

    def __init__(self, mask: torch.Tensor, hidden: int) -> None:
        super().__init__()
        d = mask.numel()
        self.register_buffer("mask", mask.float())
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 2 * d))
        nn.init.zeros_(self.net[-1].weight)  # start as the identity map
        nn.init.zeros_(self.net[-1].bias)
        self.scale = nn.Parameter(torch.ones(d))  # s = scale * tanh(raw): bounded, as RealNVP does for stability

    def _st(self, x_kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw_s, t = self.net(x_kept).chunk(2, dim=-1)
        free = 1 - self.mask
        return self.scale * torch.tanh(raw_s) * free, t * free

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (y, log|det dy/dx|) with shapes (B, D), (B,)."""
        s, t = self._st(x * self.mask)
        return x * torch.exp(s) + t, s.sum(-1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """y -> x; the kept half equals y's, so s and t can be recomputed from it (eq. 8)."""
        s, t = self._st(y * self.mask)
        return (y - t) * torch.exp(-s)


class RealNVP(nn.Module):
    """A stack of coupling layers over flattened (C, H, W) images with a standard normal base."""

    def __init__(self, image_shape: tuple[int, int, int], n_layers: int = 6, hidden: int = 256,
                 alpha: float = 0.05) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        c, h, w = image_shape
        self.dim = c * h * w
        checker = ((torch.arange(h)[:, None] + torch.arange(w)[None]) % 2).expand(c, h, w).flatten()
        self.layers = nn.ModuleList(Coupling(checker if i % 2 == 0 else 1 - checker, hidden) for i in range(n_layers))
        self.alpha = alpha  # logit(alpha + (1 - 2 alpha) y) keeps the logit away from +-infinity (sec. 4.1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, D) in R^D -> z (B, D), log|det dz/dx| (B,)."""
        logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, D) -> x (B, D)."""
        for layer in reversed(self.layers):
            z = layer.inverse(z)
        return z

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log density of flattened real-valued inputs (B, D) -> (B,)."""
        z, logdet = self(x)
        return -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1) + logdet

    def _to_logit(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y in (0, 1) -> logit space, with log|det| of the map (B,)."""
        p = self.alpha + (1 - 2 * self.alpha) * y
        v = torch.log(p) - torch.log1p(-p)
        logdet = (math.log(1 - 2 * self.alpha) - torch.log(p) - torch.log1p(-p)).sum(-1)
        return v, logdet

    def bits_per_dim(self, images: torch.Tensor, levels: int, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
        """Mean bits per dimension of discrete images (B, C, H, W) in [0, 1] with `levels` grey levels.

        Dequantize y = (k + u) / levels with k the integer level and u ~ U[0, 1), so
        -log2 P(k) <= -log2 p(y) + D log2(levels) (Theis et al. 2016); add the logit transform's Jacobian.
        """
        k = (images.flatten(1) * (levels - 1)).round()
        u = torch.rand(k.shape, generator=generator).to(k.device)
        y = (k + u) / levels
        v, ld_logit = self._to_logit(y)
        log_p = self.log_prob(v) + ld_logit - self.dim * math.log(levels)
        return (-log_p / (self.dim * math.log(2))).mean()

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, temperature: float = 1.0) -> torch.Tensor:
        """n images (n, C, H, W) in [0, 1]: z ~ N(0, T^2 I) -> inverse flow -> sigmoid (undo the logit)."""
        z = torch.randn(n, self.dim, generator=torch.Generator().manual_seed(seed)) * temperature
        v = self.inverse(z.to(next(self.parameters()).device))
        y = (torch.sigmoid(v) - self.alpha) / (1 - 2 * self.alpha)
        return y.clamp(0, 1).view(n, *self.image_shape)


@dataclass
class FlowConfig:
    """A RealNVP over flattened images, and the data's grey levels (for bits/dim)."""

    image_shape: tuple[int, int, int] = (1, 8, 8)
    n_layers: int = 8
    hidden: int = 256
    levels: int = 17  # grey levels of the data: 17 for digits (0..16), 256 for 8-bit pictures
    temperature: float = 1.0  # sampling temperature; Glow (Kingma & Dhariwal 2018) samples at T < 1, but on digits
    # T = 0.8 lost: FID 59 vs 37 at T = 1 (tiny, same checkpoint; 0.9: 46, 0.7: 77)


class FlowModel(nn.Module):
    """The flow being trained and `best`, a copy of it at the best test bits/dim so far (early stopping, kept in the
    checkpoint so a resumed run still knows it; requires_grad stays on for the same reason as `ema_copy`)."""

    def __init__(self, config: FlowConfig) -> None:
        super().__init__()
        self.config = config
        self.flow = RealNVP(tuple(config.image_shape), config.n_layers, config.hidden)
        self.best = copy.deepcopy(self.flow)
        self.register_buffer("best_bpd", torch.tensor(float("inf")))
        self.register_buffer("best_step", torch.tensor(0))

    def train_loss(self, batch: dict) -> tuple[torch.Tensor, int, dict]:
        """The trainer's loss: bits/dim of the dequantized batch (a mean, so weighted by the batch size)."""
        n = batch["x"].shape[0]
        return self.flow.bits_per_dim(batch["x"], self.config.levels) * n, n, {}

    @torch.no_grad()
    def bpd(self, images: torch.Tensor, which: str = "flow") -> float:
        """Bits/dim of images under `flow` or `best`, with a fixed dequantization draw (comparable across calls)."""
        return float(getattr(self, which).bits_per_dim(images, self.config.levels, torch.Generator().manual_seed(0)))

    @torch.no_grad()
    def keep_if_best(self, test_bpd: float, step: int) -> bool:
        """Copy the current flow into `best` when its test bits/dim beat every earlier check."""
        if test_bpd >= float(self.best_bpd):
            return False
        self.best.load_state_dict(self.flow.state_dict())
        self.best_bpd.fill_(test_bpd)
        self.best_step.fill_(step)
        return True

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, **_: object) -> torch.Tensor:
        """n images from the best flow (the current one when no check ran yet)."""
        net = self.best if torch.isfinite(self.best_bpd) else self.flow
        return net.sample(n, seed, temperature=self.config.temperature)


register_family(ModuleFamily("image_flow", FlowModel, FlowConfig))
