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

# Entity frequency like a real corpus (Kandpal et al. 2023, "Large language models struggle to learn long-tail
# knowledge"): one person in 12.5 is well known, and wherever the corpus picks a person at random a well-known one
# is FAME_WEIGHT times as likely as anyone else. With 32 of 400 people and weight 16, 58 % of the draws go to the
# head: each well-known person is drawn 7.3x as often as under a uniform draw, each of the long tail 0.45x.
# Measured at tiny (seed 0): the head's jobs are stored (4-option cloze 0.63 vs 0.28 for the tail), their towns
# barely (0.33-0.41); 50 people at weight 7 (4x each) stored neither clearly (0.46 / 0.50) and lost the SFT
# model's worked sums (0.38 -> 0.00), this setting kept them (0.22).
FAMOUS_FRACTION = 0.08
FAME_WEIGHT = 16


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
        # The well-known people: drawn from a generator of their own, so the rest of the world is as it was, and
        # derived from (seed, people) alone, so a world rebuilt from world.json knows them too.
        n = min(len(self.people), max(1, round(len(self.people) * FAMOUS_FRACTION))) if self.people else 0
        picks = sorted(random.Random(f"fame-{self.seed}").sample(range(len(self.people)), n))
        self.famous: list[str] = [self.people[i].name for i in picks]
        self._famous = famous = frozenset(self.famous)
        # Draw table for `pick_person`: each well-known person FAME_WEIGHT times, everyone else once. One
        # `rng.choice` over it costs the caller's generator one draw, as `rng.choice(self.people)` did.
        self.fame_pool: list[Person] = [q for p in self.people for q in [p] * (FAME_WEIGHT if p.name in famous else 1)]

    def is_famous(self, name: str) -> bool:
        return name in self._famous


def pick_person(rng: random.Random, w: World) -> Person:
    """A person as the corpus mentions one: well-known people FAME_WEIGHT times as often as the long tail."""
    return rng.choice(w.fame_pool)


def pick_two_people(rng: random.Random, w: World) -> tuple[Person, Person]:
    """Two different people, each drawn as `pick_person` draws (redrawn while equal)."""
    p = pick_person(rng, w)
    for _ in range(100):
        q = pick_person(rng, w)
        if q is not p:
            return p, q
    return p, next(q for q in w.people if q is not p)


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
