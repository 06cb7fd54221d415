"""VQ-VAE (van den Oord, Vinyals & Kavukcuoglu 2017, "Neural Discrete Representation Learning", arXiv:1711.00937):
images -> a small grid of discrete tokens -> images, the tokenizer the autoregressive and mask-predict image
models (`ar.py`, `maskgit.py`) generate in.

encoder E: x (B, C, H, W) -> z_e (B, D, h, w); quantizer: each z_e vector is replaced by its nearest codebook
entry e_k (eq. 1-2); decoder: z_q -> x_hat. The quantizer has no gradient, so the decoder's gradient is copied
straight through to the encoder ("straight-through estimator", sec. 3.2: z_q = z_e + sg[e_k - z_e]).
Loss (eq. 3): ||x - x_hat||^2 + ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2 (the last is the commitment loss).
With `ema_decay` > 0 the codebook term is replaced by exponential moving averages of the assigned vectors
(their appendix A.1), and codes nobody uses are restarted at a random encoder output of the batch (a common fix
for codebook collapse; not in the paper) so that small codebooks trained for a few hundred steps stay in use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from genforge.checkpoint import ModuleFamily, register_family
from genforge.errors import ConfigError


@dataclass
class VQConfig:
    """A convolutional VQ-VAE: (C, H, W) images -> (H / 2^downsample, W / 2^downsample) tokens."""

    image_shape: tuple[int, int, int] = (1, 8, 8)
    hidden: int = 64  # conv channels
    code_dim: int = 16  # D, the size of a codebook vector
    codebook_size: int = 64  # K
    downsample: int = 1  # stride-2 convs: 8x8 digits -> 4x4 tokens with 1
    beta: float = 0.25  # commitment weight (the paper's value)
    ema_decay: float = 0.99  # 0: learn the codebook by its loss term instead of moving averages
    restart_below: float = 0.05  # EMA usage (expected assignments per batch) below which a code is restarted

    def __post_init__(self) -> None:
        c, h, w = self.image_shape
        if h % (2 ** self.downsample) or w % (2 ** self.downsample):
            raise ConfigError(f"vq.downsample={self.downsample}: image {h}x{w} must divide by {2 ** self.downsample}")
        if self.codebook_size < 2:
            raise ConfigError(f"vq.codebook_size={self.codebook_size}: must be >= 2")

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) of the token grid."""
        return self.image_shape[1] // 2 ** self.downsample, self.image_shape[2] // 2 ** self.downsample

    @property
    def n_tokens(self) -> int:
        return math.prod(self.grid)


def nearest_code(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row for each vector: z (N, D), codebook (K, D) -> (N,) (eq. 1, squared L2)."""
    d = z.pow(2).sum(1, keepdim=True) - 2 * z @ codebook.T + codebook.pow(2).sum(1)[None]  # (N, K)
    return d.argmin(1)


def straight_through(z_e: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """Forward: z_q; backward: the identity to z_e (sec. 3.2): z_e + sg[z_q - z_e]."""
    return z_e + (z_q - z_e).detach()


class VQVAE(nn.Module):
    """Encoder, codebook (a buffer when EMA-updated, else a parameter) and decoder; see the module docstring."""

    def __init__(self, config: VQConfig) -> None:
        super().__init__()
        self.config = c = config
        ch, hid = c.image_shape[0], c.hidden
        down: list[nn.Module] = [nn.Conv2d(ch, hid, 3, padding=1), nn.ReLU()]
        for _ in range(c.downsample):
            down += [nn.Conv2d(hid, hid, 4, 2, 1), nn.ReLU()]
        self.encoder = nn.Sequential(*down, nn.Conv2d(hid, hid, 3, padding=1), nn.ReLU(), nn.Conv2d(hid, c.code_dim, 1))
        up: list[nn.Module] = [nn.Conv2d(c.code_dim, hid, 3, padding=1), nn.ReLU()]
        for _ in range(c.downsample):
            up += [nn.ConvTranspose2d(hid, hid, 4, 2, 1), nn.ReLU()]
        self.decoder = nn.Sequential(*up, nn.Conv2d(hid, hid, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(hid, ch, 3, padding=1))
        init = torch.randn(c.codebook_size, c.code_dim) * 0.1
        if c.ema_decay > 0:
            self.register_buffer("codebook", init)
            self.register_buffer("ema_count", torch.ones(c.codebook_size))  # N_k of app. A.1
            self.register_buffer("ema_sum", init.clone())  # m_k of app. A.1
        else:
            self.codebook = nn.Parameter(init)

    # ---------------------------------------------------------------- the three parts
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels (B, C, H, W) in [0, 1] -> z_e (B, D, h, w)."""
        return self.encoder(x * 2 - 1)

    def quantize(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z_e (B, D, h, w) -> (z_q (B, D, h, w) without gradient shortcut, token ids (B, h, w)).

        In fp32 even under autocast: bf16 distances can pick a farther code, and the codebook is an fp32 buffer."""
        B, D, h, w = z_e.shape
        flat = z_e.float().permute(0, 2, 3, 1).reshape(-1, D)  # (B*h*w, D)
        with torch.autocast(z_e.device.type, enabled=False):
            ids = nearest_code(flat, self.codebook)
        z_q = self.codebook[ids].view(B, h, w, D).permute(0, 3, 1, 2)
        return z_q, ids.view(B, h, w)

    def decode_latent(self, z_q: torch.Tensor) -> torch.Tensor:
        """z_q (B, D, h, w) -> pixels (B, C, H, W) in [0, 1]."""
        return torch.sigmoid(self.decoder(z_q))

    # ---------------------------------------------------------------- tokens in, tokens out
    @torch.no_grad()
    def tokens(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Images (N, C, H, W) -> token ids (N, h*w) in raster order (row by row)."""
        out = [self.quantize(self.encode(x[i:i + batch_size]))[1].flatten(1) for i in range(0, len(x), batch_size)]
        return torch.cat(out)

    @torch.no_grad()
    def decode_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (N, h*w) in raster order -> images (N, C, H, W) in [0, 1]."""
        h, w = self.config.grid
        z_q = self.codebook[ids.view(-1, h, w)].permute(0, 3, 1, 2)  # (N, D, h, w)
        return self.decode_latent(z_q)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_tokens(self.tokens(x))

    # ---------------------------------------------------------------- training
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """{'x_hat', 'recon', 'codebook', 'commit', 'ids'} for a batch (B, C, H, W); in training mode with EMA on,
        also moves the codebook (a no-grad side effect, after the assignment it follows)."""
        z_e = self.encode(x)
        z_q, ids = self.quantize(z_e)
        x_hat = self.decode_latent(straight_through(z_e, z_q))
        out = {"x_hat": x_hat, "ids": ids, "recon": F.mse_loss(x_hat, x),
               "commit": F.mse_loss(z_e, z_q.detach()),  # beta ||z_e - sg[e]||^2 of eq. 3
               "codebook": F.mse_loss(z_q, z_e.detach())}  # ||sg[z_e] - e||^2 of eq. 3 (0 grad with EMA: a buffer)
        if self.training and self.config.ema_decay > 0:
            self._ema_update(z_e.detach(), ids)
        return out

    @torch.no_grad()
    def _ema_update(self, z_e: torch.Tensor, ids: torch.Tensor) -> None:
        """N_k <- g N_k + (1-g) n_k; m_k <- g m_k + (1-g) sum z_e; e_k = m_k / N_k (app. A.1, Laplace-smoothed);
        codes whose N_k fell below `restart_below` restart at a random z_e of this batch (global RNG: resumable)."""
        with torch.autocast(z_e.device.type, enabled=False):  # codebook statistics stay fp32 under bf16 autocast
            self._ema_update_fp32(z_e.float(), ids)

    def _ema_update_fp32(self, z_e: torch.Tensor, ids: torch.Tensor) -> None:
        c = self.config
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, c.code_dim)  # (N, D)
        onehot = F.one_hot(ids.flatten(), c.codebook_size).type_as(flat)  # (N, K)
        self.ema_count.mul_(c.ema_decay).add_(onehot.sum(0), alpha=1 - c.ema_decay)
        self.ema_sum.mul_(c.ema_decay).add_(onehot.T @ flat, alpha=1 - c.ema_decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + 1e-5) / (n + c.codebook_size * 1e-5) * n
        self.codebook.copy_(self.ema_sum / smoothed[:, None])
        dead = self.ema_count < c.restart_below
        if dead.any():
            pick = torch.randint(0, flat.shape[0], (int(dead.sum()),)).to(flat.device)
            self.codebook[dead] = flat[pick]
            self.ema_sum[dead] = flat[pick]
            self.ema_count[dead] = 1.0

    def train_loss(self, batch: dict) -> tuple[torch.Tensor, int, dict]:
        """The trainer's loss: eq. 3 summed over the batch (its codebook term only without EMA)."""
        out = self(batch["x"])
        loss = out["recon"] + self.config.beta * out["commit"]
        if self.config.ema_decay <= 0:
            loss = loss + out["codebook"]
        n = batch["x"].shape[0]
        return loss * n, n, {"recon": out["recon"].item()}

    @torch.no_grad()
    def usage(self, x: torch.Tensor) -> dict[str, float]:
        """Reconstruction MSE, codebook perplexity exp(H(p)) of the token histogram and the share of codes used."""
        ids = self.tokens(x)
        p = torch.bincount(ids.flatten(), minlength=self.config.codebook_size).float()
        p = p / p.sum()
        nz = p[p > 0]
        return {"recon_mse": float(F.mse_loss(self.decode_tokens(ids), x)),
                "perplexity": float(torch.exp(-(nz * nz.log()).sum())), "codes_used": float((p > 0).float().mean())}

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, **_: object) -> torch.Tensor:
        """A VQ-VAE alone does not generate: this decodes uniformly random tokens, the baseline of a prior that
        learned nothing (`ar.py` and `maskgit.py` are the priors)."""
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, self.config.codebook_size, (n, self.config.n_tokens), generator=g)
        return self.decode_tokens(ids.to(self.codebook.device))


register_family(ModuleFamily("image_vq", VQVAE, VQConfig))


@dataclass
class TokenPriorConfig:
    """What a prior over a VQ-VAE's tokens shares (AR in ar.py, MaskGIT in maskgit.py): the VQ-VAE it reads (its
    config), the transformer's size, the classes and the share of class prefixes dropped for guidance."""

    vq: VQConfig = field(default_factory=VQConfig)
    depth: int = 2
    width: int = 64
    head_dim: int = 16
    num_classes: int = 10  # 0: unconditional
    p_uncond: float = 0.1  # share of class prefixes replaced by the null class in training

    def __post_init__(self) -> None:
        if isinstance(self.vq, dict):  # read back from genforge.json
            self.vq = VQConfig(**self.vq)
