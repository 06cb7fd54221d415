"""Theory of mind: a Sally-Anne-style false-belief task family, generated with names and objects the world never
uses, and a few of its items planted in the pretraining corpus for the contamination-by-asking lesson.

The classic test (Baron-Cohen, Leslie & Frith 1985): Sally puts her marble in the basket and leaves; Anne moves
it to the box; where will Sally look for it? Answering "the basket" needs a model of Sally's (false) belief,
not of the world. The public story is all over the web, so a model trained on web text may answer it from
memory: a public test cannot tell understanding from recall (Ullman 2023 shows small rewordings break large
models' "theory of mind"). So here:
- every item is generated with unseen names, objects, containers and rooms (`NAMES`, `OBJECTS` ... share no word
  with `world.names`), in three kinds: false belief (the protagonist is away while the object moves), true
  belief (the protagonist watches it move) and reality (where is the object now?), so a model that always names
  the first or the last container cannot pass all three;
- the public story (`PUBLIC_STORY`) is kept out of training: `public_story_in` checks a corpus for it;
- `planted_items` are false-belief items "leaked" into the pretraining corpus (`plant` appends them to a few
  clean documents, as a benchmark leaks into crawled pages several times); the eval stage asks the pretrained
  model to continue them (`eval.contamination.ask_reproduction`) and compares with fresh items of the same family.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

from genforge.io import write_jsonl

# Names, objects, containers and rooms that the world's generators never use (checked by tests/world/test_tom.py).
NAMES = ("Ysolde", "Quenby", "Zebedee", "Oriel", "Tamsin", "Lorcaster", "Wrennie", "Ottoline", "Casimir", "Ione",
         "Barnaby", "Perpetua", "Fenwick", "Idony", "Lysander", "Morwenna", "Ptolemy", "Sabela", "Thaddeus", "Zinnia",
         "Amadeo", "Clementine", "Evadne", "Honora")
OBJECTS = ("thimble", "acorn", "locket", "whistle", "yo-yo", "ribbon", "feather", "seashell", "keyfob",
           "marzipan", "toy soldier", "bauble")
CONTAINERS = ("drawer", "satchel", "hatbox", "teapot", "crate", "canister", "cupboard", "bucket", "barrel", "envelope",
              "sock", "shoebox")
ROOMS = ("attic", "pantry", "greenhouse", "cellar", "parlour", "scullery")

KINDS = ("false_belief", "true_belief", "reality")

# The public test, in its textbook wording: it must never be in the training corpus.
PUBLIC_STORY = ("Sally has a basket. Anne has a box. Sally puts her marble in her basket. Sally goes out for a "
                "walk. Anne takes the marble out of the basket and puts it in her box. Sally comes back. "
                "Where will Sally look for her marble?")
PUBLIC_ANSWER = "basket"


def public_story_in(texts: Iterable[str]) -> bool:
    """Does any text hold the public Sally-Anne story (Sally, Anne, a marble and a basket in one text)?"""
    keys = ("sally", "anne", "marble", "basket")
    return any(all(k in t.lower() for k in keys) for t in texts)


def false_belief_item(rng: random.Random, kind: str = "false_belief") -> dict:
    """One story and question: {"task", "kind", "story", "question", "prompt", "options", "gold_index", "answer",
    "text"} ("text" is the story with its question and answer, as it would appear in a leaked benchmark)."""
    if kind not in KINDS:
        raise ValueError(f"unknown false-belief kind {kind!r}; choose one of {', '.join(KINDS)}")
    a, b = rng.sample(NAMES, 2)
    obj, room = rng.choice(OBJECTS), rng.choice(ROOMS)
    c1, c2 = rng.sample(CONTAINERS, 2)
    away = kind != "true_belief"
    story = (f"{a} and {b} are in the {room}. {a} puts the {obj} in the {c1}. "
             + (f"{a} leaves the {room}. While {a} is away, {b} moves the {obj} to the {c2}. {a} comes back."
                if away else f"{b} moves the {obj} to the {c2} while {a} watches."))
    if kind == "reality":
        question, gold = f"Where is the {obj} now?", c2
    else:
        question, gold = f"Where will {a} look for the {obj} first?", c1 if away else c2
    options = [c1, c2]
    rng.shuffle(options)  # so "the first option" is no strategy
    return {"task": "false_belief", "kind": kind, "story": story, "question": question,
            "prompt": f"{story}\n{question}", "options": options, "gold_index": options.index(gold),
            "answer": gold, "text": f"{story} Question: {question} Answer: in the {gold}."}


def false_belief_items(n: int, seed: int = 0, kinds: tuple[str, ...] = KINDS, salt: str = "test") -> list[dict]:
    """n items cycling over `kinds` (same seed and salt, same items)."""
    rng = random.Random(f"tom-{salt}-{seed}")
    return [false_belief_item(rng, kinds[i % len(kinds)]) for i in range(n)]


def planted_items(seed: int, n: int = 16) -> tuple[list[dict], list[dict]]:
    """(items planted in the corpus, clean items of the same family never shown): false-belief items only."""
    planted = false_belief_items(n, seed, ("false_belief",), salt="planted")
    clean = false_belief_items(n, seed, ("false_belief",), salt="clean")
    return planted, clean


def plant(clean_docs: list[str], out_dir: str | Path, seed: int, n: int = 12, copies: int = 6,
          max_share: float = 0.02) -> dict:
    """Append each planted item to `copies` different clean documents (in place) and write
    `contamination.jsonl` ({"split": "planted" | "clean", "text", ...} rows) beside the corpus.

    Appending rather than adding documents keeps the corpus's document count, order and dedup labels unchanged,
    and the host documents differ, so dedup does not collapse the copies. n * copies documents change, at most
    `max_share` of them (72 of the tiny world's 9,000: 0.8 %). Six copies over ~5 epochs of pretraining give ~30
    exposures per item (measured: with four copies, a 300-step, 1.7-epoch tiny model reproduced planted items no
    better than clean ones).
    """
    n = max(1, min(n, int(len(clean_docs) * max_share) // copies))  # at most max_share of the documents change
    rng = random.Random(f"tom-plant-{seed}")
    planted, clean = planted_items(seed, n)
    hosts = rng.sample(range(len(clean_docs)), min(len(clean_docs), n * copies))
    for k, doc in enumerate(hosts):
        # one newline: corpus.txt separates documents by a blank line, so none may contain one
        clean_docs[doc] = f"{clean_docs[doc]}\n{planted[k % len(planted)]['text']}"
    rows = [{"split": "planted", **it} for it in planted] + [{"split": "clean", **it} for it in clean]
    write_jsonl(Path(out_dir) / "contamination.jsonl", rows)
    return {"planted": len(planted), "clean": len(clean), "host_documents": len(hosts)}
