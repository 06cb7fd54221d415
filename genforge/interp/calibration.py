"""Calibration of multiple-choice answers: reliability diagrams and expected calibration error (ECE).

A model is calibrated when, of the answers it gives with confidence p, a share p is right. We read the
confidence from the answer letter's probability (the next token after "The answer is", renormalised over
the four letters, as the GPT-4 technical report's calibration figure did for MMLU), bin the items by
confidence and compare each bin's accuracy with its mean confidence. ECE = sum_b (n_b / N) |acc_b - conf_b|
(Naeini et al. 2015; Guo et al. 2017). The GPT-4 report found the pretrained model well calibrated and the
RLHF'd one much less so; the speedrun asks the same of the tiny world's pretrained, SFT and aligned models.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from genforge.eval.stats import CONFIDENCE, Interval
from genforge.world.facts import World

LETTERS = ("A", "B", "C", "D")
ANSWER_PREFIX = "The answer is"  # the replies the world's direct-style SFT rows end with


def mc_items(w: World, n: int, seed: int = 0) -> list[dict]:
    """n four-option questions about the world (`world.reasoning.multiple_choice` rows, direct phrasing)."""
    from genforge.world.reasoning import multiple_choice

    rng = random.Random(f"calibration-{seed}")
    rows = [multiple_choice(rng, w) for _ in range(n)]
    return [{"prompt": r["prompts"]["direct"], "gold": r["gold_index"], "options": r["options"]} for r in rows]


@torch.no_grad()
def letter_probs(model: nn.Module, tok, items: Sequence[dict], chat: bool, batch_size: int = 32) -> np.ndarray:
    """(N, 4): probabilities of " A".." D" after the prompt and "The answer is", renormalised over the letters.

    chat=True renders the prompt as a user turn (the reply then starts with "The answer is"); chat=False is
    the raw text with the answer prefix on a new line (how the corpus's worked solutions end)."""
    from genforge.interp.hooks import pad_batch
    from genforge.text import render_prompt

    letter_ids = [tok.encode(f" {L}")[-1] for L in LETTERS]
    out = []
    for i in range(0, len(items), batch_size):
        seqs = []
        for it in items[i:i + batch_size]:
            if chat:
                seqs.append(render_prompt(tok, it["prompt"], chat=True) + tok.encode(ANSWER_PREFIX))
            else:
                seqs.append(render_prompt(tok, f"{it['prompt']}\n{ANSWER_PREFIX}"))
        ids, _ = pad_batch(seqs, tok.pad_id or 0)
        logits = model(ids).float()  # (B, T, V)
        last = logits[torch.arange(len(seqs)), torch.tensor([len(s) - 1 for s in seqs])]  # (B, V)
        out.append(torch.softmax(last[:, letter_ids], -1).numpy())
    return np.concatenate(out)


def confidence_correct(probs: np.ndarray, gold: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(confidence = max letter probability, correct = argmax is gold), each (N,)."""
    return probs.max(-1), (probs.argmax(-1) == np.asarray(gold)).astype(float)


def reliability(conf: np.ndarray, correct: np.ndarray, bins: int = 10) -> list[tuple[float, float, float, int]]:
    """Per equal-width confidence bin: (bin centre, mean confidence, accuracy, count); empty bins omitted."""
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    out = []
    for b in range(bins):
        m = idx == b
        if m.any():
            out.append(((edges[b] + edges[b + 1]) / 2, float(conf[m].mean()), float(correct[m].mean()), int(m.sum())))
    return out


def ece(conf: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: sum over bins of (share of items) x |accuracy - mean confidence|."""
    n = len(conf)
    return float(sum(c / n * abs(acc - mc) for _, mc, acc, c in reliability(np.asarray(conf), np.asarray(correct),
                                                                            bins)))


def bootstrap_ece(conf: np.ndarray, correct: np.ndarray, *, other: tuple[np.ndarray, np.ndarray] | None = None,
                  bins: int = 10, n_resamples: int = 1000, seed: int = 0) -> Interval:
    """ECE with a percentile bootstrap interval over items; with `other` (the same items scored by a second
    model) the paired difference ECE - ECE(other), resampling the items once for both."""
    conf, correct = np.asarray(conf, float), np.asarray(correct, float)

    def stat(ix: np.ndarray) -> float:
        e = ece(conf[ix], correct[ix], bins)
        return e - ece(other[0][ix], other[1][ix], bins) if other is not None else e

    rng = np.random.default_rng(seed)
    n = len(conf)
    boots = np.array([stat(rng.integers(0, n, n)) for _ in range(n_resamples)])
    alpha = (1 - CONFIDENCE) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    return Interval(stat(np.arange(n)), float(lo), float(hi), n)


def reliability_plot(path: str | Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str,
                     bins: int = 10) -> Path:
    """Reliability diagram: accuracy vs mean confidence per bin for each model, the diagonal = perfect calibration;
    the legend gives each model's ECE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from genforge.report import save_figure

    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=110)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    for name, (conf, correct) in curves.items():
        pts = reliability(conf, correct, bins)
        ax.plot([p[1] for p in pts], [p[2] for p in pts], marker="o", markersize=3,
                label=f"{name} (ECE {ece(conf, correct, bins):.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (probability of the chosen letter)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
