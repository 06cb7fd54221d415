"""The world as something an agent can search: one sentence per fact, BM25 ranking, multi-hop questions.

`world_entries(w)` states every attribute and relation of the tiny world as a short sentence (the same
facts the corpus describes), each under a *key* that names its subject and relation ("the sibling of Ada
Quill", "Ada Quill lives in"); `KnowledgeBase` adds the post-cutoff knowledge base (`knowledge.jsonl`, keyed by
the fact itself) and ranks keys by BM25 (Robertson & Zaragoza 2009) over lower-cased word tokens, returning
the facts. Ranking keys rather than whole sentences is what makes a look-up "the sibling of X" return X's
sibling fact first, not the fact that names X as someone else's sibling (both hold the same words; measured on
the tiny world, full-sentence BM25 put the right fact first for 0.64-0.68 of first hops). It is the `search`
tool until the retrieval package's search can stand in (same `search(query, k) -> list[str]` shape).
`multihop_questions` asks two-hop questions ("In which town does the sibling of X live?") whose
answers need two look-ups.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from pathlib import Path

from genforge.errors import DataError
from genforge.world.facts import Person, Thing, Town, World

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset("a an the of in is are was to and who what which does do did where".split())


def tokens(text: str) -> list[str]:
    """Lower-cased words minus stop words, plural/3rd-person "s" dropped (friends -> friend, lives -> live)."""
    out = []
    for t in _WORD.findall(text.lower()):
        if t in _STOP:
            continue
        out.append(t[:-1] if len(t) > 3 and t.endswith("s") and not t.endswith("ss") else t)
    return out


def load_world(world_dir: str | Path) -> World:
    """Rebuild the `World` from a generated world folder's world.json."""
    path = Path(world_dir) / "world.json"
    if not path.exists():
        raise DataError(f"{path}: no world.json; run `genforge world --out {world_dir}` first")
    d = json.loads(path.read_text())
    manifest = Path(world_dir) / "manifest.json"
    seed = json.loads(manifest.read_text()).get("seed", 0) if manifest.exists() else 0
    return World(seed=seed, people=[Person(**p) for p in d["people"]], towns=[Town(**t) for t in d["towns"]],
                 things=[Thing(**x) for x in d["objects"]])


def world_entries(w: World) -> list[tuple[str, str]]:
    """(key, fact) for every fact of the world: one relation per sentence, keyed by its subject and relation.

    An object's facts are split (maker, material, year, town) so that a look-up of one relation returns one short
    sentence with the answer at its end, the way `The sibling of X is Y.` does."""
    out = []
    for p in w.people:
        out.append((f"{p.name} lives in", f"{p.name} lives in {p.town}."))
        out.append((f"{p.name} works as a job age", f"{p.name} works as a {p.job} and is {p.age} years old."))
        out.append((f"{p.name} has a pet {p.pet_kind}", f"{p.name} has a {p.pet_kind} named {p.pet_name}."))
        out.append((f"{p.name} likes hobby eats food colour",
                    f"{p.name} likes {p.hobby}, eats {p.food} and loves the colour {p.colour}."))
        if p.friends:
            out.append((f"the friends of {p.name}", f"The friends of {p.name} are {', '.join(p.friends)}."))
        if p.sibling:
            out.append((f"the sibling of {p.name}", f"The sibling of {p.name} is {p.sibling}."))
    for t in w.towns:
        out.append((f"{t.name} river region founded population known for",
                    f"{t.name} lies on the River {t.river} in {t.region}, was founded in {t.founded} "
                    f"and has {t.population} people; it is known for {t.known_for}."))
    for x in w.things:
        out += thing_entries(x.name, x.maker, x.material, x.year, x.town)
    return out


def thing_entries(name: str, maker: str, material: str, year: int, town: str) -> list[tuple[str, str]]:
    """An object's four facts as (key, fact): its maker, material, year and the town that keeps it."""
    cap = name[0].upper() + name[1:]
    return [(f"the maker of {name}", f"The maker of {name} is {maker}."),
            (f"{name} material made of", f"{cap} is made of {material}."),
            (f"{name} year made in", f"{cap} was made in {year}."),
            (f"{name} kept in", f"{cap} is kept in {town}.")]


def world_facts(w: World) -> list[str]:
    """Every fact of the world as one sentence."""
    return [f for _, f in world_entries(w)]


class KnowledgeBase:
    """BM25 search over fact sentences, each ranked by its key (the fact itself when no key is given)."""

    def __init__(self, facts: list[str], k1: float = 1.2, b: float = 0.75, keys: list[str] | None = None):
        if not facts:
            raise DataError("KnowledgeBase: no facts to search")
        if keys is not None and len(keys) != len(facts):
            raise DataError(f"KnowledgeBase: {len(keys)} keys for {len(facts)} facts; give one key per fact")
        self.facts = facts
        self.keys = keys if keys is not None else facts
        self.k1, self.b = k1, b
        self.docs = [Counter(tokens(k)) for k in self.keys]
        self.lens = [sum(d.values()) for d in self.docs]
        self.avg = sum(self.lens) / len(self.lens)
        df: Counter = Counter()
        for d in self.docs:
            df.update(d.keys())
        n = len(facts)
        self.idf = {t: math.log(1 + (n - c + 0.5) / (c + 0.5)) for t, c in df.items()}
        self.index: dict[str, list[int]] = {}
        for i, d in enumerate(self.docs):
            for t in d:
                self.index.setdefault(t, []).append(i)

    @classmethod
    def from_entries(cls, entries: list[tuple[str, str]]) -> KnowledgeBase:
        """From (key, fact) pairs."""
        return cls([f for _, f in entries], keys=[k for k, _ in entries])

    @classmethod
    def from_world(cls, w: World, knowledge_rows: list[dict] | None = None,
                   extra: list[tuple[str, str]] = ()) -> KnowledgeBase:
        """The world's keyed facts, the knowledge-base rows (keyed by their own text) and `extra` (key, fact)."""
        rows = [(r["fact"], r["fact"]) for r in knowledge_rows or []]
        return cls.from_entries(world_entries(w) + rows + list(extra))

    @classmethod
    def from_dir(cls, world_dir: str | Path, extra: list[tuple[str, str]] = ()) -> KnowledgeBase:
        kb_path = Path(world_dir) / "knowledge.jsonl"
        rows = [json.loads(line) for line in kb_path.read_text().splitlines() if line] if kb_path.exists() else []
        return cls.from_world(load_world(world_dir), rows, extra)

    def search(self, query: str, k: int = 3) -> list[str]:
        """The k facts whose keys best match `query` (ties broken by fact order, so results are deterministic)."""
        q = tokens(query)
        scores: dict[int, float] = {}
        for t in set(q):
            for i in self.index.get(t, ()):
                tf = self.docs[i][t]
                norm = tf + self.k1 * (1 - self.b + self.b * self.lens[i] / self.avg)
                scores[i] = scores.get(i, 0.0) + self.idf[t] * tf * (self.k1 + 1) / norm
        best = sorted(scores, key=lambda i: (-scores[i], i))[:k]
        return [self.facts[i] for i in best]


def multihop_questions(w: World, n: int, seed: int = 0) -> list[dict]:
    """Two-hop questions: the town of a person's sibling, or of their only friend, or of an object's maker.

    Rows: {"question", "answer", "hops": [first look-up, second look-up], "bridge": the middle entity}.
    """
    rng = random.Random(f"multihop-{seed}")
    rows: dict[str, dict] = {}
    people = list(w.people)
    for _ in range(n * 30):
        if len(rows) == n:
            break
        kind = rng.randrange(3)
        if kind == 0:
            p = rng.choice(people)
            if not p.sibling:
                continue
            mid = w.person[p.sibling]
            q = f"In which town does the sibling of {p.name} live?"
            hops = [f"The sibling of {p.name} is {mid.name}.", f"{mid.name} lives in {mid.town}."]
        elif kind == 1:
            p = rng.choice(people)
            if len(p.friends) != 1:
                continue
            mid = w.person[p.friends[0]]
            q = f"In which town does the friend of {p.name} live?"
            hops = [f"The friends of {p.name} are {mid.name}.", f"{mid.name} lives in {mid.town}."]
        else:
            x = rng.choice(w.things)
            mid = w.person[x.maker]
            q = f"In which town does the maker of {x.name} live?"
            hops = [f"The maker of {x.name} is {mid.name}.", f"{mid.name} lives in {mid.town}."]
        rows.setdefault(q, {"question": q, "answer": mid.town, "hops": hops, "bridge": mid.name})
    return list(rows.values())
