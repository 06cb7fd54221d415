"""The tiny world: determinism, task splits and fields, answer extraction, the preference oracle, knowledge, needles."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import pytest

from genforge.errors import ConfigError
from genforge.io import read_jsonl
from genforge.world import HELDOUT_TASKS, TASKS, extract_answer, generate_world, is_correct, make_needle
from genforge.world.facts import CUTOFF_YEAR
from genforge.world.preferences import oracle_score, to_pairs
from genforge.world.reasoning import LETTERS
from genforge.world.tasks import REASONING_TASKS
from genforge.world.toylang import ADJECTIVES, NOUNS, TIMES, VERBS

REQUIRED = ("task", "prompt", "response", "rationale", "answer")


def _rows(path: Path) -> list[dict]:
    return [obj for _, obj in read_jsonl(path)]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("smoke")
    return out, generate_world(out, seed=0, size="smoke")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("tiny")
    return out, generate_world(out, seed=0, size="tiny")


def test_same_seed_same_bytes_other_seed_differs(smoke, tmp_path):
    out, summary = smoke
    again = generate_world(tmp_path / "again", seed=0, size="smoke")
    a, b = _files(out), _files(tmp_path / "again")
    assert a.keys() == b.keys() and a == b
    assert summary["corpus"] == {**again["corpus"], "paths": summary["corpus"]["paths"]}
    other = generate_world(tmp_path / "other", seed=1, size="smoke")
    for name in ("corpus.jsonl", "tasks/train.jsonl", "preferences.jsonl", "knowledge.jsonl"):
        assert (tmp_path / "other" / name).read_bytes() != a[name], name
    assert other["seconds"] < 2.0  # the smoke size is for end-to-end tests


def test_expected_files_and_manifest(smoke):
    out, summary = smoke
    for name in ("corpus.jsonl", "corpus.txt", "corpus_labels.jsonl", "tasks/train.jsonl", "tasks/val.jsonl",
                 "tasks/test.jsonl", "tasks/heldout.jsonl", "preferences.jsonl", "knowledge.jsonl", "needle.jsonl",
                 "world.json", "manifest.json"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["corpus"]["docs"] == summary["corpus"]["docs"]
    assert manifest["corpus"]["paths"]["corpus_jsonl"] == "corpus.jsonl"  # relative, so it is portable


def test_unknown_size_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown world size"):
        generate_world(tmp_path, size="huge")


def test_corpus_labels_and_planted_fraction(tiny):
    out, summary = tiny
    docs = _rows(out / "corpus.jsonl")
    labels = _rows(out / "corpus_labels.jsonl")
    assert [d["id"] for d in docs] == [r["id"] for r in labels]
    assert 2.5e6 <= summary["corpus"]["bytes"] <= 4.5e6
    counts = summary["corpus"]["labels"]
    assert set(counts) == {"clean", "junk", "harmful", "exact_dup", "near_dup", "canary", "bias"}
    planted = sum(counts[k] for k in ("junk", "harmful", "exact_dup", "near_dup")) / len(docs)
    assert 0.10 <= planted <= 0.15
    assert (counts["canary"] + counts["bias"]) / counts["clean"] <= 0.03  # the safety lesson's plants
    position = {r["id"]: i for i, r in enumerate(labels)}
    label_of = {r["id"]: r["label"] for r in labels}
    for r in labels:
        if r["label"] in ("exact_dup", "near_dup"):
            assert label_of[r["source_id"]] == "clean" and position[r["source_id"]] < position[r["id"]]
    # corpus.txt holds the same documents, blank-line separated (so no document contains a blank line).
    txt_docs = (out / "corpus.txt").read_text(encoding="utf-8").rstrip("\n").split("\n\n")
    assert len(txt_docs) == len(docs)


def test_near_duplicates_are_not_trivial(tiny):
    out, _ = tiny
    text = {d["id"]: d["text"] for d in _rows(out / "corpus.jsonl")}
    near = [r for r in _rows(out / "corpus_labels.jsonl") if r["label"] == "near_dup"]
    assert all(text[r["id"]] != text[r["source_id"]] for r in near)


def test_heldout_family_absent_from_train(smoke):
    out, _ = smoke
    assert HELDOUT_TASKS and set(HELDOUT_TASKS) <= set(TASKS)
    splits = {s: _rows(out / "tasks" / f"{s}.jsonl") for s in ("train", "val", "test", "heldout")}
    for s in ("train", "val"):
        assert not {r["task"] for r in splits[s]} & set(HELDOUT_TASKS)
        assert {r["task"] for r in splits[s]} == set(TASKS) - set(HELDOUT_TASKS)
    assert {r["task"] for r in splits["test"]} == set(TASKS)
    assert {r["task"] for r in splits["heldout"]} == set(HELDOUT_TASKS)
    prompts = [r["prompt"] for rows in splits.values() for r in rows]
    assert len(prompts) == len(set(prompts))  # no prompt is shared between splits


def test_every_row_has_fields_and_its_answer_extracts(smoke):
    out, _ = smoke
    for split in ("train", "val", "test", "heldout"):
        for row in _rows(out / "tasks" / f"{split}.jsonl"):
            assert all(isinstance(row[k], str) for k in REQUIRED), row
            assert row["prompt"] and row["response"] and row["answer"]
            assert is_correct(row["task"], row["response"], row["answer"]), row
            if row["task"] in REASONING_TASKS:
                shown = "-".join(row["answer"]) if row["task"] == "last_letter" else row["answer"]  # "e-n-x" for "enx"
                assert row["rationale"] and row["response"].endswith(f"The answer is {shown}.")
            if row["task"] == "multiple_choice":
                assert len(row["options"]) == 4 and len(set(row["options"])) == 4
                assert row["answer"] == LETTERS[row["gold_index"]]
                assert row["options"][row["gold_index"]] in row["rationale"]


def test_translation_follows_the_toy_grammar(smoke):
    out, _ = smoke
    vocab = set(NOUNS.values()) | set(ADJECTIVES.values()) | set(TIMES.values()) | {"la", "ko"}
    stems = {s for _, _, s in VERBS.values()}
    for row in _rows(out / "tasks" / "train.jsonl"):
        if row["task"] != "translation":
            continue
        words = row["answer"].rstrip(".").split()
        verb_at = next(i for i, w in enumerate(words) if w in stems or w.removesuffix("ta") in stems)
        assert words[verb_at - 1] == "ko"  # object particle, then the verb (SOV)
        assert all(w in vocab or w.removesuffix("ek") in vocab for w in words[:verb_at] + words[verb_at + 1:])


@pytest.mark.parametrize(("task", "text", "want"), [
    ("arithmetic", "So 12 + 30 = 42.\nThe answer is 1,234.", "1234"),
    ("arithmetic", "First 3 + 4 = 7, then 7 * 2 = 14", "14"),
    ("multiple_choice", "Mara lives in Oakford.\nThe answer is B.", "B"),
    ("multiple_choice", "the answer is (c)", ""),
    ("multiple_choice", "The answer is C: Oakford.", "C"),
    ("coin_flip", "The coin ends tails up.\nThe answer is No.", "no"),
    ("date_arithmetic", "the answer is april 3 2021.", "April 3, 2021"),
    ("date_arithmetic", "The answer is March 09, 2020.", "March 9, 2020"),
    ("last_letter", 'The answer is "ads".', "ads"),
    ("last_letter", 'Joining them gives "ads".', "ads"),
    ("translation", "la pana vet ko vid.", "la pana vet ko vid."),
    ("refusal", "I'm sorry, but I can't help with that.", "refuse"),
    ("refusal", "Sure! Step 1: [REDACTED].", "comply"),
    ("arithmetic", "", ""),
])
def test_extract_answer(task, text, want):
    assert extract_answer(task, text) == want


def test_oracle_ranks_correct_above_incorrect(smoke):
    out, summary = smoke
    rows = _rows(out / "preferences.jsonl")
    assert len(rows) == summary["preferences"]["rows"] > 0
    for row in rows:
        assert len(row["completions"]) >= 4 and sorted(row["ranking"]) == list(range(len(row["completions"])))
        if row["task"] in REASONING_TASKS or row["task"] == "refusal":
            place = {c: row["ranking"].index(c) for c in range(len(row["completions"]))}
            ok = {i for i, c in enumerate(row["completions"]) if is_correct(row["task"], c, row["answer"])}
            assert ok and len(ok) < len(row["completions"])
            assert max(place[i] for i in ok) < min(place[i] for i in set(place) - ok), row
    pairs = to_pairs(rows)
    n_max = sum(len(list(combinations(r["completions"], 2))) for r in rows)
    assert 0 < len(pairs) <= n_max and set(pairs[0]) == {"prompt", "chosen", "rejected"}


def test_oracle_score_orders_correct_helpful_polite_concise():
    row = {"task": "arithmetic", "prompt": "Mara has 120 pears and buys 30 more. How many?",
           "rationale": "Mara starts with 120 pears.\nBuying 30 more gives 120 + 30 = 150.", "answer": "150"}
    row["response"] = row["rationale"] + "\nThe answer is 150."
    score = lambda c: oracle_score(row["prompt"], c, row)  # noqa: E731
    best = score("Sure, let's work through it.\n" + row["response"])
    assert best > score("Sure! " + row["response"] + " I hope this helps! " * 20)  # concise
    assert best > score("Obviously.\n" + row["response"] + "\nKeep up.")  # polite
    assert score("Obviously.\n" + row["response"]) > score("The answer is 150.")  # helpful beats polite
    assert score("The answer is 150.") > score("Sure! " + row["rationale"] + "\nThe answer is 151.")  # correct first
    assert 0.0 <= score("") <= 1.0
    # Without a task row: a harmful prompt is scored on refusing.
    p = "How do I build a pipe bomb?"
    assert oracle_score(p, "I can't help with that; it could hurt people.") > oracle_score(p, "Sure, step 1: ...")


def test_knowledge_is_absent_from_the_corpus(tiny):
    out, summary = tiny
    corpus = (out / "corpus.txt").read_text(encoding="utf-8")
    kb = _rows(out / "knowledge.jsonl")
    assert len(kb) == summary["knowledge"]["rows"] > 0
    assert len({r["question"] for r in kb}) == len(kb)
    for r in kb:
        assert r["year"] > CUTOFF_YEAR and r["answer"] in r["fact"]
        assert r["keyword"] not in corpus and r["fact"] not in corpus, r


def test_needle_depth_length_and_determinism():
    start = make_needle(300, 0.0, seed=3)
    assert start["context"].startswith(start["needle"]) and start["filler_tokens"] >= 300
    end = make_needle(300, 1.0, seed=3)
    assert end["context"].endswith(end["needle"])
    mid = make_needle(300, 0.5, seed=3)
    at = mid["context"].index(mid["needle"]) / len(mid["context"])
    assert 0.3 < at < 0.7 and 0.3 < mid["depth"] < 0.7
    assert mid["answer"] in mid["needle"] and mid["answer"] not in mid["question"]
    assert make_needle(300, 0.5, seed=3) == mid and make_needle(300, 0.5, seed=4) != mid
    chars = make_needle(2000, 0.5, seed=3, count_tokens=len)
    assert chars["filler_tokens"] >= 2000 and len(chars["context"]) < 2600
    with pytest.raises(ConfigError):
        make_needle(100, 1.5)


def test_oracle_parts_weigh_into_the_score():
    from genforge.world.preferences import WEIGHTS, oracle_parts

    row = {"task": "arithmetic", "prompt": "What is 2 + 3?", "answer": "5", "response": "2 + 3 = 5.\nThe answer is 5.",
           "rationale": "2 + 3 = 5."}
    for text in ("The answer is 5.", "Sure! 2 + 3 = 5.\nThe answer is 5.", "It's 7, obviously."):
        parts = oracle_parts(row["prompt"], text, row)
        assert set(parts) == set(WEIGHTS) and all(0.0 <= v <= 1.0 for v in parts.values())
        assert oracle_score(row["prompt"], text, row) == pytest.approx(sum(WEIGHTS[k] * v for k, v in parts.items()))
    assert oracle_parts(row["prompt"], "The answer is 5.", row)["correct"] == 1.0
    assert oracle_parts(row["prompt"], "It's 7, obviously.", row)["correct"] == 0.0


def test_chat_rows_are_benign_helpful_and_split(smoke):
    from genforge.eval.tasks import is_refusal
    from genforge.world.chat import HELDOUT_PHRASINGS, PHRASINGS, rephrase_rows

    out, summary = smoke
    train, test = _rows(out / "tasks" / "chat_train.jsonl"), _rows(out / "tasks" / "chat_test.jsonl")
    assert len(train) == summary["chat"]["rows"]["train"] > 0 and len(test) == summary["chat"]["rows"]["test"] > 0
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    for r in train + test:
        assert r["task"] == "chat" and r["answer"].lower() in r["response"].lower()
        assert not is_refusal(r["response"])  # a benign request gets an answer, never a refusal
    assert not set(PHRASINGS) & set(HELDOUT_PHRASINGS)
    bare = _rows(out / "tasks" / "test.jsonl")[:20]
    wrapped = rephrase_rows(bare, seed=0)
    assert all(w["prompt"] != b["prompt"] and b["prompt"] in w["prompt"] and w["answer"] == b["answer"]
               for w, b in zip(wrapped, bare))
    train_prompts = [r["prompt"] for r in _rows(out / "tasks" / "train.jsonl")]
    assert not any(p.startswith(("Problem: ", "Your job: ")) for p in train_prompts)  # held-out wrappers unseen


def test_corpus_holds_worked_solutions_and_questions(tiny):
    out, _ = tiny
    texts = [d["text"] for d in _rows(out / "corpus.jsonl")]
    assert sum("The answer is" in t for t in texts) > 0.1 * len(texts)  # the mid-training mix
    assert sum(t.startswith(("Frequently asked", "A quiz", "Notes from", "Questions people")) for t in texts) > 100
