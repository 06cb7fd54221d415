"""The fictional world itself: people, towns and objects with attributes and relations.

`build_world(seed, n_people, n_towns, n_objects)` is the single source of truth; the corpus, the
tasks, the preferences and the knowledge base all describe the same `World`, so a fact a model
reads in pretraining is the fact it is quizzed on later.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from genforge.world import names

# The corpus describes the world up to this year; the knowledge base holds events after it.
CUTOFF_YEAR = 2024


@dataclass
class Town:
    name: str
    river: str
    population: int
    founded: int
    known_for: str
    region: str


@dataclass
class Person:
    name: str
    first: str
    last: str
    pronoun: str  # "she" | "he"
    age: int
    town: str
    job: str
    pet_kind: str
    pet_name: str
    hobby: str
    food: str
    colour: str
    friends: list[str] = field(default_factory=list)
    sibling: str | None = None

    @property
    def possessive(self) -> str:
        return "her" if self.pronoun == "she" else "his"

    @property
    def born(self) -> int:
        return CUTOFF_YEAR - self.age


@dataclass
class Thing:
    name: str  # e.g. "the Brass Compass"
    kind: str
    material: str
    maker: str  # a person's name
    town: str
    year: int


@dataclass
class World:
    seed: int
    people: list[Person]
    towns: list[Town]
    things: list[Thing]

    def __post_init__(self) -> None:
        self.person = {p.name: p for p in self.people}
        self.town = {t.name: t for t in self.towns}


def _unique(rng: random.Random, make, n: int, what: str) -> list[str]:
    """Draw `n` distinct values from `make(rng)`; fail loudly rather than loop forever."""
    seen: dict[str, None] = {}
    for _ in range(n * 50):
        seen.setdefault(make(rng), None)
        if len(seen) == n:
            return list(seen)
    raise ValueError(f"cannot make {n} distinct {what}; the name lists are too small for this size")


def build_world(seed: int = 0, n_people: int = 400, n_towns: int = 40, n_objects: int = 80) -> World:
    """Build a deterministic world: same arguments, same world."""
    rng = random.Random(f"world-{seed}")
    town_names = _unique(rng, lambda r: r.choice(names.TOWN_PREFIXES) + r.choice(names.TOWN_SUFFIXES),
                         n_towns, "town names")
    towns = [
        Town(name=t, river=rng.choice(names.RIVERS), population=rng.randrange(300, 60000, 10),
             founded=rng.randint(1120, 1890), known_for=rng.choice(names.KNOWN_FOR),
             region=rng.choice(names.REGIONS))
        for t in town_names
    ]
    firsts = [(n, "she") for n in names.FEMALE_NAMES] + [(n, "he") for n in names.MALE_NAMES]
    full = _unique(rng, lambda r: f"{r.choice(firsts)[0]} {r.choice(names.SURNAMES)}", n_people,
                   "person names")
    pronoun_of = dict(firsts)
    people = []
    for name in full:
        first, last = name.split(" ", 1)
        people.append(Person(
            name=name, first=first, last=last, pronoun=pronoun_of[first], age=rng.randint(8, 90),
            town=rng.choice(town_names), job=rng.choice(list(names.JOBS)), pet_kind=rng.choice(names.PETS),
            pet_name=rng.choice(names.PET_NAMES), hobby=rng.choice(names.HOBBIES), food=rng.choice(names.FOODS),
            colour=rng.choice(names.COLOURS)))
    # Relations: each person gets 1-3 friends (symmetric) and some get a sibling with the same surname.
    for p in people:
        for q in rng.sample(people, k=rng.randint(1, 3)):
            if q is not p and q.name not in p.friends and len(q.friends) < 5:
                p.friends.append(q.name)
                q.friends.append(p.name)
    by_last: dict[str, list[Person]] = {}
    for p in people:
        by_last.setdefault(p.last, []).append(p)
    for group in by_last.values():
        rng.shuffle(group)
        for a, b in zip(group[0::2], group[1::2]):
            if rng.random() < 0.6:
                a.sibling, b.sibling = b.name, a.name
    thing_names = _unique(rng, lambda r: f"the {r.choice(names.OBJECT_ADJECTIVES)} "
                          f"{r.choice(names.OBJECT_KINDS).title()}", n_objects, "object names")
    things = [
        Thing(name=t, kind=t.split(" ", 2)[2].lower(), material=rng.choice(names.MATERIALS),
              maker=rng.choice(people).name, town=rng.choice(town_names), year=rng.randint(1500, 2015))
        for t in thing_names
    ]
    return World(seed=seed, people=people, towns=towns, things=things)
