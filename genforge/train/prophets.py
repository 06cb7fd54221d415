"""Training speculative-decoding prophets that need it: Medusa-style multi-token heads (Cai et al. 2024) on a frozen
target. Head i learns to predict, from the target's final hidden state at position t, the token at t + i + 2
(the target's own head predicts t + 1). The target is not updated (Medusa-1), so its greedy output is unchanged."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.infer.speculative import MultiTokenHeads
from genforge.train.trainer import TrainConfig, Trainer


class _Windows:
    def __init__(self, windows: torch.Tensor, batch: int, seed: int):
        self.windows, self.batch, self.seed = windows, batch, seed

    def get_batch(self, step: int, micro: int, rank: int = 0, world: int = 1) -> dict:
        g = torch.Generator().manual_seed(self.seed * 7 + step * 131 + micro)
        return {"x": self.windows[torch.randint(0, len(self.windows), (self.batch,), generator=g)]}


def heads_loss(target: nn.Module, heads: MultiTokenHeads):
    """loss_fn(heads, batch) for the trainer: summed cross-entropy of every head on its offset."""
    def loss_fn(model: nn.Module, batch: dict) -> tuple[torch.Tensor, int, dict]:
        x = batch["x"]  # (B, T)
        with torch.no_grad():
            h = target(x, return_hidden=True)  # (B, T, C), frozen
        total, count = torch.zeros(()), 0
        for i, hi in enumerate(model(h)):  # hi (B, T, C)
            off = i + 2
            if x.shape[1] <= off:
                break
            logits = target.lm_head(hi[:, :-off])  # (B, T-off, V)
            total = total + F.cross_entropy(logits.flatten(0, 1).float(), x[:, off:].flatten(), reduction="sum")
            count += x[:, off:].numel()
        return total, count, {}
    return loss_fn


def train_heads(target: nn.Module, windows: torch.Tensor, cfg: TrainConfig, out_dir: str | Path,
                k: int = 3) -> MultiTokenHeads:
    """Train k heads over token windows (N, T) of the target's own data; the target's weights stay frozen."""
    heads = MultiTokenHeads(target.config.width, k)
    flags = [p.requires_grad for p in target.parameters()]
    for p in target.parameters():
        p.requires_grad_(False)
    try:
        target.eval()
        Trainer(heads, cfg, heads_loss(target, heads), _Windows(windows, cfg.micro_batch, cfg.seed), out_dir,
                name="medusa-heads").fit()
    finally:
        for p, f in zip(target.parameters(), flags):
            p.requires_grad_(f)
    return heads.eval()
