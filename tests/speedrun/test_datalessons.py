"""The data lessons' probes and corpus arms (the stage itself runs in the smoke speedrun)."""

import json

from genforge.eval.lm import StubLM
from genforge.speedrun.datalessons import (
    WindowSource,
    corpus_docs,
    curve_shape,
    minimal_pairs,
    option_accuracy,
    pair_accuracy,
    reasoning_items,
)

TABLES = {"people": [{"name": f"Ann Lee{i}", "town": f"Town{i % 3}", "job": ["baker", "cook"][i % 2]}
                     for i in range(10)]}


def test_minimal_pairs_differ_in_one_place():
    p = minimal_pairs(TABLES, 6, 0)
    assert len(p["language"]) == len(p["knowledge"]) == 6
    for (g, b), (t, f) in zip(p["language"], p["knowledge"]):
        assert g == t and g != b and t != f
        assert len(g.split()) == len(b.split()) == len(f.split())
        assert sum(x != y for x, y in zip(g.split(), f.split())) == 1  # knowledge: one word swapped for another
        # language: one verb loses its agreement, or two neighbouring words trade places
        diff = [i for i, (x, y) in enumerate(zip(g.split(), b.split())) if x != y]
        assert len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and sorted(g.split()) == sorted(b.split()))
    kinds = {"order" if sorted(g.split()) == sorted(b.split()) else "agreement" for g, b in p["language"]}
    assert kinds == {"order", "agreement"}


def test_pair_and_option_accuracy_with_a_stub():
    # the stub likes shorter texts: "live" beats "lives", so it fails every agreement pair
    lm = StubLM(score=lambda c, x: -float(len(x)))
    p = minimal_pairs(TABLES, 4, 0)
    assert pair_accuracy(lm, p["language"]) == [0.0] * 4
    items = [("Q1", ["yes", "no"], 1), ("Q2", ["yes", "no"], 0), ("Q3", ["12", "7"], 1)]
    assert option_accuracy(lm, items) == [1.0, 0.0, 1.0]


def test_reasoning_items_have_gold_and_a_wrong_answer(tmp_path):
    rows = [{"task": "coin_flip", "prompt": f"p{i}", "question": f"q{i}", "answer": ["yes", "no"][i % 2]}
            for i in range(6)] + [{"task": "multiple_choice", "prompt": "m", "options": ["a", "b", "c"],
                                   "gold_index": 2, "answer": "C"}]
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    items = reasoning_items(tmp_path, ["coin_flip", "multiple_choice"], 4, 0)
    assert len(items["coin_flip"]) == 4 and items["multiple_choice"][0][1:] == (["a", "b", "c"], 2)
    for ctx, opts, _ in items["coin_flip"]:
        assert sorted(opts) == ["no", "yes"] and ctx.endswith("The answer is")


def test_corpus_arms_and_windows():
    with_p = corpus_docs("smoke", 0, 300, True)
    without = corpus_docs("smoke", 0, 300, False)
    assert len(with_p) == len(without) == 300
    worked = lambda docs: sum("The answer is" in d for d in docs)  # noqa: E731  (worked solutions end so)
    assert worked(with_p) > 10 and worked(without) < worked(with_p) / 3
    src = WindowSource(list(range(1000)), 16, 4, 0)
    b1, b2 = src.get_batch(3, 0, 0, 1), src.get_batch(3, 0, 0, 1)
    assert (b1["input_ids"] == b2["input_ids"]).all() and b1["input_ids"].shape == (4, 16)
    assert (b1["labels"][:, :-1] == b1["input_ids"][:, 1:]).all()


def test_train_with_probes_records_a_curve_and_a_checkpoint(tiny_tokenizer, tmp_path):
    from genforge.checkpoint import load_checkpoint
    from genforge.speedrun.datalessons import Config, train_with_probes
    from genforge.speedrun.stage import StageContext

    cfg = Config(steps=4, eval_every=2, micro_batch=2, seq_len=32)
    docs = corpus_docs("smoke", 0, 60, True)
    probes = {"const": lambda lm: [1.0, 0.0]}
    curve = train_with_probes(StageContext(tmp_path), cfg, tiny_tokenizer, docs, probes, tmp_path / "run")
    assert curve["tokens"] == [0, 2 * 2 * 32, 4 * 2 * 32] and curve["const"] == [0.5] * 3
    model, tok, _ = load_checkpoint(curve["checkpoint"])
    assert model.config.depth == cfg.depth


def test_curve_shape_counts_a_change_only_beyond_sampling_noise():
    assert curve_shape(0.50, 0.49, 0.52, 300) == "no clear rise"  # the small run's knowledge curve: noise
    assert curve_shape(0.30, 0.95, 0.74, 300) == "falls in the second half (unstable)"
    assert curve_shape(0.22, 1.00, 1.00, 120) == "saturated by mid-training"
    assert curve_shape(0.50, 0.60, 0.75, 300) == "still rising in the second half"
    assert curve_shape(0.50, 0.60, 0.75, 10) == "no clear rise"  # the same numbers on 10 items prove nothing
