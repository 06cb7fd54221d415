"""A copy curriculum mixed into pretraining batches: some sequences carry random word spans shown twice.

Why: the tiny world's corpus is so templated (val perplexity ~1.9) that a 0.87 M model predicts it from memorised
templates and facts, and nothing in it pays for the circuit that copies from the context (induction heads, Olsson
et al. 2022). Without that circuit the model cannot read a passage, a needle, a demonstration or a tool result, which
is what retrieval, few-shot prompting and agents need. Measured at `tiny`: 15 % of the *corpus* made of copy-rich
documents (needles, read-back lists) taught no copying in 900 steps; a warm-up on repeated random sequences alone
taught it in ~75 steps but by position (a fixed length) and was erased by 50 steps of corpus training. So the spans
here have random lengths, are pasted at random distances into ordinary corpus windows (the copy is by content across
intervening text), and stay in every batch for the whole run.

Measured at `tiny` (900 steps, fraction 0.25, two spans of 4-48 tokens per chosen window): the random-sequence probe
of `genforge/eval/induction.py` rose from -0.5 to +0.58 nat/token at length 12 (+0.26 at 24, +0.13 at 40; it was
higher at step 600) and val loss on the corpus went 0.635 -> 0.653, but a span pasted into a held-out corpus window
was not copied at all (second copy 6.67 vs first 6.71 nats/token). Content-based induction did not form: from
scratch, pure variable-length copy data (4-32 tokens, 256-token rows) stayed on the uniform plateau for 350 steps,
and short rows (3-12 tokens, 64-token rows) learned only lengths they saw in 400 steps. It stays off by default
(`copy_mix=0`); it is here for runs with more steps, where it is the cheapest lever to try first.

A sequence is chosen with probability `fraction`, from a generator seeded by (seed, step, index): the mix is a pure
function of the step like `TokenShards.get_batch`, so resume and data parallelism stay exact.
"""

from __future__ import annotations

import numpy as np
import torch


class CopyMix:
    """Wrap a batch source (`get_batch(step, micro, rank, world)`); in a `fraction` of its sequences, paste
    `spans` random word spans of `min_len..max_len` tokens twice each, the second copy later in the window."""

    def __init__(self, base, word_ids: list[int], fraction: float, seed: int = 0, min_len: int = 4,
                 max_len: int = 48, spans: int = 2):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"copy fraction must be in [0, 1], got {fraction}")
        if len(word_ids) < 2:
            raise ValueError("the copy curriculum needs a tokenizer with word tokens to draw spans from")
        self.base, self.fraction, self.seed = base, fraction, seed
        self.words = np.asarray(word_ids, dtype=np.int64)
        self.min_len, self.max_len, self.spans = min_len, max_len, spans

    def __getattr__(self, name: str):  # n_tokens, n_bytes, ... of the wrapped source
        return getattr(self.base, name)

    def paste(self, row: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """`row` (T + 1,) with each span written at position a and again at b >= a + len (no overlap)."""
        row = row.copy()
        n = len(row)
        per = n // self.spans  # each span pair lives in its own slice of the window
        for k in range(self.spans):
            lo, hi = k * per + 1, (k + 1) * per  # never overwrite position 0 (often <|bos|>)
            length = int(rng.integers(self.min_len, min(self.max_len, (hi - lo) // 2) + 1))
            gap = int(rng.integers(0, hi - lo - 2 * length + 1))  # intervening corpus tokens between copies
            a = lo + int(rng.integers(0, hi - lo - 2 * length - gap + 1))
            span = self.words[rng.integers(0, len(self.words), length)]
            row[a:a + length] = span
            row[a + length + gap:a + 2 * length + gap] = span
        return row

    def get_batch(self, step: int, micro: int, rank: int, world: int) -> dict[str, torch.Tensor]:
        batch = self.base.get_batch(step, micro, rank, world)
        if self.fraction <= 0:
            return batch
        B = batch["input_ids"].shape[0]
        rows = torch.cat([batch["input_ids"], batch["labels"][:, -1:]], dim=1).numpy()  # (B, T + 1)
        lo = (micro * world + rank) * B
        for j in range(B):
            rng = np.random.default_rng([self.seed, step, lo + j, 0xC0B1])
            if rng.random() < self.fraction:
                rows[j] = self.paste(rows[j], rng)
        t = torch.from_numpy(rows)
        return {"input_ids": t[:, :-1], "labels": t[:, 1:]}
