"""The world's map: planted town coordinates, and travel text that states them correctly."""

import random
import re

from genforge.world import geo
from genforge.world.corpus import DOC_MIX, iter_clean_documents
from genforge.world.facts import build_world


def test_coordinates_are_deterministic_on_the_map_and_clustered_by_region():
    w = build_world(0, 60, 30, 10)
    c = geo.town_coordinates(w)
    assert c == geo.town_coordinates(build_world(0, 60, 30, 10)) and len(c) == 30
    assert all(0 <= x <= geo.MAP_KM and 0 <= y <= geo.MAP_KM for x, y in c.values())
    # towns sit nearer their own region's centre than the map's regions are apart
    for t in w.towns:
        cx, cy = geo.REGION_CENTRES[t.region]
        x, y = c[t.name]
        assert ((x - cx) ** 2 + (y - cy) ** 2) ** 0.5 < 4.5 * geo.SPREAD_KM


def test_compass():
    assert geo.compass(0, 5) == "north" and geo.compass(3, 3) == "north-east" and geo.compass(-4, 0) == "west"
    assert geo.compass(1, -1) == "south-east" and geo.compass(0, -2) == "south"


def test_geo_text_states_true_distances_and_directions():
    w = build_world(0, 60, 30, 10)
    c = geo.town_coordinates(w)
    rng = random.Random(0)
    checked = 0
    pat = re.compile(r"([A-Z][a-z]+) is (\d+) km ([a-z-]+) of ([A-Z][a-z]+)\.")
    for _ in range(200):
        for a, d, direction, b in pat.findall(geo.geo_document(rng, w, c)):
            assert (int(d), direction) == geo.relation(c, a, b)
            checked += 1
    assert checked > 50


def test_geo_documents_are_a_small_share_of_the_corpus():
    cuts = dict(DOC_MIX)
    assert cuts["geo"] == 1.0 and 1.0 - cuts["qa"] <= 0.03 + 1e-9
    w = build_world(0, 40, 8, 12)
    gen = iter_clean_documents(w, random.Random(0))
    docs = [next(gen) for _ in range(3000)]
    share = sum(" km " in d for d in docs) / len(docs)
    assert 0.01 < share <= 0.03
