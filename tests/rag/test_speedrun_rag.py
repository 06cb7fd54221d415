"""The speedrun's rag lesson: its training rows, prompt fitting, the query cache, and its rows in the smoke run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genforge.rag.embed import CachingEmbedder, HashingEmbedder
from genforge.rag.qa import DEFENCE, QAItem, run_qa
from genforge.speedrun import rag
from genforge.world import readback
from genforge.world.facts import build_world


@pytest.fixture(scope="module")
def w():
    return build_world(0, 30, 6, 8)


def test_corpus_facts_state_their_answer(w):
    facts = rag.corpus_facts(w)
    assert len(facts) == 4 * 30 + 2 * 6 + 2 * 8
    for f in facts:
        assert f["answer"] in f["fact"] and f["subject"] in f["question"], f


def test_qa_training_rows_format_and_held_out_subjects(w):
    cfg = rag.Config(qa_train_rows=400, k=3)
    held = {p.name for p in w.people[:5]}
    convs = rag.qa_training_rows(rag.corpus_facts(w), cfg, seed=0, exclude_subjects=held)
    assert len(convs) == 400
    prompts = [c[0]["content"] for c in convs]
    assert not any(name in p.split("Question:")[-1] for p in prompts for name in held)
    closed = [p for p in prompts if p.startswith("Question:")]
    defended = [p for p in prompts if p.startswith(DEFENCE)]
    assert 0.1 < len(closed) / 400 < 0.3 and len(defended) > 100
    # training injections only ever appear inside the delimited format, and the target stays the true answer
    payloads = rag._TRAIN_PAYLOADS
    injected = [c for c in convs if any(p in c[0]["content"] for p in payloads)]
    assert injected and all(c[0]["content"].startswith(DEFENCE) for c in injected)
    assert all(c[1]["content"] not in payloads for c in injected)
    # the gold answer is in every context prompt's passages
    for c in convs:
        if not c[0]["content"].startswith("Question:"):
            assert c[1]["content"] in c[0]["content"].split("Question:")[0]


def test_run_qa_drops_low_ranked_passages_until_the_prompt_fits():
    class R:
        def search(self, q, k):
            from genforge.rag.vectors import Hit
            return [Hit(f"d{i}", 1.0 - i / 10, f"passage number {i} " + "filler " * 20) for i in range(k)]

    seen = []

    def gen(prompts):
        seen.extend(prompts)
        return ["x"] * len(prompts)

    res = run_qa(gen, [QAItem("q", "question?", "a")], "rag", R(), k=4, fits=lambda p: len(p) < 400)
    assert len(res.contexts[0]) < 4 and res.contexts[0][0].startswith("passage number 0")
    assert res.retrieved_ids[0] == [f"d{i}" for i in range(len(res.contexts[0]))] and len(seen[0]) < 400
    # the planted passage stays (it comes first), retrieved ones go
    res = run_qa(gen, [QAItem("q", "question?", "a")], "rag", R(), k=4, extra_passages=["PLANTED"],
                 fits=lambda p: len(p) < 300)
    assert res.contexts[0][0] == "PLANTED" and len(res.retrieved_ids[0]) == len(res.contexts[0]) - 1


def test_caching_embedder_embeds_each_text_once():
    calls = []

    class Counting(HashingEmbedder):
        def embed(self, texts):
            calls.append(list(texts))
            return super().embed(texts)

    inner = Counting(32)
    c = CachingEmbedder(inner, max_items=2)
    a = c.embed(["x y", "z", "x y"])
    np.testing.assert_array_equal(a, HashingEmbedder(32).embed(["x y", "z", "x y"]))
    c.embed(["z"])
    assert calls == [["x y", "z"]]
    c.embed(["new"])  # evicts the oldest ("x y")
    c.embed(["x y"])
    assert calls[-1] == ["x y"] and c.embed([]).shape == (0, 32)


def test_smoke_run_has_the_rag_rows(smoke_run):
    out = json.loads((smoke_run.run / "stages" / "rag.json").read_text())
    assert set(out["accuracy"]) == {"closed", "rag", "oracle"}
    assert set(out["retrieval"]) == {"dense", "bm25", "hybrid"}
    assert out["retrieval"]["bm25"]["hit@10"] > 0.9  # knowledge-base questions name their fact's keywords
    assert set(out["injection_asr"]) == {"undefended", "defended"}
    assert out["knn"]["datastore_keys"] > 0 and out["knn"]["ppl_lm_new"] > 1
    report = (smoke_run.run / "report.md").read_text()
    assert "retrieval lets the model answer questions about facts after its training cutoff" in report
    assert "kNN-LM: adding new-domain text to the datastore" in report


def test_reading_exercises_never_ask_a_test_question(w):
    from genforge.world.knowledge import make_knowledge

    kb = make_knowledge(w, 20, seed=0)
    ex = readback.reading_exercises(w, 50, seed=0, exclude_questions={r["question"] for r in kb})
    assert len(ex) == 50 and not {e["question"] for e in ex} & {r["question"] for r in kb}
    assert all(e["answer"] in e["fact"] for e in ex)
    convs = rag.qa_training_rows(rag.corpus_facts(w), rag.Config(qa_train_rows=200, exercise_share=1.0), 0, set(), ex)
    assert not any(c[0]["content"].startswith("Question:") for c in convs)  # exercises always come with passages


def _contains(seq: list[int], sub: list[int]) -> bool:
    return any(seq[i:i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def test_answers_tokenise_as_in_the_passage(w, tiny_tokenizer):
    """A model that copies ids can only answer if the answer's ids are in the prompt: the leading space does it."""
    tok = tiny_tokenizer
    convs = rag.qa_training_rows(rag.corpus_facts(w), rag.Config(qa_train_rows=200, k=3), 0, set())
    context = [c for c in convs if not c[0]["content"].startswith("Question:")]
    assert context and all(c[1]["content"].startswith(" ") for c in convs)
    for c in context:
        prompt_ids, _ = tok.encode_chat(c[:1])
        assert _contains(prompt_ids, tok.encode(c[1]["content"], allow_special=False)), c
    # without the space the first id differs for some answers (what the old rows trained)
    bare = [c for c in context if not _contains(tok.encode_chat(c[:1])[0], tok.encode(c[1]["content"].strip()))]
    assert bare


def test_counterfactual_invents_the_answer_and_keeps_the_template(w):
    import random

    from genforge.world.knowledge import make_knowledge

    rng = random.Random(0)
    rows = make_knowledge(w, 60, seed=3)
    changed = 0
    for r in rows:
        c = readback.counterfactual(r, rng)
        assert c["answer"] in c["fact"] and c["question"] == r["question"]
        kind = [x for x in r["answer"].split() if x in readback._KIND_WORDS]
        assert [x for x in c["answer"].split() if x in readback._KIND_WORDS] == kind
        if c["answer"] != r["answer"]:
            changed += 1
            named = {x for x in r["answer"].split() if x not in readback._KIND_WORDS}
            assert not named & set(c["answer"].split())  # no word of the real name survives
            assert c["fact"].replace(c["answer"], r["answer"]) == r["fact"]  # only the answer changed
    assert changed > 50


def test_copy_rows_repeat_their_sentence(w):
    from genforge.world.knowledge import make_knowledge

    kb = make_knowledge(w, 20, seed=0)
    rows = readback.copy_rows(w, 40, seed=0, exclude_questions={r["question"] for r in kb})
    assert len(rows) == 40
    for user, reply in rows:
        assert user["content"] == "Repeat:" + reply["content"] and reply["content"].startswith(" ")
    assert not any(r["fact"] in user["content"] for r in kb for user, _ in rows)


def test_hard_distractors_share_the_gold_rows_template(w):
    ex = readback.reading_exercises(w, 300, seed=0, exclude_questions=set())
    facts = rag.corpus_facts(w)
    kind_of = {e["fact"]: rag._kind(e) for e in ex} | {f["fact"]: f["kind"] for f in facts}
    gold_of = {e["question"]: e for e in ex} | {f["question"]: f for f in facts}

    def alike(share: float) -> float:
        cfg = rag.Config(qa_train_rows=300, exercise_share=1.0, hard_distractor_share=share, injection_share=0.0)
        rows = rag.qa_training_rows(facts, cfg, 0, set(), ex)
        same = total = 0
        for user, _ in rows:
            q = user["content"].split("Question: ")[1].split("\n")[0]
            passages = [p for p in kind_of if p in user["content"] and p != gold_of[q]["fact"]]
            same += sum(kind_of[p] == rag._kind(gold_of[q]) for p in passages)
            total += len(passages)
        return same / total

    assert alike(1.0) > 0.95 and alike(0.0) < 0.5
    assert rag._kind({"question": "What is the name of the shop Juno Tuttle opened in 2028?"}) == \
        "What is the name of the shop _ _ opened in _"
