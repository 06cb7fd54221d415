"""A composite task suite, BIG-bench style: several of the world's skills scored as one number.

BIG-bench (Srivastava et al. 2022, sec. 2.2) puts tasks with different metrics on one scale by normalising each
task's preferred metric between its "low" score (chance, or what a model with no skill gets) and 100 % , then
averages tasks with equal weight: normalised = (score - low) / (high - low). A suite number hides which skill
moved, so the per-task normalised scores are reported beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from genforge.errors import DataError


def normalise(score: float, low: float, high: float = 1.0) -> float:
    """(score - low) / (high - low): 0 at the low anchor (chance), 1 at the ceiling; below chance is negative."""
    if high <= low:
        raise DataError(f"composite: the high anchor {high} must be above the low anchor {low}")
    return (score - low) / (high - low)


def composite_items(items: Mapping[str, Sequence[float]], low: Mapping[str, float] | None = None,
                    high: Mapping[str, float] | None = None) -> tuple[list[float], dict[str, float]]:
    """Per-item normalised scores, weighted so that their plain mean is the equal-weight mean over tasks, and the
    per-task normalised means.

    items: {task: per-item scores}; low/high: per-task anchors (default 0 and 1). The weighting (an item of a
    task with n items counts N / (T * n)) lets one bootstrap over all items give the suite's interval.
    """
    if not items:
        raise DataError("composite: no tasks in the suite")
    low, high = low or {}, high or {}
    total, T = sum(len(v) for v in items.values()), len(items)
    weighted, per_task = [], {}
    for task, vals in items.items():
        if not vals:
            raise DataError(f"composite: task {task} has no scored items")
        lo, hi = low.get(task, 0.0), high.get(task, 1.0)
        norm = [normalise(v, lo, hi) for v in vals]
        per_task[task] = sum(norm) / len(norm)
        w = total / (T * len(vals))
        weighted += [x * w for x in norm]
    return weighted, per_task
