"""Drills: extra training rows of the reasoning families, for the chat model's multi-task fine-tune.

The world's train split holds the same number of rows per task (600 at tiny), which is right for comparing
fine-tuning methods but starves the multi-step tasks: a worked 3-digit addition is learned only after several
thousand examples (DESIGN.md, "What a CPU can teach in minutes": 600 steps x 16 examples of addition alone reach
1.00 held out, 300 steps 0.075), while summaries and translations need far fewer. `drill_rows` draws fresh
questions from the same generators (`world.reasoning`), never one of the world's val/test/held-out questions, in
the train split's phrasings (`chat.PHRASINGS` on `tasks.PHRASED_SHARE` of rows), so the fine-tune can weight the
mix by what each task needs without touching the world's files.
"""

from __future__ import annotations

import random

from genforge.errors import ConfigError
from genforge.world.chat import PHRASINGS, phrase
from genforge.world.facts import World
from genforge.world.tasks import GENERATORS, PHRASED_SHARE


def question_key(row: dict) -> str:
    """What makes two rows the same problem: the bare question (reasoning rows carry one phrasing per style), else
    the prompt; multiple choice by its first line, as the split builder dedups it."""
    q = row.get("question") or row["prompt"]
    return q.split("\n", 1)[0] if row.get("task") == "multiple_choice" else q


def drill_rows(w: World, counts: dict[str, int], seed: int, exclude: set[str] | None = None) -> list[dict]:
    """`counts[task]` fresh rows of each task, none of whose `question_key` is in `exclude` (the scored rows' keys;
    updated). A task whose question space runs out gets fewer rows. Seeded: the same world, counts and seed give
    the same rows."""
    unknown = sorted(set(counts) - set(GENERATORS))
    if unknown:
        raise ConfigError(f"drills: no generator for task(s) {', '.join(unknown)}; choose from {', '.join(GENERATORS)}")
    seen = set() if exclude is None else exclude
    rng, phr = random.Random(f"drills-{seed}"), random.Random(f"drill-phrasings-{seed}")
    rows: list[dict] = []
    for task, n in counts.items():
        made = 0
        for _ in range(max(n, 0) * 20):
            if made >= n:
                break
            row = GENERATORS[task](rng, w)
            key = question_key(row)
            if key in seen:
                continue
            seen.add(key)
            if phr.random() < PHRASED_SHARE:
                row = {**row, "prompt": phrase(row["prompt"], phr.choice(PHRASINGS))}
            rows.append({**row, "drill": True})
            made += 1
    return rows
