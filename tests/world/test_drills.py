"""Drills: fresh reasoning rows for the chat model's mix, never a scored question, seeded, in the train phrasings."""

import pytest

from genforge.errors import ConfigError
from genforge.world.drills import drill_rows, question_key
from genforge.world.facts import build_world
from genforge.world.tasks import build_task_splits, is_correct


@pytest.fixture(scope="module")
def world():
    return build_world(0, 60, 12, 20)


def test_drills_have_the_asked_counts_and_never_a_scored_question(world):
    splits = build_task_splits(world, 0, 20, 10, 30, 10)
    scored = {question_key(r) for s in ("val", "test", "heldout") for r in splits[s]}
    before = set(scored)
    rows = drill_rows(world, {"arithmetic": 120, "coin_flip": 40, "last_letter": 40}, seed=0, exclude=scored)
    counts = {t: sum(r["task"] == t for r in rows) for t in ("arithmetic", "coin_flip", "last_letter")}
    assert counts == {"arithmetic": 120, "coin_flip": 40, "last_letter": 40}
    keys = [question_key(r) for r in rows]
    assert not set(keys) & before and len(set(keys)) == len(keys)  # fresh and distinct
    assert set(keys) <= scored  # the exclusion set is updated, so a second call draws others
    assert all(r["drill"] and is_correct(r["task"], r["response"], r["answer"]) for r in rows)


def test_drills_are_seeded_and_phrased_like_the_train_split(world):
    a = drill_rows(world, {"arithmetic": 200}, seed=3)
    assert a == drill_rows(world, {"arithmetic": 200}, seed=3)
    assert a != drill_rows(world, {"arithmetic": 200}, seed=4)
    wrapped = sum(r["prompt"] != r["prompts"][r["style"]] for r in a) / len(a)
    assert 0.45 < wrapped < 0.75  # tasks.PHRASED_SHARE (0.6) of rows in an instruction template
    styles = {r["style"] for r in a}
    assert styles == {"cot", "direct"}  # direct answers are trained too: the direct baseline is a format it knows


def test_drills_reject_an_unknown_task(world):
    with pytest.raises(ConfigError, match="no generator"):
        drill_rows(world, {"sudoku": 3}, seed=0)
