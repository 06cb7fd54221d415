import random

from genforge.world import names, tom
from genforge.world.corpus import write_corpus
from genforge.world.facts import build_world


def test_items_are_consistent():
    for kind in tom.KINDS:
        it = tom.false_belief_item(random.Random(3), kind)
        c1, c2 = it["options"]
        assert it["answer"] == it["options"][it["gold_index"]]
        want = {"false_belief": c1, "true_belief": c2, "reality": c2}[kind]
        assert it["answer"] == want and it["text"].endswith(f"in the {want}.")
        assert it["prompt"].startswith(it["story"])


def test_names_and_objects_are_unseen_by_the_world():
    pools = (names.FEMALE_NAMES, names.MALE_NAMES, names.SURNAMES, names.OBJECT_KINDS, names.ITEMS, names.PLACES)
    world_words = {w.lower() for pool in pools for x in pool for w in x.split()}
    for pool in (tom.NAMES, tom.OBJECTS, tom.CONTAINERS, tom.ROOMS):
        for x in pool:
            assert not set(x.lower().split()) & world_words, x


def test_planted_items_are_in_the_corpus_and_the_public_story_is_not(tmp_path):
    w = build_world(0, 40, 8, 12)
    write_corpus(tmp_path, w, 0, 400)
    rows = [__import__("json").loads(line) for line in (tmp_path / "contamination.jsonl").read_text().splitlines()]
    corpus = (tmp_path / "corpus.txt").read_text()
    planted = [r for r in rows if r["split"] == "planted"]
    clean = [r for r in rows if r["split"] == "clean"]
    assert planted and len(planted) == len(clean)
    assert all(corpus.count(r["text"]) >= 2 for r in planted)
    assert not any(r["text"] in corpus for r in clean)
    assert not tom.public_story_in(corpus.split("\n\n"))
    assert tom.public_story_in([tom.PUBLIC_STORY])
