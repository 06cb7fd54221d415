"""A small text world for agents, seeded from the tiny world: towns joined by roads, people, objects.

The agent sees only the town it stands in (its roads, the people and objects there) and what people tell
it: a partial observation. Actions are text, so a language model can play as well as a scripted policy:

    go TOWN                 walk along a road (fails if there is no road, or the road is flooded)
    take OBJECT             pick up an object lying here
    give OBJECT to PERSON   hand a carried object to someone here (the goal is usually this)
    ask PERSON about NAME   a person knows where people of their own and neighbouring towns live, and
                            where their friends live
    look                    observe again

Goals read "bring the lamp from Larkcombe to Petra Vell": the object's town is given, the person's town
is not (ask around). Some roads are flooded (a failed move, discovered only by trying), which is what
makes re-planning matter.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from genforge.errors import ConfigError
from genforge.world.facts import World


@dataclass
class Observation:
    town: str
    roads: list[str]
    people: list[str]
    objects: list[str]
    carrying: list[str]
    message: str = ""  # the result of the last action ("You take ...", "The road to X is flooded.")

    @property
    def text(self) -> str:
        return (f"{self.message} You are in {self.town}. Roads lead to {', '.join(self.roads) or 'nowhere'}. "
                f"People here: {', '.join(self.people) or 'nobody'}. "
                f"Objects here: {', '.join(self.objects) or 'none'}. "
                f"You carry: {', '.join(self.carrying) or 'nothing'}.").strip()


@dataclass
class Goal:
    obj: str
    from_town: str
    person: str

    @property
    def text(self) -> str:
        return f"bring {self.obj} from {self.from_town} to {self.person}"


@dataclass
class TextWorld:
    roads: dict[str, list[str]]
    home: dict[str, str]  # person -> town
    friends: dict[str, list[str]]
    objects: dict[str, str]  # object -> town where it lies ("" when carried or given)
    flooded: set[frozenset] = field(default_factory=set)
    start: str = ""
    goal: Goal | None = None
    here: str = ""
    carrying: list[str] = field(default_factory=list)
    given: dict[str, str] = field(default_factory=dict)  # object -> person
    steps: int = 0

    def reset(self) -> Observation:
        self.here, self.steps = self.start, 0
        return self.observe("")

    def observe(self, message: str) -> Observation:
        return Observation(self.here, sorted(self.roads[self.here]),
                           sorted(p for p, t in self.home.items() if t == self.here),
                           sorted(o for o, t in self.objects.items() if t == self.here), list(self.carrying), message)

    @property
    def success(self) -> bool:
        return self.goal is not None and self.given.get(self.goal.obj) == self.goal.person

    def step(self, action: str) -> Observation:
        """Apply one text action; malformed or impossible actions cost a step and say why."""
        self.steps += 1
        words = action.strip()
        verb, _, rest = words.partition(" ")
        if verb == "go":
            if rest not in self.roads[self.here]:
                return self.observe(f"There is no road from {self.here} to {rest}.")
            if frozenset((self.here, rest)) in self.flooded:
                return self.observe(f"The road to {rest} is flooded.")
            self.here = rest
            return self.observe(f"You walk to {rest}.")
        if verb == "take":
            if self.objects.get(rest) != self.here:
                return self.observe(f"There is no {rest} here.")
            self.objects[rest] = ""
            self.carrying.append(rest)
            return self.observe(f"You take {rest}.")
        if verb == "give" and " to " in rest:
            obj, person = rest.split(" to ", 1)
            if obj not in self.carrying:
                return self.observe(f"You do not carry {obj}.")
            if self.home.get(person) != self.here:
                return self.observe(f"{person} is not here.")
            self.carrying.remove(obj)
            self.given[obj] = person
            return self.observe(f"You give {obj} to {person}.")
        if verb == "ask" and " about " in rest:
            person, name = rest.split(" about ", 1)
            if self.home.get(person) != self.here:
                return self.observe(f"{person} is not here.")
            town = self.home.get(name)
            if town and (town == self.here or town in self.roads[self.here] or name in self.friends.get(person, ())):
                return self.observe(f"{person} says: {name} lives in {town}.")
            return self.observe(f"{person} says: I do not know where {name} lives.")
        if verb == "look":
            return self.observe("")
        return self.observe(f"I do not understand {action!r}; use go, take, give ... to ..., ask ... about ..., look.")


def make_env(w: World, seed: int, n_towns: int = 8, people_per_town: int = 2, extra_roads: int = 3,
             n_flooded: int = 2) -> TextWorld:
    """A connected road map over `n_towns` of the world's towns with one goal; same seed, same env."""
    rng = random.Random(f"env-{seed}")
    if n_towns > len(w.towns):
        raise ConfigError(f"make_env: n_towns={n_towns} but the world has {len(w.towns)} towns")
    towns = rng.sample([t.name for t in w.towns], n_towns)
    roads: dict[str, list[str]] = {t: [] for t in towns}
    edges = set()
    for i in range(1, n_towns):  # a random tree keeps the map connected...
        edges.add(frozenset((towns[i], towns[rng.randrange(i)])))
    tree = set(edges)
    for _ in range(extra_roads * 10):  # ...and extra roads make loops, so there are detours
        if len(edges) >= len(tree) + extra_roads:
            break
        a, b = rng.sample(towns, 2)
        edges.add(frozenset((a, b)))
    for e in edges:
        a, b = sorted(e)
        roads[a].append(b)
        roads[b].append(a)
    # Flood only loop roads, so every town stays reachable.
    loops = sorted((e for e in edges if e not in tree), key=sorted)
    flooded = set(rng.sample(loops, min(n_flooded, len(loops))))
    home: dict[str, str] = {}
    for t in towns:
        residents = [p for p in w.people if p.town == t][:people_per_town]
        home.update({p.name: t for p in residents})
    friends = {p.name: [f for f in p.friends if f in home] for p in w.people if p.name in home}
    objects = {x.name: x.town for x in w.things if x.town in roads}
    start = rng.choice(towns)
    obj_choices = [o for o, t in sorted(objects.items()) if t != start]
    person_choices = [p for p in sorted(home) if home[p] != start]
    if not obj_choices or not person_choices:
        raise ConfigError(f"make_env(seed={seed}): no object or person away from the start; use more towns")
    obj = rng.choice(obj_choices)
    person = rng.choice([p for p in person_choices if home[p] != objects[obj]] or person_choices)
    env = TextWorld(roads=roads, home=home, friends=friends, objects=objects, flooded=flooded, start=start,
                    goal=Goal(obj, objects[obj], person))
    env.reset()
    return env
