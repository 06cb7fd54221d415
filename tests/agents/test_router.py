"""The router on a planted split: math prompts suit one specialist, summaries the other."""

from __future__ import annotations

import random

import numpy as np

from genforge.agents.llm import ScriptedModel
from genforge.agents.router import Router, best_labels, compare, critique_many, critique_rounds, hashed_features
from genforge.world.facts import build_world
from genforge.world.tasks import arithmetic, summarization

W = build_world(0, 40, 8, 12)


def _split(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Half arithmetic, half summarisation; model 0 (math) is right on 90 % of math and 20 % of summaries,
    model 1 (summary) the reverse. Which one is right is planted per item."""
    rng = random.Random(seed)
    prompts, scores = [], []
    for i in range(n):
        is_math = i % 2 == 0
        prompts.append((arithmetic if is_math else summarization)(rng, W)["prompt"])
        p_math, p_sum = (0.9, 0.2) if is_math else (0.2, 0.9)
        scores.append([float(rng.random() < p_math), float(rng.random() < p_sum)])
    return prompts, np.array(scores)


def test_best_labels_prefers_cheaper_on_ties():
    assert best_labels(np.array([[1, 1], [0, 1], [0, 0]]), costs=[2.0, 1.0]).tolist() == [1, 1, 1]
    assert best_labels(np.array([[1, 0]]), costs=[2.0, 1.0]).tolist() == [0]


def test_router_beats_each_specialist_and_approaches_oracle():
    names, costs = ["math", "summary"], [1.0, 1.0]
    tr_p, tr_s = _split(200, 0)
    te_p, te_s = _split(200, 1)
    router = Router(names, costs).fit(hashed_features(tr_p), tr_s)
    chosen = router.predict(hashed_features(te_p))
    kinds = np.arange(200) % 2  # 0 = math, 1 = summary: the right specialist per kind
    assert (chosen == kinds).mean() >= 0.95  # it learned the prompt type, not the item noise
    rows = {r["system"]: r for r in compare(te_s, costs, names, chosen)}
    for spec in ("only math", "only summary"):
        assert rows["router"]["accuracy"] > rows[spec]["ci"][1]  # above the specialist's whole interval
    assert rows["oracle"]["accuracy"] >= rows["router"]["accuracy"]
    assert rows["router"]["accuracy"] >= 0.8


def test_router_cost_counts_choices():
    rows = {r["system"]: r for r in compare(np.array([[1, 1], [1, 0]]), [1.0, 5.0], ["a", "b"], np.array([1, 1]))}
    assert rows["router"]["cost"] == 5.0 and rows["router"]["accuracy"] == 0.5
    assert rows["oracle"]["cost"] == 1.0 and rows["oracle"]["accuracy"] == 1.0


def test_critique_rounds_transcript():
    a = ScriptedModel([" 41", " 42"])
    b = ScriptedModel([" 41 is off by one. 42"])
    out = critique_rounds(a, b, "What is 6 * 7?", rounds=1)
    assert out["answer"] == "42"
    assert [s for s, _ in out["transcript"]] == ["A", "B", "A"]
    assert "Proposed answer: 41" in b.prompts[0] and "A critic says: 41 is off by one. 42" in a.prompts[1]


def test_router_equals_oracle_when_a_feature_decides_exactly():
    """Planted: the prompt's family decides which specialist is right (math right on every sum and wrong on every
    summary, the other way round for the summary model), so the router matches the oracle exactly."""
    rng = random.Random(4)
    prompts = [(arithmetic if i % 2 == 0 else summarization)(rng, W)["prompt"] for i in range(160)]
    scores = np.array([[1.0, 0.0] if i % 2 == 0 else [0.0, 1.0] for i in range(160)])
    router = Router(["math", "summary"], [1.0, 1.0]).fit(hashed_features(prompts[:80]), scores[:80])
    chosen = router.predict(hashed_features(prompts[80:]))
    rows = {r["system"]: r for r in compare(scores[80:], [1.0, 1.0], ["math", "summary"], chosen)}
    assert rows["router"]["accuracy"] == rows["oracle"]["accuracy"] == 1.0
    assert rows["only math"]["accuracy"] == rows["only summary"]["accuracy"] == 0.5


def test_per_item_costs():
    """Costs per item and model (tokens spent): ties go to the cheaper model of that item, and a system's cost
    is the mean of what it picked."""
    scores = np.array([[1, 1], [1, 1], [0, 1]])
    costs = np.array([[5.0, 2.0], [1.0, 9.0], [1.0, 3.0]])
    assert best_labels(scores, costs).tolist() == [1, 0, 1]
    rows = {r["system"]: r for r in compare(scores, costs, ["a", "b"], np.array([0, 0, 0]))}
    assert rows["router"]["cost"] == (5 + 1 + 1) / 3 and rows["oracle"]["cost"] == (2 + 1 + 3) / 3
    assert rows["only b"]["cost"] == (2 + 9 + 3) / 3


def test_critique_many_equals_one_at_a_time():
    def reply(p: str) -> str:
        return f" {len(p) % 13}"
    qs = ["What is 6 * 7?", "Who lives in Ashford?", "Sum 1 and 2."]
    one = [critique_rounds(ScriptedModel(reply), ScriptedModel(reply), q, rounds=2) for q in qs]
    a, b = ScriptedModel(reply), ScriptedModel(reply)
    many = critique_many(a, b, qs, rounds=2)
    assert many == one
    assert len(a.prompts) == 3 * 3 and len(b.prompts) == 2 * 3  # A: first + 2 revisions; B: 2 critiques
