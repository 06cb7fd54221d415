"""Needle in a haystack: one odd fact hidden at a chosen depth of a long world-text context."""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from genforge.errors import ConfigError
from genforge.world.corpus import iter_clean_documents
from genforge.world.facts import World, build_world

_SENT_RE = re.compile(r"(?<=[.!?])\s+|\n+")
_WORDS = ("otter", "lantern", "thimble", "walnut", "harbour", "juniper", "comet", "pebble", "saffron", "quill")


def _words(text: str) -> int:
    return len(text.split())


def make_needle(filler_tokens: int, depth: float, seed: int = 0,
                count_tokens: Callable[[str], int] | None = None) -> dict:
    """A haystack of about `filler_tokens` tokens of world text with a needle sentence at `depth` (0 = start, 1 = end).

    `count_tokens` measures length (default: whitespace words); pass a tokenizer's counter to size the
    context for a model. Returns `{"context", "needle", "question", "cue", "answer", "depth", "filler_tokens"}`,
    where `cue` is the needle's lead-in ("The secret code for ... is"), the cloze query for a pretrained model,
    and `depth` is the depth actually used (the needle goes between sentences).
    """
    if not 0 <= depth <= 1:
        raise ConfigError(f"needle depth must be between 0 and 1, got {depth}")
    if filler_tokens < 0:
        raise ConfigError(f"filler_tokens must be >= 0, got {filler_tokens}")
    count = count_tokens or _words
    rng = random.Random(f"needle-{seed}")
    w = build_world(seed, n_people=120, n_towns=20, n_objects=30)
    town = rng.choice(w.towns).name
    place = rng.choice(("north gate", "old well", "bell tower", "east bridge", "river mill"))
    answer = f"{rng.choice(_WORDS)}-{rng.randint(100, 999)}"
    needle = f"The secret code for the {place} of {town} is {answer}."
    question = f"What is the secret code for the {place} of {town}?"
    cue = f"The secret code for the {place} of {town} is"
    # Filler: world documents split into sentences until the budget is met.
    docs = iter_clean_documents(w, random.Random(f"needle-filler-{seed}"))
    for _ in range(rng.randrange(len(w.people))):  # start somewhere in the mix, not always at the first entry
        next(docs)
    sents: list[str] = []
    lens: list[int] = []
    total = 0
    while total < filler_tokens:
        for s in _SENT_RE.split(next(docs)):
            if s.strip():
                sents.append(s.strip())
                lens.append(count(s.strip()))
                total += lens[-1]
                if total >= filler_tokens:
                    break
    # Insert at the sentence boundary nearest to depth * total.
    target, acc, k = depth * total, 0, 0
    while k < len(sents) and acc + lens[k] / 2 < target:
        acc += lens[k]
        k += 1
    context = " ".join(sents[:k] + [needle] + sents[k:])
    return {"context": context, "needle": needle, "question": question, "cue": cue, "answer": answer,
            "depth": round(acc / total, 4) if total else 0.0, "filler_tokens": total}


# ---- needle rows to train on -----------------------------------------------------------------------------------

_POOLS: dict[int, list[str]] = {}
_PLACES = ("north gate", "old well", "bell tower", "east bridge", "river mill", "south wall", "fish market",
           "stone stair", "west dock", "town hall")


def _sentence_pool(w: World) -> list[str]:
    """World-text sentences to build haystacks from (the world's first few hundred clean documents), per world."""
    if id(w) not in _POOLS:
        docs = iter_clean_documents(w, random.Random("needle-pool"))
        _POOLS[id(w)] = [s.strip() for _ in range(300) for s in _SENT_RE.split(next(docs)) if s.strip()]
    return _POOLS[id(w)]


def needle_row(rng: random.Random, w: World, max_words: int = 150) -> dict:
    """A task row that reads one planted fact back out of world text: a haystack of 10-`max_words` words with
    "The secret code for the <place> of <town> is <word>-<number>." at a random depth, then the question.

    Retrieval from context is a skill a ~1 M-parameter model pretrained on templated text does not have (it copies
    nothing from its context: measured, no induction), so SFT teaches it on these rows; the eval stage's needle
    grid then asks in the same format at lengths within and beyond the trained context. `max_words` keeps the
    longest row inside a 256-token SFT sequence.
    """
    pool = _sentence_pool(w)
    town = rng.choice(w.towns).name
    place = rng.choice(_PLACES)
    answer = f"{rng.choice(_WORDS)}-{rng.randint(100, 999)}"
    cue = f"The secret code for the {place} of {town} is"
    budget, sents = rng.randint(10, max_words), []
    while sum(map(_words, sents)) < budget:
        sents.append(rng.choice(pool))
    sents.insert(rng.randint(0, len(sents)), f"{cue} {answer}.")
    question = f"What is the secret code for the {place} of {town}?"
    return {"task": "needle", "prompt": f"{' '.join(sents)}\n{question}", "response": f"{cue} {answer}.",
            "rationale": "", "answer": answer}


def needle_document(rng: random.Random, w: World, max_words: int = 150) -> str:
    """Pretraining text that rewards copying from context: a haystack with a planted code, then the code's lead-in
    asked again and answered ("... The secret code for the mill of Oakford is comet-417. ... Remember: the secret
    code for the mill of Oakford is comet-417.").

    Measured on the first-wave tiny base: it copies nothing from its context (a repeated random sequence is
    predicted no better the second time), so neither the needle test nor few-shot prompting can work; documents
    like this one, in the pretraining mix, are where induction heads (Olsson et al. 2022) come from at this scale.
    """
    row = needle_row(rng, w, max_words)
    context = row["prompt"].rsplit("\n", 1)[0]
    lead = rng.choice(("Remember:", "Note:", "To repeat:", "Once more:"))
    return f"{context}\n{lead} {row['response'][0].lower()}{row['response'][1:]}"
