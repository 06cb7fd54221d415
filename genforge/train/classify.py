"""Fine-tuning for sequence classification (any model: ids (B, T), mask (B, T) -> logits (B, L)) through the one
loop (`Trainer`), and batched prediction. Used by the encoder lessons (MiniLM vs random init, topic, sentiment)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.errors import DataError
from genforge.train.trainer import TrainConfig, Trainer


def pad_batch(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T) and attention mask (B, T)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids, mask


class ClassifyData:
    """Shuffled micro-batches of (ids, label) examples; `get_batch` is a pure function of (step, micro)."""

    def __init__(self, examples: list[tuple[list[int], int]], batch_size: int, pad_id: int, seed: int,
                 grad_accum: int = 1):
        if not examples:
            raise DataError("classification fine-tune: no labelled examples")
        self.examples, self.batch_size, self.pad_id, self.seed = examples, batch_size, pad_id, seed
        self.grad_accum = grad_accum

    def get_batch(self, step: int, micro: int, rank: int = 0, world: int = 1) -> dict:
        n = len(self.examples)
        start = ((step * self.grad_accum + micro) * world + rank) * self.batch_size
        epoch = start // n
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1009 + epoch)).tolist()
        idx = [perm[(start + i) % n] for i in range(min(self.batch_size, n))]
        ids, mask = pad_batch([self.examples[i][0] for i in idx], self.pad_id)
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.tensor([self.examples[i][1] for i in idx])}


def classify_loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, int, dict]:
    logits = model(batch["input_ids"], batch["attention_mask"])  # (B, L)
    loss = F.cross_entropy(logits.float(), batch["labels"], reduction="sum")
    acc = (logits.argmax(-1) == batch["labels"]).float().mean().item()
    return loss, len(batch["labels"]), {"acc": acc}


def finetune_classifier(model: nn.Module, examples: list[tuple[list[int], int]], cfg: TrainConfig,
                        out_dir: str | Path, pad_id: int, keep_checkpoint: bool = False) -> dict:
    """Train `model` on labelled examples for cfg.max_steps; returns the trainer's summary. The resume checkpoint
    is removed afterwards unless keep_checkpoint (a lesson's many short fine-tunes need no resume state)."""
    data = ClassifyData(examples, cfg.micro_batch, pad_id, cfg.seed, cfg.grad_accum)
    out = Trainer(model, cfg, classify_loss, data, out_dir, name="classify").fit()
    if not keep_checkpoint:
        shutil.rmtree(Path(out_dir) / "checkpoint", ignore_errors=True)
    return out


@torch.no_grad()
def predict(model: nn.Module, seqs: list[list[int]], pad_id: int, batch_size: int = 64) -> torch.Tensor:
    """Predicted label per sequence (N,)."""
    model.eval()
    out = []
    for i in range(0, len(seqs), batch_size):
        ids, mask = pad_batch(seqs[i:i + batch_size], pad_id)
        out.append(model(ids, mask).argmax(-1))
    return torch.cat(out)


def tag_loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Token classification: summed cross-entropy over real positions; batch has input_ids, attention_mask and
    labels (B, T) with -100 on padding."""
    logits = model(batch["input_ids"], batch["attention_mask"])  # (B, T, L)
    y = batch["labels"]
    return (F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-100, reduction="sum"),
            (y != -100).sum(), {})


class TagData:
    """Shuffled micro-batches of (ids, tags) sentences for `tag_loss`."""

    def __init__(self, examples: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int, seed: int):
        if not examples:
            raise DataError("tagging fine-tune: no labelled sentences")
        self.examples, self.batch_size, self.pad_id, self.seed = examples, batch_size, pad_id, seed

    def get_batch(self, step: int, micro: int, rank: int = 0, world: int = 1) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1009 + step * 17 + micro)
        idx = torch.randint(0, len(self.examples), (self.batch_size,), generator=g).tolist()
        ids, mask = pad_batch([self.examples[i][0] for i in idx], self.pad_id)
        labels = torch.full_like(ids, -100)
        for r, i in enumerate(idx):
            tags = self.examples[i][1]
            labels[r, :len(tags)] = torch.tensor(tags)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def finetune_tagger(model: nn.Module, examples: list[tuple[list[int], list[int]]], cfg: TrainConfig,
                    out_dir: str | Path, pad_id: int) -> dict:
    """Train a token tagger (ids (B, T), mask -> (B, T, L)) for cfg.max_steps; no resume checkpoint is kept."""
    out = Trainer(model, cfg, tag_loss, TagData(examples, cfg.micro_batch, pad_id, cfg.seed), out_dir,
                  name="tagger").fit()
    shutil.rmtree(Path(out_dir) / "checkpoint", ignore_errors=True)
    return out
