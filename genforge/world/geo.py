"""The world's map: planted 2-D town coordinates and the travel text that mentions them.

Every town gets a point (x east, y north, in km on a 100 x 100 km map) drawn around the centre of its
region, and the regions sit where their names say (the Northern Hills in the north, the Salt Coast in
the south, ...). The corpus never states a coordinate: it says how far and in which compass direction
one town lies from another ("Ashford is 40 km north-east of Millmere") in travel notes and gazetteer
pages, as real text talks about places. Whether a model's town-name representations hold the map is
then a measurable question (`genforge.interp.worldmap`; Gurnee & Tegmark 2023, "Language models
represent space and time").

The coordinates come from their own seeded stream (`geo-<seed>`), so adding the map changed nothing in
`build_world`'s draws.
"""

from __future__ import annotations

import math
import random

from genforge.world.facts import World

MAP_KM = 100.0
# Region centres (x east, y north in km): each where its name puts it; the Green Valley in the middle.
REGION_CENTRES = {
    "the Northern Hills": (50.0, 85.0), "the Green Valley": (50.0, 50.0), "the Salt Coast": (50.0, 12.0),
    "the Western Moors": (12.0, 50.0), "the Lake Country": (18.0, 85.0), "the Eastern Downs": (88.0, 50.0),
}
SPREAD_KM = 11.0  # standard deviation of a town around its region's centre
_COMPASS = ("east", "north-east", "north", "north-west", "west", "south-west", "south", "south-east")


def town_coordinates(w: World) -> dict[str, tuple[float, float]]:
    """{town name: (x, y)} in km, deterministic in the world's seed; towns of one region cluster."""
    rng = random.Random(f"geo-{w.seed}")
    out = {}
    for t in w.towns:
        cx, cy = REGION_CENTRES.get(t.region, (MAP_KM / 2, MAP_KM / 2))
        x = min(MAP_KM, max(0.0, rng.gauss(cx, SPREAD_KM)))
        y = min(MAP_KM, max(0.0, rng.gauss(cy, SPREAD_KM)))
        out[t.name] = (round(x, 1), round(y, 1))
    return out


def compass(dx: float, dy: float) -> str:
    """The 8-point compass direction of the vector (dx east, dy north)."""
    sector = round(math.degrees(math.atan2(dy, dx)) / 45.0) % 8
    return _COMPASS[sector]


def relation(coords: dict[str, tuple[float, float]], a: str, b: str) -> tuple[int, str]:
    """(distance in km rounded to 1, direction) of town a as seen from town b."""
    (xa, ya), (xb, yb) = coords[a], coords[b]
    return max(1, round(math.hypot(xa - xb, ya - yb))), compass(xa - xb, ya - yb)


def neighbours(coords: dict[str, tuple[float, float]], a: str, k: int) -> list[str]:
    """The k towns nearest to a (nearest first)."""
    xa, ya = coords[a]
    others = sorted((math.hypot(x - xa, y - ya), n) for n, (x, y) in coords.items() if n != a)
    return [n for _, n in others[:k]]


def geo_document(rng: random.Random, w: World, coords: dict[str, tuple[float, float]] | None = None) -> str:
    """One document about where towns lie: travel notes along a route of near neighbours, or a gazetteer
    page giving one town's distances and directions to its neighbours."""
    coords = coords or town_coordinates(w)
    a = rng.choice(w.towns)
    if rng.random() < 0.5:  # travel notes: a walk from town to nearby town
        route, here = [a.name], a.name
        for _ in range(rng.randint(2, 4)):
            nxt = [n for n in neighbours(coords, here, 4) if n not in route]
            if not nxt:
                break
            here = rng.choice(nxt)
            route.append(here)
        head = rng.choice((f"Travel notes from {a.region}.", f"A walking route through {a.region}.",
                           f"Notes from a journey that began in {a.name}.", "From a traveller's diary."))
        lines = [head]
        for prev, cur in zip(route, route[1:]):
            d, direc = relation(coords, cur, prev)
            lines.append(rng.choice((f"From {prev} the road runs {d} km {direc} to {cur}.",
                                     f"{cur} is {d} km {direc} of {prev}.",
                                     f"Leaving {prev}, we walked {d} km {direc} and reached {cur}.",
                                     f"After {prev} comes {cur}, {d} km to the {direc}.")))
        end = route[-1]
        lines.append(rng.choice((f"{end} lies in {w.town[end].region}.", f"We rested in {end} for the night.",
                                 f"The inn at {end} was warm and dry.", "")))
        return " ".join(x for x in lines if x)
    near = neighbours(coords, a.name, rng.randint(3, 5))
    head = rng.choice((f"{a.name}: distances to nearby towns.", f"Gazetteer: {a.name}, in {a.region}.",
                       f"Where {a.name} lies.", f"Roads out of {a.name}."))
    lines = [head]
    for b in near:
        d, direc = relation(coords, b, a.name)
        lines.append(rng.choice((f"{b} is {d} km {direc} of {a.name}.", f"{b}: {d} km to the {direc}.",
                                 f"It is {d} km from {a.name} to {b}, heading {direc}.")))
    return "\n".join(lines)
