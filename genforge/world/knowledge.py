"""A knowledge base of world facts the corpus never mentions: events after its cutoff year.

A model pretrained on the corpus cannot know them (elections, new shops, bridges, comets, moves after
`CUTOFF_YEAR`), so questions about them measure what retrieval (RAG) adds. Some facts update the
corpus (a person moves town), which also tests that retrieved context wins over stale memory.
Rows: `{"id", "fact", "question", "answer", "year", "keyword"}`; `keyword` is a string that appears
in no corpus document (the tests check it).
"""

from __future__ import annotations

import random
from pathlib import Path

from genforge.io import write_jsonl
from genforge.world import names
from genforge.world.facts import CUTOFF_YEAR, World

# Chosen to share no word with the corpus's object, place and family names, so the names are new.
_SHOP_ADJ = ("Sleepy", "Merry", "Humble", "Velvet", "Rusty", "Dancing", "Lucky", "Frosty", "Jolly", "Tipsy")
_SHOP_NOUN = ("Acorn", "Thimble", "Badger", "Teacup", "Anchor", "Walrus", "Pumpkin", "Mitten", "Saucer", "Lobster")
_BRIDGE = ("Harvest", "Swallow", "Jubilee", "Morning", "Cobble", "Willow", "Beacon", "Lark", "Meadow", "Ember")
_COMET = ("Velloran", "Ostrid", "Kaelith", "Brumel", "Zanthe", "Orvane", "Istrel", "Mornay", "Thessaly", "Quorin")


def _fact(rng: random.Random, w: World) -> dict:
    p = rng.choice(w.people)
    y = CUTOFF_YEAR + rng.randint(1, 6)
    kind = rng.randrange(6)
    if kind == 0:
        t = rng.choice(w.towns).name
        return {"fact": f"In {y}, {p.name} was elected mayor of {t}.",
                "question": f"Who was elected mayor of {t} in {y}?",
                "answer": p.name, "year": y, "keyword": f"mayor of {t}"}
    if kind == 1:
        shop = f"The {rng.choice(_SHOP_ADJ)} {rng.choice(_SHOP_NOUN)}"
        return {"fact": f"In {y}, {p.name} opened a shop called {shop} in {p.town}.",
                "question": f"What is the name of the shop {p.name} opened in {y}?", "answer": shop, "year": y,
                "keyword": shop}
    if kind == 2:
        t = w.town[p.town]
        bridge = f"{rng.choice(_BRIDGE)} Bridge"
        return {"fact": f"In {y}, the {bridge} was built over the River {t.river} at {t.name}.",
                "question": f"What is the name of the bridge built over the River {t.river} at {t.name} in {y}?",
                "answer": bridge, "year": y, "keyword": bridge}
    if kind == 3:
        comet = f"Comet {rng.choice(_COMET)}-{rng.randint(2, 99)}"
        return {"fact": f"In {y}, {p.name} discovered a comet and named it {comet}.",
                "question": f"What did {p.name} name the comet {p.pronoun} discovered in {y}?", "answer": comet,
                "year": y, "keyword": comet}
    if kind == 4:
        new = rng.choice([t.name for t in w.towns if t.name != p.town])
        return {"fact": f"In {y}, {p.name} moved from {p.town} to {new}.",
                "question": f"In which town has {p.name} lived since moving in {y}?", "answer": new, "year": y,
                "keyword": f"moved from {p.town} to {new}"}
    pet = rng.choice(names.PETS)
    pet_name = f"{rng.choice(names.PET_NAMES)} the {rng.choice(('Second', 'Bold', 'Younger', 'Brave'))}"
    return {"fact": f"In {y}, {p.name} adopted a {pet} named {pet_name}.",
            "question": f"What is the name of the {pet} {p.name} adopted in {y}?", "answer": pet_name, "year": y,
            "keyword": pet_name}


def make_knowledge(w: World, n: int, seed: int) -> list[dict]:
    """`n` post-cutoff facts with distinct questions."""
    rng = random.Random(f"knowledge-{seed}")
    rows: dict[str, dict] = {}
    for _ in range(n * 20):
        if len(rows) == n:
            break
        row = _fact(rng, w)
        rows.setdefault(row["question"], row)
    return [{"id": f"kb-{i:05d}", **r} for i, r in enumerate(rows.values())]


def write_knowledge(out_dir: str | Path, w: World, n: int, seed: int) -> dict:
    rows = make_knowledge(w, n, seed)
    path = Path(out_dir) / "knowledge.jsonl"
    write_jsonl(path, rows)
    return {"rows": len(rows), "path": str(path)}
