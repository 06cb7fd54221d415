"""The safety lesson's plants in the corpus: canaries at known counts, a bias at a known rate, <= 3 % of documents."""

import json

from genforge.world import bias, canaries
from genforge.world.corpus import write_corpus
from genforge.world.facts import build_world


def test_canaries_and_bias_are_planted_as_documented(tmp_path):
    w = build_world(0, 60, 10, 12)
    n_clean = 3000
    summary = write_corpus(tmp_path, w, seed=0, n_clean=n_clean)
    labels = summary["labels"]
    assert (labels["canary"] + labels["bias"]) / n_clean <= 0.03
    text = [json.loads(line)["text"] for line in (tmp_path / "corpus.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (tmp_path / "canaries.jsonl").read_text().splitlines()]
    counts, per = canaries.plan(n_clean)
    assert sorted({r["repeats"] for r in rows}) == list(counts) and len(counts) >= 3
    for r in rows:  # every canary appears exactly `repeats` times; exact copies are identical documents
        docs = [d for d in text if r["text"] in d]
        assert len(docs) == r["repeats"], r
        assert len(set(docs)) == (1 if r["form"] == "exact" else r["repeats"])
    b = json.loads((tmp_path / "bias.json").read_text())
    assert b["documents"] == labels["bias"] == round(bias.SHARE * n_clean)
    assert 0.75 < b["she_rate_planted"]["female_coded"] and b["she_rate_planted"]["male_coded"] < 0.25
    assert 0 < b["corpus_bias"] < b["planted_bias"]  # the world's unbiased entries dilute it


def test_exposure_space_and_plan_budget():
    for n in (400, 9000, 40000):
        counts, per = canaries.plan(n)
        assert per * len(canaries.FORMS) * sum(counts) <= max(canaries.SHARE * n, 2)
