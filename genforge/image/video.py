"""A tiny video model: autoregressive over frames, with factorised (spatial, then temporal) or full 3-D attention.

What it is (our choice among the issue's options): a next-frame predictor over patch tokens. A clip (B, T, C, H, W)
is cut into S = (H/p)(W/p) patches per frame, N = T*S tokens; the transformer reads frames 1..t and predicts
frame t+1 (mean-squared error, teacher forcing over all t at once), and sampling rolls out: given the first
`context` frames, predict the next, append it, repeat. The world's clips are deterministic given two frames (a
shape moving at a constant velocity and bouncing), so "quality" is the error against the true future and the
temporal consistency is how far the predicted shape's centroid drifts from the true trajectory.

The two attention layouts the lesson compares (TimeSformer's "divided space-time" vs "joint space-time",
Bertasius, Wang & Torresani 2021; Video Diffusion Models' factorised space-time U-Net, Ho et al. 2022):
- full 3-D: every token attends to all tokens of the current and earlier frames: a (N x N) score matrix,
  O(T^2 S^2 C) per layer;
- factorised: attention within each frame over its S patches (S x S, T times), then, at each patch position,
  causal attention across the T frames (T x T, S times): O(T S^2 C + S T^2 C), at the price of a second set of
  projections. `flops()` counts both exactly (matrix multiplies, 2 FLOPs per multiply-add).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from genforge.checkpoint import ModuleFamily, register_family
from genforge.errors import ConfigError


@dataclass
class VideoConfig:
    """Clip shape, patching and the transformer; `attention` is 'factorised' or 'full'."""

    frames: int = 8  # T
    channels: int = 3
    image_size: int = 16
    patch: int = 2  # p: a token is a p x p patch (S = (image_size / p)^2 per frame)
    width: int = 32  # C
    depth: int = 2
    n_head: int = 2
    attention: str = "factorised"
    context: int = 2  # frames given when sampling (two fix the velocity of a constant-speed shape)

    def __post_init__(self) -> None:
        if self.attention not in ("factorised", "full"):
            raise ConfigError(f"video.attention={self.attention!r}: use 'factorised' or 'full'")
        if self.image_size % self.patch:
            raise ConfigError(f"video.patch={self.patch} must divide image_size={self.image_size}")
        if self.width % self.n_head:
            raise ConfigError(f"video.width={self.width} must be a multiple of n_head={self.n_head}")
        if not 1 <= self.context < self.frames:
            raise ConfigError(f"video.context={self.context}: must be in [1, frames)")

    @property
    def side(self) -> int:
        return self.image_size // self.patch

    @property
    def patches(self) -> int:  # S
        return self.side ** 2

    @property
    def patch_dim(self) -> int:
        return self.channels * self.patch ** 2


class Attention(nn.Module):
    """Multi-head scaled dot-product attention (Vaswani et al. 2017, eq. 1) over the middle axis of (B', L, C),
    with an optional boolean mask (L, L), True = may attend."""

    def __init__(self, width: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, L, C = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)  # (B', H, L, Dh)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # softmax(q k^T / sqrt(Dh)) v
        return self.out(y.transpose(1, 2).reshape(B, L, C))


def block_causal_mask(frames: int, patches: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(T*S, T*S) boolean: a token of frame t may attend to every token of frames <= t (frame-major order)."""
    f = torch.arange(frames, device=device).repeat_interleave(patches)  # (N,) frame of each token
    return f[:, None] >= f[None, :]


class Block(nn.Module):
    """Pre-norm residual block on tokens (B, T, S, C): full 3-D attention or spatial-then-temporal, then an MLP."""

    def __init__(self, cfg: VideoConfig) -> None:
        super().__init__()
        self.kind, C = cfg.attention, cfg.width
        self.norm1 = nn.LayerNorm(C)
        self.attn = Attention(C, cfg.n_head)  # full: over all T*S tokens; factorised: within a frame
        if self.kind == "factorised":
            self.norm_t = nn.LayerNorm(C)
            self.attn_t = Attention(C, cfg.n_head)  # across frames at one patch position
        self.norm2 = nn.LayerNorm(C)
        self.mlp = nn.Sequential(nn.Linear(C, 4 * C), nn.GELU(), nn.Linear(4 * C, C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, S, C = x.shape
        if self.kind == "full":
            mask = block_causal_mask(T, S, x.device)
            x = x + self.attn(self.norm1(x).reshape(B, T * S, C), mask).view(B, T, S, C)
        else:
            # spatial: each frame's S patches attend to each other (B*T sequences of length S)
            x = x + self.attn(self.norm1(x).reshape(B * T, S, C)).view(B, T, S, C)
            # temporal: each patch position attends to itself in earlier frames (B*S sequences of length T)
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            h = self.norm_t(x).transpose(1, 2).reshape(B * S, T, C)
            x = x + self.attn_t(h, causal).view(B, S, T, C).transpose(1, 2)
        return x + self.mlp(self.norm2(x))


class VideoModel(nn.Module):
    """Clips (B, T, C, H, W) in [0, 1] -> predicted next frames (B, T, C, H, W): output t is frame t+1."""

    def __init__(self, config: VideoConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embed = nn.Linear(c.patch_dim, c.width)
        self.pos_space = nn.Parameter(torch.randn(c.patches, c.width) * 0.02)
        self.pos_time = nn.Parameter(torch.randn(c.frames, c.width) * 0.02)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.width)
        self.head = nn.Linear(c.width, c.patch_dim)

    def to_patches(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) -> (B, T, S, C*p*p), patches in raster order."""
        c, (B, T, ch) = self.config, clips.shape[:3]
        p, s = c.patch, c.side
        x = clips.reshape(B, T, ch, s, p, s, p).permute(0, 1, 3, 5, 2, 4, 6)  # (B, T, s, s, C, p, p)
        return x.reshape(B, T, s * s, ch * p * p)

    def from_patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, S, C*p*p) -> (B, T, C, H, W)."""
        c = self.config
        B, T = x.shape[:2]
        p, s, ch = c.patch, c.side, c.channels
        x = x.reshape(B, T, s, s, ch, p, p).permute(0, 1, 4, 2, 5, 3, 6)  # (B, T, C, s, p, s, p)
        return x.reshape(B, T, ch, s * p, s * p)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        T = clips.shape[1]
        patches = self.to_patches(clips)  # (B, T, S, P)
        x = self.embed(patches * 2 - 1)  # (B, T, S, C)
        x = x + self.pos_space[None, None] + self.pos_time[None, :T, None]
        for blk in self.blocks:
            x = blk(x)
        # measured: predicting the frame itself (sigmoid) tracked the motion better in 300 steps (centroid drift 2.7
        # px) than predicting a change of the current frame (3.4 px: it settles on copying the frame)
        return self.from_patches(torch.sigmoid(self.head(self.norm(x))))

    def loss(self, batch: dict) -> tuple[torch.Tensor, int, dict]:
        """Teacher-forced next-frame MSE over frames 2..T, summed over the batch."""
        clips = batch["x"]  # (B, T, C, H, W)
        pred = self(clips[:, :-1])  # predictions of frames 1..T-1 from the frames before each
        per_clip = (pred - clips[:, 1:]).pow(2).flatten(1).mean(1)
        return per_clip.sum(), clips.shape[0], {}

    @torch.no_grad()
    def rollout(self, context: torch.Tensor, frames: int | None = None) -> torch.Tensor:
        """Given the first frames (B, t0, C, H, W), predict the rest one frame per forward: (B, T, C, H, W)."""
        total = frames or self.config.frames
        clip = context
        while clip.shape[1] < total:
            clip = torch.cat([clip, self(clip)[:, -1:]], 1)
        return clip

    def sample(self, n: int, seed: int = 0, **_: object) -> torch.Tensor:  # noqa: ARG002 - the family API
        raise ConfigError("a video model continues clips (rollout of given frames); it does not sample from noise")


def flops(cfg: VideoConfig, frames: int | None = None) -> int:
    """Matrix-multiply FLOPs of one forward over a clip of `frames` frames (2 per multiply-add; norms, softmax and
    activations left out: they are O(N C), not the terms that differ)."""
    T, S, C, P = frames or cfg.frames, cfg.patches, cfg.width, cfg.patch_dim
    N = T * S

    def attn(seqs: int, length: int) -> int:
        proj = 2 * seqs * length * C * 4 * C  # q, k, v and the output projection
        scores = 2 * 2 * seqs * length * length * C  # q k^T and (softmax) v, over all heads
        return proj + scores

    per_block = 2 * 2 * N * C * 4 * C  # MLP up and down
    per_block += attn(1, N) if cfg.attention == "full" else attn(T, S) + attn(S, T)
    return 2 * N * P * C + cfg.depth * per_block + 2 * N * C * P


def centroids(frames: torch.Tensor, rel_threshold: float = 0.5) -> torch.Tensor:
    """(B, T, C, H, W) -> (B, T, 2) (row, col) centre of mass of the pixels brighter than `rel_threshold` x the
    frame's brightest (in any channel; the background is black): relative, so a predicted shape that fades or
    blurs is still located; an all-black frame gets the image centre."""
    B, T, _, H, W = frames.shape
    m = frames.amax(2)  # (B, T, H, W)
    top = m.flatten(2).amax(-1)[..., None, None]  # (B, T, 1, 1)
    w = torch.where((m > rel_threshold * top) & (top > 0.05), m, torch.zeros_like(m))
    rows = torch.arange(H, dtype=frames.dtype)[:, None].expand(H, W)
    cols = torch.arange(W, dtype=frames.dtype)[None, :].expand(H, W)
    mass = w.sum((2, 3))
    r = (w * rows).sum((2, 3)) / mass.clamp(min=1e-6)
    c = (w * cols).sum((2, 3)) / mass.clamp(min=1e-6)
    empty = mass < 1e-6
    r = torch.where(empty, torch.full_like(r, (H - 1) / 2), r)
    c = torch.where(empty, torch.full_like(c, (W - 1) / 2), c)
    return torch.stack([r, c], -1)


register_family(ModuleFamily("image_video", VideoModel, VideoConfig))
