"""Confidence intervals for the report card's lessons: percentile bootstrap over test items.

A lesson is a claim with an interval (DESIGN.md): "chain of thought beats direct answering" needs the
difference of two accuracies *and* how much it would move with other test items. The percentile
bootstrap (Efron & Tibshirani 1993, ch. 13) resamples the items with replacement, recomputes the
statistic on each resample and reads the 2.5 % and 97.5 % quantiles of the results.

- **Paired** (the same items scored twice, e.g. CoT and direct on one test set): one set of resampled
  item indices is applied to both score vectors, so the item-to-item variation that both share cancels
  and the interval is narrower than the unpaired one.
- **Unpaired** (independent samples, e.g. two models on different test sets): each side is resampled on
  its own.

numpy only (no torch): the report and its tests stay fast to import. Every function takes `seed`, so the
same scores always give the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from genforge.errors import DataError

N_RESAMPLES = 2000
CONFIDENCE = 0.95
_CHUNK_CELLS = 2_000_000  # resample indices drawn per chunk (resamples x items) to bound memory at ~16 MB


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap confidence interval [low, high] over n items."""

    estimate: float
    low: float
    high: float
    n: int
    confidence: float = CONFIDENCE

    def excludes(self, value: float) -> bool:
        """True when `value` lies outside [low, high] (e.g. 0 for "there is an effect")."""
        return value < self.low or value > self.high

    def __str__(self) -> str:
        return f"{self.estimate:.3g} [{self.low:.3g}, {self.high:.3g}]"


@dataclass(frozen=True)
class SeedSummary:
    """Mean and sample standard deviation (ddof=1) of one number measured under n seeds."""

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.3g} ± {self.std:.3g} ({self.n} seeds)"


def _as_array(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise DataError(f"{what}: no values to bootstrap; score at least one test item")
    if not np.all(np.isfinite(a)):
        raise DataError(f"{what}: {int((~np.isfinite(a)).sum())} of {a.size} values are NaN or infinite; "
                        "drop or fix those items first")
    return a


def _boot_means(rng: np.random.Generator, n_resamples: int, *arrays: np.ndarray) -> list[np.ndarray]:
    """Means of each array over the SAME n_resamples resamples of item indices, each shape (n_resamples,).

    One array: a plain bootstrap. Several (same length): a paired one. Drawn in chunks to bound memory.
    """
    n = arrays[0].size
    outs = [np.empty(n_resamples) for _ in arrays]
    step = max(1, _CHUNK_CELLS // n)
    for start in range(0, n_resamples, step):
        k = min(step, n_resamples - start)
        idx = rng.integers(0, n, size=(k, n))  # (k resamples, n items)
        for a, out in zip(arrays, outs):
            out[start:start + k] = a[idx].mean(axis=1)
    return outs


def _interval(estimate: float, stats: np.ndarray, n: int, confidence: float) -> Interval:
    if not 0 < confidence < 1:
        raise DataError(f"confidence must be in (0, 1), got {confidence}")
    stats = stats[np.isfinite(stats)]  # a ratio's resample with a zero denominator has no value
    if stats.size == 0:
        return Interval(float(estimate), math.nan, math.nan, n, confidence)
    alpha = 1 - confidence
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return Interval(float(estimate), float(low), float(high), n, confidence)


def _check_resamples(n_resamples: int) -> None:
    if n_resamples < 1:
        raise DataError(f"n_resamples must be >= 1, got {n_resamples}")


def bootstrap_mean(values: Sequence[float] | np.ndarray, *, n_resamples: int = N_RESAMPLES,
                   confidence: float = CONFIDENCE, seed: int = 0) -> Interval:
    """Mean of per-item scores with its percentile bootstrap interval.

    One item or identical items give a zero-width interval: there is no spread to resample.
    """
    _check_resamples(n_resamples)
    a = _as_array(values, "bootstrap_mean")
    rng = np.random.default_rng(seed)
    return _interval(a.mean(), _boot_means(rng, n_resamples, a)[0], a.size, confidence)


def bootstrap_proportion(values: Sequence[float] | np.ndarray, *, n_resamples: int = N_RESAMPLES,
                         confidence: float = CONFIDENCE, seed: int = 0) -> Interval:
    """A rate (accuracy, refusal rate, detection rate) from 0/1 outcomes, with its interval."""
    a = _as_array(values, "bootstrap_proportion")
    if not np.all((a == 0) | (a == 1)):
        raise DataError("bootstrap_proportion: values must be 0 or 1; use bootstrap_mean for graded scores")
    return bootstrap_mean(a, n_resamples=n_resamples, confidence=confidence, seed=seed)


def bootstrap_diff(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, paired: bool,
                   n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0) -> Interval:
    """mean(a) - mean(b) with its interval.

    paired=True: a[i] and b[i] score the same item i (same length required); the items are resampled
    once and both sides read the same resample. paired=False: a and b are independent samples, each
    resampled on its own; n is len(a) + len(b).
    """
    _check_resamples(n_resamples)
    a, b = _as_array(a, "bootstrap_diff (a)"), _as_array(b, "bootstrap_diff (b)")
    rng = np.random.default_rng(seed)
    if paired:
        if a.size != b.size:
            raise DataError(f"bootstrap_diff: paired scores need the same items, got {a.size} and {b.size} "
                            "values; pass paired=False for independent samples")
        ma, mb = _boot_means(rng, n_resamples, a, b)
        return _interval(a.mean() - b.mean(), ma - mb, a.size, confidence)
    (ma,), (mb,) = _boot_means(rng, n_resamples, a), _boot_means(rng, n_resamples, b)
    return _interval(a.mean() - b.mean(), ma - mb, a.size + b.size, confidence)


def bootstrap_diff_paired(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                          **kwargs) -> Interval:
    """mean(a) - mean(b) where a[i] and b[i] score the same item; see `bootstrap_diff`."""
    return bootstrap_diff(a, b, paired=True, **kwargs)


def bootstrap_diff_unpaired(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                            **kwargs) -> Interval:
    """mean(a) - mean(b) for independent samples; see `bootstrap_diff`."""
    return bootstrap_diff(a, b, paired=False, **kwargs)


def bootstrap_ratio(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, paired: bool = True,
                    n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0) -> Interval:
    """mean(a) / mean(b) with its interval ("LoRA reaches 80 % of full fine-tuning's score").

    Resamples whose mean(b) is 0 have no ratio and are left out of the quantiles; a mean(b) of 0 on the
    data itself is an error (the ratio is undefined).
    """
    _check_resamples(n_resamples)
    a, b = _as_array(a, "bootstrap_ratio (a)"), _as_array(b, "bootstrap_ratio (b)")
    if b.mean() == 0:
        raise DataError("bootstrap_ratio: the baseline's mean is 0, so the ratio is undefined; "
                        "report the difference (bootstrap_diff) instead")
    rng = np.random.default_rng(seed)
    if paired:
        if a.size != b.size:
            raise DataError(f"bootstrap_ratio: paired scores need the same items, got {a.size} and {b.size}")
        ma, mb = _boot_means(rng, n_resamples, a, b)
    else:
        (ma,), (mb,) = _boot_means(rng, n_resamples, a), _boot_means(rng, n_resamples, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = ma / mb
    n = a.size if paired else a.size + b.size
    return _interval(a.mean() / b.mean(), ratios, n, confidence)


def win_outcomes(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> np.ndarray:
    """Per-item outcome of a against b on the same items: 1 win, 0.5 tie, 0 loss."""
    a, b = _as_array(a, "win_outcomes (a)"), _as_array(b, "win_outcomes (b)")
    if a.size != b.size:
        raise DataError(f"win_outcomes: a and b must score the same items, got {a.size} and {b.size} values")
    return np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))


def bootstrap_win_rate(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *,
                       n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0) -> Interval:
    """Win rate of a over b on shared items (ties count 0.5), with its interval; 0.5 means no preference."""
    return bootstrap_mean(win_outcomes(a, b), n_resamples=n_resamples, confidence=confidence, seed=seed)


def mean_std(values: Sequence[float] | np.ndarray) -> SeedSummary:
    """Mean ± sample standard deviation over seeds. One seed has no measurable spread: std is 0 and n=1 says so."""
    a = _as_array(values, "mean_std")
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return SeedSummary(float(a.mean()), std, int(a.size))
