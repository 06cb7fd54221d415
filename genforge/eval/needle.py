"""Needle in a haystack: can the model retrieve one planted fact from a long context?

A grid of context length x needle depth (0 = the fact opens the context, 1 = it ends it), a few
trials per cell, accuracy per cell, drawn as a heatmap (Kamradt 2023's popular test). The default
case generator is self-contained; pass `make_case` to use the tiny world's own needles.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from genforge.extras import require
from genforge.io import atomic_path

if TYPE_CHECKING:  # torch stays unimported until a model is used
    from genforge.eval.lm import LM

FILLER = (
    "The river ran slowly past the mill.", "A cart of apples rolled into the market square.",
    "Children played by the old stone bridge.", "The baker opened her shop before dawn.",
    "Rain fell on the roofs of the village.", "A heron stood still in the reeds.",
    "The blacksmith hammered a new horseshoe.", "Two travellers shared bread at the inn.",
    "Wind moved the tall grass on the hill.", "The bell in the tower rang at noon.",
    "A boat drifted toward the far shore.", "The librarian dusted the long shelves.",
)
KEEPERS = ("the lighthouse keeper", "the miller", "the ferryman", "the weaver", "the shepherd", "the potter")


@dataclass
class NeedleCase:
    prompt: str
    answer: str


def make_case(n_tokens: int, depth: float, rng: random.Random, count_tokens: Callable[[str], int]) -> NeedleCase:
    """Filler sentences up to about n_tokens, with "The secret number of X is N." at `depth`.

    The question at the end is not counted in n_tokens; the needle is.
    """
    who, number = rng.choice(KEEPERS), str(rng.randint(1000, 9999))
    needle = f"The secret number of {who} is {number}."
    question = f"\nQuestion: What is the secret number of {who}?\nAnswer: The secret number of {who} is"
    budget = n_tokens - count_tokens(needle)
    sentences: list[str] = []
    while True:
        s = rng.choice(FILLER)
        cost = count_tokens(" " + s)
        if budget - cost < 0:
            break
        sentences.append(s)
        budget -= cost
    sentences.insert(round(depth * len(sentences)), needle)
    return NeedleCase(" ".join(sentences) + question, number)


def world_case(n_tokens: int, depth: float, rng: random.Random, count_tokens: Callable[[str], int]) -> NeedleCase:
    """A case from the tiny world's needle generator (world text as the haystack), asked like the world's "needle"
    task rows an SFT model trains on: the context, then the question on its own line."""
    from genforge.world import make_needle

    m = make_needle(n_tokens, depth, seed=rng.randrange(1 << 30), count_tokens=count_tokens)
    return NeedleCase(f"{m['context']}\n{m['question']}", m["answer"])


def world_cloze_case(n_tokens: int, depth: float, rng: random.Random,
                     count_tokens: Callable[[str], int]) -> NeedleCase:
    """A world case asked as a cloze: the context, then the needle's own lead-in for the model to complete.

    The form for a pretrained (not instruction-tuned) model, which continues text rather than answers
    questions; retrieving the code is then the copy an induction head does (Olsson et al. 2022).
    """
    from genforge.world import make_needle

    m = make_needle(n_tokens, depth, seed=rng.randrange(1 << 30), count_tokens=count_tokens)
    return NeedleCase(f"{m['context']}\n{m['cue']}", m["answer"])


def needle_grid(lm: LM, *, context_lengths: Sequence[int] = (64, 128, 256),
                depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), trials: int = 3, seed: int = 0,
                max_new_tokens: int = 8,
                case_fn: Callable[[int, float, random.Random, Callable[[str], int]], NeedleCase] = make_case) -> dict:
    """Accuracy per (depth, context length) cell: correct if the answer appears in the output.

    All prompts go to the model in one `generate` call. `accuracy[i][j]` is depth i, length j.
    """
    count = getattr(lm, "count_tokens", None) or (lambda text: len(text.split()))
    rng = random.Random(seed)
    cells, cases = [], []
    for d in depths:
        for n in context_lengths:
            for _ in range(trials):
                cells.append((d, n))
                cases.append(case_fn(n, d, rng, count))
    outs = lm.generate([c.prompt for c in cases], max_new_tokens=max_new_tokens, temperature=0.0, stop=("\n",))
    hits: dict[tuple[float, int], list[float]] = {}
    items = []
    for (d, n), case, o in zip(cells, cases, outs):
        ok = float(case.answer in o[0])
        hits.setdefault((d, n), []).append(ok)
        items.append({"depth": d, "context_length": n, "answer": case.answer, "output": o[0], "correct": ok})
    acc = [[sum(hits[d, n]) / len(hits[d, n]) for n in context_lengths] for d in depths]
    return {"context_lengths": list(context_lengths), "depths": list(depths), "accuracy": acc, "trials": trials,
            "mean_accuracy": sum(map(sum, acc)) / max(len(depths) * len(context_lengths), 1), "items": items}


def plot_needle(result: dict, path: str | Path, title: str = "Needle in a haystack") -> Path:
    """Heatmap PNG: x = context length (tokens), y = needle depth, colour = accuracy."""
    matplotlib = require("matplotlib", "report")
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    acc, depths, lengths = result["accuracy"], result["depths"], result["context_lengths"]
    fig, ax = plt.subplots(figsize=(1.2 * len(lengths) + 2, 0.6 * len(depths) + 1.5))
    im = ax.imshow(acc, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(title)
    for i in range(len(depths)):
        for j in range(len(lengths)):
            ax.text(j, i, f"{acc[i][j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="accuracy")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
