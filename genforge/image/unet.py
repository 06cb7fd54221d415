"""Noise predictors eps_theta(x_t, t, c) for diffusion: an MLP for 8x8 digits and a small U-Net for 16x16 shapes.

Both embed the timestep (sinusoidal, as Ho et al. 2020 take from the Transformer) and a condition (a class id or
a caption, through `Conditioner`), add the two and inject the sum into every block. The condition has a "null"
value (class id `num_classes`, or an all-padding caption) so one network learns both eps(x, t, c) and
eps(x, t, null) for classifier-free guidance (Ho & Salimans 2021); `guided_eps` combines them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genforge.errors import ConfigError
from genforge.image.text import TextEncoder


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) integer or float timesteps -> (B, dim) sinusoidal features (Vaswani et al. 2017, sec. 3.5)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return emb if dim % 2 == 0 else torch.nn.functional.pad(emb, (0, 1))


class Conditioner(nn.Module):
    """cond -> (B, dim). kind 'none' (always zeros), 'class' (ids (B,), id num_classes = null) or 'text'
    (caption ids (B, L), all padding = null)."""

    def __init__(self, kind: str, dim: int, num_classes: int = 0, vocab_size: int = 0, max_len: int = 12) -> None:
        super().__init__()
        if kind not in ("none", "class", "text"):
            raise ConfigError(f"cond={kind!r}: use 'none', 'class' or 'text'")
        if kind == "class" and num_classes < 1:
            raise ConfigError("cond='class' needs num_classes >= 1")
        if kind == "text" and vocab_size < 2:
            raise ConfigError("cond='text' needs vocab_size (the caption tokenizer's length)")
        self.kind, self.dim, self.num_classes, self.max_len = kind, dim, num_classes, max_len
        if kind == "class":
            self.table = nn.Embedding(num_classes + 1, dim)  # the extra row is the null class
        elif kind == "text":
            self.text = TextEncoder(vocab_size, dim)

    def null(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """The unconditional input for a batch: null class ids, empty captions, or None."""
        if self.kind == "class":
            return torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        if self.kind == "text":
            return torch.zeros(batch, self.max_len, dtype=torch.long, device=device)
        return None

    def forward(self, cond: torch.Tensor | None, batch: int, device: torch.device | str) -> torch.Tensor:
        if self.kind == "none":
            return torch.zeros(batch, self.dim, device=device)
        if cond is None:
            cond = self.null(batch, device)
        return self.table(cond) if self.kind == "class" else self.text(cond)

    def drop(self, cond: torch.Tensor | None, p: float, generator: torch.Generator | None = None
             ) -> torch.Tensor | None:
        """Replace each example's condition by null with probability p (CFG training, Ho & Salimans 2021 alg. 1)."""
        if cond is None or self.kind == "none" or p <= 0:
            return cond
        keep = torch.rand(cond.shape[0], generator=generator) >= p  # (B,)
        null = self.null(cond.shape[0], cond.device)
        shape = (-1,) + (1,) * (cond.dim() - 1)
        return torch.where(keep.to(cond.device).view(shape), cond, null)


class Embedder(nn.Module):
    """emb = MLP(sinusoid(t)) + Conditioner(c): the (B, dim) vector every block of a denoiser sees."""

    def __init__(self, dim: int, cond: str = "none", num_classes: int = 0, vocab_size: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.t_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.conditioner = Conditioner(cond, dim, num_classes, vocab_size)

    def forward(self, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return self.t_mlp(timestep_embedding(t, self.dim)) + self.conditioner(cond, t.shape[0], t.device)


class MLPDenoiser(nn.Module):
    """eps_theta for small images flattened to vectors: residual MLP blocks, each told the embedding."""

    def __init__(self, image_shape: tuple[int, int, int], hidden: int = 512, depth: int = 3, emb_dim: int = 128,
                 cond: str = "none", num_classes: int = 0, vocab_size: int = 0) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        n = math.prod(image_shape)
        self.embed = Embedder(emb_dim, cond, num_classes, vocab_size)
        self.inp = nn.Linear(n, hidden)
        self.blocks = nn.ModuleList(nn.ModuleDict({"norm": nn.LayerNorm(hidden), "emb": nn.Linear(emb_dim, hidden),
                                                   "lin": nn.Linear(hidden, hidden)}) for _ in range(depth))
        self.out = nn.Linear(hidden, n)
        nn.init.zeros_(self.out.weight)  # start by predicting eps = 0: the loss starts at E||eps||^2 = 1
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W), t (B,) -> eps (B, C, H, W)."""
        emb = self.embed(t, cond)  # (B, E)
        h = self.inp(x.flatten(1))  # (B, hidden)
        for b in self.blocks:
            h = h + b["lin"](torch.nn.functional.silu(b["norm"](h) + b["emb"](emb)))
        return self.out(torch.nn.functional.silu(h)).view(x.shape)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the embedding added in between (the DDPM U-Net block, Ho et al. 2020 app. B)."""

    def __init__(self, cin: int, cout: int, emb_dim: int) -> None:
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(min(8, cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.e = nn.Linear(emb_dim, cout)
        self.n2, self.c2 = nn.GroupNorm(min(8, cout), cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.c1(torch.nn.functional.silu(self.n1(x)))
        h = h + self.e(emb)[:, :, None, None]
        h = self.c2(torch.nn.functional.silu(self.n2(h)))
        return self.skip(x) + h


class TinyUNet(nn.Module):
    """A two-level U-Net: (C, H, W) -> base ch at H -> 2*base ch at H/2 -> back up with a skip. H must be even."""

    def __init__(self, in_ch: int = 3, base: int = 32, emb_dim: int = 128, cond: str = "none", num_classes: int = 0,
                 vocab_size: int = 0) -> None:
        super().__init__()
        self.embed = Embedder(emb_dim, cond, num_classes, vocab_size)
        self.inp = nn.Conv2d(in_ch, base, 3, padding=1)
        self.down1 = ResBlock(base, base, emb_dim)
        self.pool = nn.Conv2d(base, 2 * base, 3, stride=2, padding=1)
        self.down2 = ResBlock(2 * base, 2 * base, emb_dim)
        self.mid = ResBlock(2 * base, 2 * base, emb_dim)
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(2 * base, base, 3, padding=1))
        self.up1 = ResBlock(2 * base, base, emb_dim)
        self.out = nn.Sequential(nn.GroupNorm(min(8, base), base), nn.SiLU(), nn.Conv2d(base, in_ch, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W), t (B,) -> eps (B, C, H, W)."""
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            raise ConfigError(f"TinyUNet needs even height and width, got {tuple(x.shape[-2:])}")
        emb = self.embed(t, cond)
        h1 = self.down1(self.inp(x), emb)  # (B, base, H, W)
        h = self.down2(self.pool(h1), emb)  # (B, 2base, H/2, W/2)
        h = self.mid(h, emb)
        h = self.up1(torch.cat([self.up(h), h1], dim=1), emb)  # (B, base, H, W)
        return self.out(h)


def guided_eps(model: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None,
               scale: float) -> torch.Tensor:
    """Classifier-free guidance: eps_u + scale * (eps_c - eps_u) (Ho & Salimans 2021, eq. 6 with w = scale - 1).

    scale 0 is the unconditional model, 1 the conditional one, > 1 pushes samples toward the condition. The two
    passes run as one batch of 2B.
    """
    if cond is None or scale == 1.0 or model.embed.conditioner.kind == "none":
        return model(x, t, cond)
    conditioner = model.embed.conditioner
    null = conditioner.null(x.shape[0], x.device)
    eps = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([null, cond]))
    eps_u, eps_c = eps.chunk(2)
    return eps_u + scale * (eps_c - eps_u)
