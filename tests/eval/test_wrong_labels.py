import random

import pytest

from genforge.eval.lm import StubLM
from genforge.eval.wrong_labels import (
    LabeledItem,
    build_prompts,
    entity_type_items,
    relabel,
    render,
    wrong_label_scores,
)

LABELS = ["person", "town"]
DEMOS = [LabeledItem(f"p{i}", "person") for i in range(10)] + [LabeledItem(f"t{i}", "town") for i in range(10)]


def test_relabel_modes():
    rng = random.Random(0)
    assert relabel(DEMOS, LABELS, "correct", rng) == DEMOS
    flipped = relabel(DEMOS, LABELS, "flipped", rng)
    assert all(f.label != d.label and f.text == d.text for f, d in zip(flipped, DEMOS))
    rand = relabel(DEMOS * 5, LABELS, "random", random.Random(1))
    agree = sum(r.label == d.label for r, d in zip(rand, DEMOS * 5)) / len(rand)
    assert 0.3 < agree < 0.7  # uniform labels agree with the gold half the time
    with pytest.raises(ValueError):
        relabel(DEMOS, LABELS, "shuffled", rng)


def test_modes_differ_only_in_labels():
    test = [LabeledItem("q1", "town"), LabeledItem("q2", "person")]
    c = build_prompts(DEMOS, test, LABELS, 4, "correct")
    f = build_prompts(DEMOS, test, LABELS, 4, "flipped")
    strip = [[ln for ln in p.splitlines() if not ln.startswith("Type:")] for p in c]
    assert strip == [[ln for ln in p.splitlines() if not ln.startswith("Type:")] for p in f]
    assert c != f and c[0].endswith("Input: q1\nType:")
    assert render([LabeledItem("a", "town")], "b") == "Input: a\nType: town\n\nInput: b\nType:"


def copier(context: str, continuation: str) -> float:
    """A stub that copies the label of the last demonstration whose input shares the query's first letter."""
    query = context.rsplit("Input: ", 1)[1].split("\n")[0]
    blocks = context.split("\n\n")[:-1]
    for b in reversed(blocks):
        inp, lab = b.split("\n")
        if inp[len("Input: ")][0] == query[0]:
            return 0.0 if continuation.strip() == lab.split(": ")[1] else -1.0
    return 0.0 if continuation.strip() == "town" else -1.0


def test_a_model_that_follows_demonstrations_drops_under_flipped_labels():
    test = [LabeledItem(f"p{i}x", "person") for i in range(8)] + [LabeledItem(f"t{i}x", "town") for i in range(8)]
    s = wrong_label_scores(StubLM(score=copier), DEMOS, test, LABELS, k=4, calibrate=False)
    mean = {k: sum(v) / len(v) for k, v in s.items()}
    assert mean["correct"] == 1.0 and mean["flipped"] == 0.0 and 0.0 < mean["random"] < 1.0
    assert mean["zero_shot"] == 0.5


def test_entity_type_items_are_balanced_and_disjoint():
    tables = {"people": [{"name": f"P {i}"} for i in range(30)], "towns": [{"name": f"T{i}"} for i in range(12)],
              "objects": [{"name": f"the O{i}"} for i in range(20)]}
    train, test = entity_type_items(tables, 30, 30)
    assert {t.text for t in train}.isdisjoint({t.text for t in test})
    assert sorted({t.label for t in test}) == ["object", "person", "town"]
    assert sum(t.label == "town" for t in test) == sum(t.label == "person" for t in test) == 6


def test_contextual_calibration_removes_a_label_prior():
    """A stub with a strong prior for "person" and a weak input signal (names starting with t are towns)."""
    def biased(context: str, continuation: str) -> float:
        query = context.rsplit("Input: ", 1)[1].split("\n")[0]
        prior = 0.0 if continuation.strip() == "person" else -5.0
        signal = 1.0 if (query.startswith("t") == (continuation.strip() == "town")) else 0.0
        return prior + signal

    test = [LabeledItem(f"p{i}x", "person") for i in range(5)] + [LabeledItem(f"t{i}x", "town") for i in range(5)]
    raw = wrong_label_scores(StubLM(score=biased), DEMOS, test, LABELS, calibrate=False)
    cal = wrong_label_scores(StubLM(score=biased), DEMOS, test, LABELS, calibrate=True)
    assert sum(raw["correct"]) / 10 == 0.5 and sum(cal["correct"]) / 10 == 1.0
