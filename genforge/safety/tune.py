"""Short fine-tunes the safety lessons share (unlearning, debiasing, CDA), on the one training loop.

`SeqBatches` serves padded (input_ids, labels, attention_mask) micro-batches of token sequences to
`genforge.train.trainer.Trainer`; `finetune` runs a few steps of any loss in a scratch folder and removes it.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from genforge.train.losses import IGNORE
from genforge.train.trainer import TrainConfig, Trainer


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, targets_from: Sequence[int] | None = None) -> dict:
    """Right-padded (B, T) input_ids, next-token labels (IGNORE on padding and, per row, before
    targets_from[i] - 1, so only the continuation is learned) and attention_mask."""
    T = max(len(s) for s in seqs) - 1
    x = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    y = torch.full((len(seqs), T), IGNORE, dtype=torch.long)
    m = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        n = len(s) - 1
        x[i, :n] = torch.tensor(s[:-1])
        y[i, :n] = torch.tensor(s[1:])
        m[i, :n] = 1
        if targets_from is not None:
            y[i, :max(0, targets_from[i] - 1)] = IGNORE
    return {"input_ids": x, "labels": y, "attention_mask": m}


class SeqBatches:
    """Micro-batches of sequences drawn with a seeded shuffle; `extra(idx)` adds per-row fields (e.g. reference
    log-probs for NPO). Each sequence may carry where its learned continuation starts (`targets_from`)."""

    def __init__(self, seqs: Sequence[Sequence[int]], micro_batch: int, pad_id: int, seed: int = 0,
                 targets_from: Sequence[int] | None = None, extra: Callable[[list[int]], dict] | None = None):
        self.seqs, self.mb, self.pad, self.seed = list(seqs), micro_batch, pad_id, seed
        self.targets_from, self.extra = targets_from, extra

    def get_batch(self, step: int, micro: int, rank: int, world: int) -> dict:
        rng = random.Random(f"{self.seed}-{step}-{micro}-{rank}")
        idx = [rng.randrange(len(self.seqs)) for _ in range(self.mb)]
        tf = [self.targets_from[i] for i in idx] if self.targets_from is not None else None
        b = pad_batch([self.seqs[i] for i in idx], self.pad, tf)
        if self.extra is not None:
            b.update(self.extra(idx))
        return b


def finetune(model: nn.Module, loss_fn: Callable[[nn.Module, Any], tuple], data: Any, steps: int, lr: float,
             seed: int = 0, work_dir: str | Path | None = None, name: str = "safety") -> dict:
    """`steps` AdamW steps of loss_fn on `model` in place (no checkpoints kept); returns the trainer's metrics."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work_dir))
    try:
        cfg = TrainConfig(max_steps=steps, micro_batch=getattr(data, "mb", 8), lr=lr, warmup_steps=min(5, steps),
                          min_lr_ratio=1.0, weight_decay=0.0, eval_every=0, ckpt_every=0, log_every=max(1, steps),
                          seed=seed, device="cpu", resume=False, progress=False)
        out = Trainer(model, cfg, loss_fn, data, tmp, name=name).fit()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    model.eval()
    return out


@torch.inference_mode()
def continuation_logprob(model: nn.Module, seqs: Sequence[Sequence[int]], targets_from: Sequence[int],
                         pad_id: int = 0, batch: int = 32) -> list[float]:
    """Sum of log p(seq[t] | seq[:t]) over t >= targets_from[i], per sequence."""
    out: list[float] = []
    model.eval()
    for i in range(0, len(seqs), batch):
        b = pad_batch(seqs[i:i + batch], pad_id, targets_from[i:i + batch])
        logp = torch.log_softmax(model(b["input_ids"], attention_mask=b["attention_mask"]).float(), -1)
        mask = b["labels"] != IGNORE
        lp = logp.gather(-1, b["labels"].clamp(min=0)[..., None]).squeeze(-1) * mask  # (B, T)
        out += lp.sum(-1).tolist()
    return out
