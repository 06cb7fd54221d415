"""Linear probes per layer, trained on the shared Trainer, with a shuffled-label control task.

A probe is one linear map from a layer's residual vector (standardised on the training items) to a label
(classification, cross-entropy) or to numbers (regression, squared error). High probe accuracy alone can
be the probe's capacity, not the model's knowledge: Hewitt & Liang (2019) pair every probe with a *control
task* whose labels carry no information about the input. Here the control shuffles the labels over the
items (same label frequencies, no link to the entity) and trains the same probe on the same features; the
claim "layer l encodes X" is then probe accuracy on held-out items minus the control's, with an interval.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.errors import DataError
from genforge.train.trainer import TrainConfig, Trainer


def _probe_train_defaults() -> TrainConfig:
    return TrainConfig(max_steps=150, micro_batch=64, lr=1e-2, warmup_steps=10, weight_decay=0.1, eval_every=0,
                       ckpt_every=0, log_every=50, resume=False, progress=False)


@dataclass
class ProbeConfig:
    """How each probe is trained (the shared Trainer's settings)."""

    train: TrainConfig = field(default_factory=_probe_train_defaults)
    l2: float = 1e-3  # ridge penalty on the probe's weights, per item (keeps few-item regressions sane)
    pca: int = 0  # > 0: read only the top-k principal components of the training items' features (few items)


class LinearProbe(nn.Module):
    """y = (W (x - mean) / std + b) * y_std + y_mean: (N, C) -> (N, K) logits (y_std 1, y_mean 0) or values.

    Inputs and regression targets are standardised on the training items, so one learning rate and one
    ridge penalty suit features and targets of any scale."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, out_dim: int, y_mean: torch.Tensor | None = None,
                 y_std: torch.Tensor | None = None, proj: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.register_buffer("y_mean", torch.zeros(out_dim) if y_mean is None else y_mean)
        self.register_buffer("y_std", torch.ones(out_dim) if y_std is None else y_std)
        # (C, k) projection onto principal components, or the identity
        self.register_buffer("proj", torch.eye(mean.numel()) if proj is None else proj)
        self.linear = nn.Linear(self.proj.shape[1], out_dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def standardised(self, x: torch.Tensor) -> torch.Tensor:
        """The probe's output before the targets' scale is put back (logits for classes)."""
        return self.linear(((x - self.mean) / self.std) @ self.proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.standardised(x) * self.y_std + self.y_mean


class _Items:
    """The Trainer's data source: a random minibatch of (features, labels), a pure function of the step."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch: int, seed: int):
        self.x, self.y, self.batch, self.seed = x, y, min(batch, len(x)), seed

    def get_batch(self, step: int, micro: int, rank: int, world: int):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 7919 + micro * 31 + rank)
        idx = torch.randperm(len(self.x), generator=g)[:self.batch]
        return self.x[idx], self.y[idx]


def train_probe(x: torch.Tensor, y: torch.Tensor, cfg: ProbeConfig | None = None, *, classes: int = 0,
                out_dir: str | Path | None = None, seed: int = 0) -> LinearProbe:
    """A linear probe from features x (N, C) to labels y: class ids (N,) when classes > 0, else targets (N, K).

    Trained with the shared `Trainer` (AdamW, warmup + cosine); out_dir holds its checkpoint (a temp folder by
    default, removed afterwards)."""
    cfg = cfg or ProbeConfig()
    if len(x) != len(y) or len(x) < 2:
        raise DataError(f"train_probe: need >= 2 items with one label each, got {len(x)} features, {len(y)} labels")
    x = x.float()
    y = y.long() if classes else y.float().reshape(len(y), -1)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    proj = None
    if cfg.pca:  # top-k right singular vectors of the standardised training features: (C, k)
        proj = torch.linalg.svd((x - mean) / std, full_matrices=False)[2][:min(cfg.pca, len(x))].T.contiguous()
    if classes:
        probe = LinearProbe(mean, std, classes, proj=proj)
    else:
        probe = LinearProbe(mean, std, y.shape[1], y.mean(0), y.std(0).clamp(min=1e-6), proj=proj)
    l2 = cfg.l2

    def loss_fn(model: nn.Module, batch):
        xb, yb = batch
        out = model.standardised(xb)
        loss = (F.cross_entropy(out, yb, reduction="sum") if classes
                else F.mse_loss(out, (yb - model.y_mean) / model.y_std, reduction="sum"))
        # ridge term, scaled per item so that it does not depend on the batch size
        loss = loss + l2 * len(xb) * model.linear.weight.pow(2).sum()
        return loss, len(xb), {}

    tc = TrainConfig(**{**cfg.train.__dict__, "seed": cfg.train.seed + seed})
    with tempfile.TemporaryDirectory(prefix="probe-") as tmp:
        Trainer(probe, tc, loss_fn, _Items(x, y, tc.micro_batch, seed), out_dir or tmp, name="probe").fit()
    return probe.eval()


@dataclass
class LayerResult:
    """One layer's held-out scores per test item, for the real labels and for the shuffled-label control."""

    layer: int
    real: list[float]  # classification: 1.0 correct / 0.0 wrong; regression: per-item R^2 share (see r2_items)
    control: list[float]
    train_real: float  # training-set score (accuracy or R^2): what the probe can fit
    train_control: float


def r2_items(pred: torch.Tensor, y: torch.Tensor, y_ref_mean: torch.Tensor) -> list[float]:
    """Per-item shares of R^2: r_i = 1 - se_i / mean_j(sst_j), so mean(r_i) = 1 - SSE/SST (the usual R^2)."""
    se = (pred - y).pow(2).sum(-1)
    sst = (y - y_ref_mean).pow(2).sum(-1).mean().clamp(min=1e-12)
    return (1 - se / sst).tolist()


def _score(probe: LinearProbe, x: torch.Tensor, y: torch.Tensor, classes: int, y_mean: torch.Tensor) -> list[float]:
    with torch.no_grad():
        out = probe(x.float())
    if classes:
        return (out.argmax(-1) == y).float().tolist()
    return r2_items(out, y.float().reshape(len(y), -1), y_mean)


def shuffled(y: torch.Tensor, seed: int) -> torch.Tensor:
    """The control task's labels: y permuted over the items (same label counts, no link to the input)."""
    g = torch.Generator().manual_seed(10_007 + seed)
    return y[torch.randperm(len(y), generator=g)]


def probe_layers(feats: torch.Tensor, y: torch.Tensor, train_idx: Sequence[int], test_idx: Sequence[int], *,
                 classes: int = 0, cfg: ProbeConfig | None = None, seed: int = 0) -> list[LayerResult]:
    """Train a probe on every layer's features (L, N, C) for labels y (N,) or (N, K) and its control twin.

    The control permutes the labels of all N items once; its probe trains on the permuted train labels and is
    scored against the permuted test labels."""
    y_ctl = shuffled(y, seed)
    tr, te = torch.as_tensor(list(train_idx)), torch.as_tensor(list(test_idx))
    out = []
    for layer in range(feats.shape[0]):
        x = feats[layer]
        res = {}
        for name, labels in (("real", y), ("control", y_ctl)):
            ymean = labels[tr].float().reshape(len(tr), -1).mean(0)
            p = train_probe(x[tr], labels[tr], cfg, classes=classes, seed=seed + layer)
            res[name] = (_score(p, x[te], labels[te], classes, ymean), float(np.mean(_score(p, x[tr], labels[tr],
                                                                                             classes, ymean))))
        out.append(LayerResult(layer, res["real"][0], res["control"][0], res["real"][1], res["control"][1]))
    return out


def cross_validated(feats: torch.Tensor, y: torch.Tensor, folds: int, *, classes: int = 0,
                    cfg: ProbeConfig | None = None, seed: int = 0, shuffles: int = 1) -> list[LayerResult]:
    """`probe_layers` with k-fold cross-validation: every item is predicted once, by a probe that never saw it
    (for few items, e.g. a world's 40 towns); R^2 is computed over all out-of-fold predictions against the
    mean of all targets. The control's per-item scores are averaged over `shuffles` permutations (one
    permutation of few items is a noisy baseline). Train scores are averaged over folds."""
    n = len(y)
    if folds < 2 or folds > n:
        raise DataError(f"cross_validated: folds must be in [2, {n}], got {folds}")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g).tolist()
    parts = [order[k::folds] for k in range(folds)]
    out = []
    for layer in range(feats.shape[0]):
        x = feats[layer]

        def run(labels: torch.Tensor, x: torch.Tensor = x, layer: int = layer) -> tuple[list[float], float]:
            preds: list[torch.Tensor | None] = [None] * n
            train_score = 0.0
            for k, test in enumerate(parts):
                held = set(test)
                tr, te = torch.tensor([i for i in order if i not in held]), torch.tensor(test)
                ymean = labels[tr].float().reshape(len(tr), -1).mean(0)
                p = train_probe(x[tr], labels[tr], cfg, classes=classes, seed=seed + 101 * k + layer)
                train_score += float(np.mean(_score(p, x[tr], labels[tr], classes, ymean))) / folds
                with torch.no_grad():
                    for i, o in zip(test, p(x[te].float())):
                        preds[i] = o
            pred = torch.stack(preds)  # (n, K)
            if classes:
                return (pred.argmax(-1) == labels).float().tolist(), train_score
            yy = labels.float().reshape(n, -1)
            return r2_items(pred, yy, yy.mean(0)), train_score

        real, tr_real = run(y)
        ctl_runs = [run(shuffled(y, seed + s)) for s in range(max(1, shuffles))]
        ctl = np.mean([c for c, _ in ctl_runs], axis=0).tolist()
        out.append(LayerResult(layer, real, ctl, tr_real, float(np.mean([t for _, t in ctl_runs]))))
    return out
