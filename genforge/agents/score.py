"""Accuracy with a bootstrap 95 % interval over items (and paired differences), for agent lessons."""

from __future__ import annotations

import random
from collections.abc import Sequence


def mean_ci(values: Sequence[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 2.5th percentile, 97.5th percentile) of the bootstrap mean over items."""
    if not values:
        return 0.0, 0.0, 0.0
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    return sum(values) / n, means[int(0.025 * n_boot)], means[int(0.975 * n_boot) - 1]


def paired_diff_ci(a: Sequence[float], b: Sequence[float], n_boot: int = 2000,
                   seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b with a paired bootstrap interval (the same items scored two ways)."""
    if len(a) != len(b):
        raise ValueError(f"paired_diff_ci: {len(a)} vs {len(b)} items")
    return mean_ci([x - y for x, y in zip(a, b)], n_boot, seed)
