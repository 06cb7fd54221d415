"""Read-back exercises: sentences whose invented names only the context can supply.

A small model answers a question about the world from its memorised priors (the likeliest job, the likeliest town)
rather than from a passage in its context. Exercises built here break that prior: facts about random people with
invented shop, bridge, comet and pet names ("The Napver Es"), and "Repeat: <sentence>" rows whose every reply token
is in the prompt. Fine-tuning on them first is what made the tiny model copy from its context (the retrieval and
agents stages' warm-up; numbers in genforge/speedrun/rag.py).
"""

from __future__ import annotations

import random

from genforge.world.facts import World


def reading_exercises(w: World, n: int, seed: int, exclude_questions: set[str]) -> list[dict]:
    """`n` invented facts from the knowledge-base generator under another seed, none asking a test question.

    Corpus facts alone do not teach reading: their answers come from small closed sets (jobs, towns), so a small
    model learns the likely answer instead of copying it from the passage. These facts pair random people with
    random shop, bridge, comet and pet names, so the only way to answer is to read. They are exercises, not
    knowledge: no test fact is among them (same question excluded), and the test measures facts never trained on.
    """
    from genforge.world.knowledge import make_knowledge

    rows = make_knowledge(w, n + len(exclude_questions), seed=10_000 + seed)
    out = [r for r in rows if r["question"] not in exclude_questions][:n]
    return [{"fact": r["fact"], "question": r["question"], "answer": r["answer"], "subject": r["keyword"],
             "kind": "exercise"} for r in out]


# Syllables of invented names: none is a word of the world, so a model that has not read the passage cannot guess them.
_SYLLABLES = ("ka", "lo", "mi", "ver", "dun", "tas", "bel", "qui", "zor", "nap", "rel", "sho", "gri", "fen", "pa", "tu",
              "wex", "od", "an", "yul", "cra", "mo", "ib", "es")
# words of an answer that name its kind, not the entity ("The Merry Badger", "Cobble Bridge", "Comet Ostrid-7")
_KIND_WORDS = {"The", "the", "Bridge", "Comet", "River"}


def invented_name(rng: random.Random) -> str:
    """A capitalised pseudo-word of 1-3 syllables ("Napver")."""
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))).capitalize()


def counterfactual(row: dict, rng: random.Random) -> dict:
    """`row` with its answer replaced (in the fact too) by invented words of the same shape.

    "The Merry Badger" -> "The Napver Es", "Comet Ostrid-7" -> "Comet Tasmi-42": the question and the sentence keep
    their template, but the prior over answers is useless, so the loss can only fall by reading (the way
    reading-comprehension fine-tunes break a model's memorised priors with counterfactual contexts).
    """
    words = []
    for part in row["answer"].split():
        if part in _KIND_WORDS:
            words.append(part)
        elif "-" in part:
            words.append(f"{invented_name(rng)}-{rng.randint(2, 99)}")
        else:
            words.append(invented_name(rng))
    new = " ".join(words)
    if row["answer"] not in row["fact"] or new == row["answer"]:
        return row
    return {**row, "fact": row["fact"].replace(row["answer"], new), "answer": new}


def copy_rows(w: World, n: int, seed: int, exclude_questions: set[str]) -> list[list[dict]]:
    """`n` read-back conversations: "Repeat: <sentence>" -> " <sentence>", sentences with invented names.

    Dense copy targets (every token of the reply is in the prompt, and the invented names are predictable only from
    there) make a small model form the copy circuit in a few hundred steps, where QA rows (a few answer tokens each,
    most guessable from the question) did not in 400 (measured at tiny, see the stage's report note). The reply
    starts with a space so that it tokenises like the sentence inside the prompt.
    """
    rng = random.Random(f"rag-copy-{seed}")
    facts = [counterfactual(r, rng)["fact"] for r in reading_exercises(w, n, seed + 1, exclude_questions)]
    return [[{"role": "user", "content": f"Repeat: {f}"}, {"role": "assistant", "content": f" {f}"}] for f in facts]
