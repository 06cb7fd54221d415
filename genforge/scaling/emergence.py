"""Emergence and calibration with scale: the same answers scored by a discontinuous and a continuous metric.

Wei et al. (2022) call an ability emergent when it is absent in small models and present in large ones;
Schaeffer, Miranda & Koyejo (2023, "Are Emergent Abilities of Large Language Models a Mirage?") show that
much of the jump comes from the metric: exact match of a multi-token answer is ~p^k for a per-token
probability p that grows smoothly. So each world task is scored both ways on the same items:

  * exact match: greedy decoding would write the whole gold answer (the `is_greedy` of a log-likelihood request);
  * per-token probability of the gold answer, exp(mean log p) over its tokens (continuous).

Items are the world's reasoning tasks written as the corpus's worked solutions are (question, rationale,
"The answer is"), so a base model is asked to finish a solution it has seen the shape of: the answer must
be read off the worked steps, not recalled. Calibration (Guo et al. 2017): on 4-option multiple choice about
world facts, the model's normalised probability over the option letters is its confidence; expected
calibration error = sum over 10 confidence bins of |accuracy - mean confidence| x bin share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genforge.errors import DataError
from genforge.io import read_jsonl

TASKS = ("arithmetic", "last_letter", "coin_flip", "date_arithmetic", "multiple_choice")
LETTERS = "ABCD"


def load_items(tasks_dir: str | Path, per_task: int, split: str = "test") -> dict[str, list[dict]]:
    """The first `per_task` rows of each reasoning task in tasks_dir/<split>.jsonl."""
    f = Path(tasks_dir) / f"{split}.jsonl"
    if not f.exists():
        raise DataError(f"{f}: missing; run `genforge data world` (or the speedrun's world stage) first")
    out: dict[str, list[dict]] = {t: [] for t in TASKS}
    for _, row in read_jsonl(f):
        t = row.get("task")
        if t in out and len(out[t]) < per_task:
            out[t].append(row)
    return {t: rows for t, rows in out.items() if rows}


def solution_pair(row: dict) -> tuple[str, str]:
    """(context, continuation): the worked solution up to "The answer is", and the gold answer."""
    question = row.get("question") or row["prompt"]
    return f"{question}\n{row['rationale']}\nThe answer is", f" {row['answer']}."


def choice_context(row: dict) -> str:
    """A multiple-choice question with the fact it needs but not the letter ("That is option A" dropped)."""
    lines = [ln for ln in row["rationale"].splitlines() if not ln.startswith("That is option")]
    return "\n".join([row.get("question") or row["prompt"], *lines, "The answer is"])


@dataclass
class TaskResult:
    exact: list[float]  # per item: 1 when greedy decoding writes the whole answer
    token_prob: list[float]  # per item: exp(mean log p) of the answer's tokens


@dataclass
class ChoiceResult:
    confidence: list[float]  # normalised probability of the chosen letter
    correct: list[float]  # 1 when the chosen letter is gold


def score_model(model, tok, items: dict[str, list[dict]], batch_size: int = 16) -> tuple[dict[str, TaskResult],
                                                                                          ChoiceResult | None]:
    """Score one model on every task (both metrics) and on the calibrated letter choice."""
    from genforge.eval.lm import GenforgeLM

    lm = GenforgeLM(model, tok, batch_size=batch_size)
    results = {}
    for task, rows in items.items():
        res = lm.loglikelihood([solution_pair(r) for r in rows])
        results[task] = TaskResult([float(g) for _, _, g in res], [math.exp(lp / max(n, 1)) for lp, n, _ in res])
    choice = None
    mc = [r for r in items.get("multiple_choice", []) if "gold_index" in r]
    if mc:
        pairs = [(choice_context(r), f" {letter}.") for r in mc for letter in LETTERS]
        lps = np.array([lp for lp, _, _ in lm.loglikelihood(pairs)]).reshape(len(mc), len(LETTERS))
        probs = np.exp(lps - lps.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)  # (items, 4): the model's belief over the letters
        pick = probs.argmax(axis=1)
        choice = ChoiceResult(probs.max(axis=1).tolist(),
                              [float(p == r["gold_index"]) for p, r in zip(pick, mc)])
    return results, choice


def ece(confidence: Sequence[float], correct: Sequence[float], bins: int = 10) -> float:
    """Expected calibration error over equal-width confidence bins (Naeini et al. 2015; Guo et al. 2017)."""
    conf, corr = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    if len(conf) == 0:
        return math.nan
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(corr[m].mean() - conf[m].mean())
    return float(total)


def bootstrap_ece_diff(a: ChoiceResult, b: ChoiceResult, n_resamples: int = 1000, seed: int = 0,
                       confidence: float = 0.95) -> tuple[float, float, float, int]:
    """ECE(a) - ECE(b) over the same items, with a paired percentile bootstrap: (estimate, low, high, n)."""
    rng = np.random.default_rng(seed)
    ca, ka, cb, kb = (np.asarray(x) for x in (a.confidence, a.correct, b.confidence, b.correct))
    n = len(ca)
    est = ece(ca, ka) - ece(cb, kb)
    diffs = []
    for _ in range(n_resamples):
        i = rng.integers(0, n, n)
        diffs.append(ece(ca[i], ka[i]) - ece(cb[i], kb[i]))
    lo, hi = np.percentile(diffs, [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100])
    return float(est), float(lo), float(hi), n
