"""The speedrun `agents` stage's data: the formats it teaches are exactly what its evaluation reads back."""

from __future__ import annotations

import random

import pytest

from genforge.agents.knowledge import KnowledgeBase
from genforge.agents.llm import ScriptedModel
from genforge.agents.react import ReActConfig, run_episode, run_episodes
from genforge.agents.sandbox import run_python
from genforge.agents.tools import default_registry
from genforge.speedrun import agents
from genforge.world.facts import build_world
from genforge.world.generate import SIZES
from genforge.world.reasoning import arithmetic


@pytest.fixture(scope="module")
def world():
    s = SIZES["smoke"]
    w = build_world(0, s["people"], s["towns"], s["objects"])
    return w, KnowledgeBase.from_world(w)


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    return tiny_tokenizer


def test_hop_split_is_disjoint(world):
    w, _ = world
    train, test = agents.hop_rows(w, 30, 10, seed=0)
    assert len(test) == 10 and train
    assert not {r["question"] for r in train} & {r["question"] for r in test}


def test_gold_react_replayed_through_the_stage_prompt_answers_right(world, tok):
    """A model that writes the trained trajectory token for token gets every test answer through run_episodes:
    the training chat, the prompt format, the stop strings and the action parser agree."""
    w, kb = world
    _, test = agents.hop_rows(w, 20, 10, seed=1)
    reg = agents.search_registry(kb, 1)
    gold = {r["question"]: tok.render_chat(agents.react_messages(agents.gold_trajectory(r, reg))) for r in test}

    def reply(prompt: str) -> str:
        q = next(q for q in gold if f"{agents.TAGS['react']} {q}" in prompt)
        assert gold[q].startswith(prompt)  # the prompt is the trained chat so far, up to 'Thought:'
        return gold[q][len(prompt):].split("<|end|>")[0] + "\nObservation: (the model would go on)"

    model = ScriptedModel(reply)
    trajs = run_episodes(model, reg, list(gold), ReActConfig(max_steps=5),
                         prompt_fn=lambda t: agents.react_prompt(tok, t))
    assert [agents.town_of(t.answer) for t in trajs] == [r["answer"] for r in test]
    assert all(t.status == "answered" and t.n_malformed == 0 and len(t.steps) == 3 for t in trajs)
    assert len(model.prompts) == 3 * len(test)  # one batched call per round: three rounds
    hops = agents.react_hops(trajs, test)
    assert hops == {k: 1.0 for k in hops}  # every hop of a perfect policy counts as right


def test_training_conversations_hold_every_format(world):
    w, kb = world
    rng = random.Random(0)
    arith = [arithmetic(rng, w) for _ in range(5)]
    hops, _ = agents.hop_rows(w, 12, 10, seed=2)
    entries, invented = agents.invented_hops(7, seed=0)
    train_kb = KnowledgeBase.from_world(w, extra=entries)
    reg = agents.search_registry(train_kb, 1)
    convs = agents.training_conversations(arith, hops, train_kb, reg, 1, invented=invented)
    assert len(convs) == 3 * len(arith) + 3 * len(hops) + len(invented)
    pal = [c[1]["content"] for c in convs if c[0]["content"].startswith(agents.TAGS["pal"])]
    from genforge.agents.pal import number_bindings

    outs = [run_python(number_bindings(r["prompt"]) + p).stdout.strip() for r, p in zip(arith, pal)]
    assert outs == [r["answer"] for r in arith]  # every PAL training program prints the gold answer
    assert all("n0" in p for p in pal)  # and takes its numbers from the bindings
    react = [c for c in convs if c[0]["content"].startswith(agents.TAGS["react"])]
    assert len(react) == len(hops) + len(invented)
    for c, r in zip(react, hops + invented):  # ask, search, read, search again, finish: observations are user turns
        assert [m["role"] for m in c] == ["user", "assistant", "user", "assistant", "user", "assistant"]
        assert c[1]["content"].startswith("Thought: Find ") and "\nAction: search[" in c[1]["content"]
        assert r["bridge"] in c[2]["content"] and c[3]["content"].endswith(f" {r['bridge']} lives]")
        verb = "are" if " are " in c[2]["content"] else "is"
        assert c[3]["content"] == (f"Thought: {c[2]['content'].removeprefix('Observation: ')}\n"
                                   f"Action: search[where {verb} {r['bridge']} lives]")
        assert r["answer"] in c[4]["content"] and c[5]["content"].endswith(f"finish[lives in {r['answer']}]")


def test_invented_hops_are_answerable_and_not_the_world(world):
    """Invented questions: the keyed search (k=1) returns the bridge and then the town, names unseen in the world."""
    w, _ = world
    entries, rows = agents.invented_hops(60, seed=3)
    assert {r["question"].split()[5] for r in rows} == {"sibling", "friend", "maker"}
    kb = KnowledgeBase.from_world(w, extra=entries)
    reg = agents.search_registry(kb, 1)
    names = {p.name for p in w.people} | {t.name for t in w.towns}
    for r in rows:
        t = agents.gold_trajectory(r, reg)
        assert r["bridge"] in t.steps[0].observation and r["answer"] in t.steps[1].observation
        assert r["bridge"] not in names and r["answer"] not in names
    assert agents.invented_hops(60, seed=3) == (entries, rows)  # seeded


def test_react_hops_locate_the_failing_hop():
    from genforge.agents.react import Step, Trajectory

    row = {"question": "In which town does the sibling of Ada Quill live?", "bridge": "Bo Quill", "answer": "Eastby"}
    good_first = Step("", "search", "the sibling of Ada Quill", "The sibling of Ada Quill is Bo Quill.")
    wrong_second = Step("", "search", "where is Cy Quill lives", "Cy Quill lives in Westby.")
    t1 = Trajectory(row["question"], [good_first, wrong_second, Step("", "finish", "Westby", "")], "Westby", "answered")
    t2 = Trajectory(row["question"], [Step("", "search", "the sibling of Ada", "no results")], "", "step_limit")
    h = agents.react_hops([t1, t2], [row, row])
    assert h == {"first_search": 0.5, "first_result": 0.5, "second_search": 0.0, "second_result": 0.0,
                 "second_given_first": 0.0, "finish_given_second": 0.0}


def test_batched_episodes_equal_one_at_a_time():
    reg = default_registry(include=("calculator",))

    def reply(p: str) -> str:
        n = p.count("Observation:")
        return f" step {n}\nAction: calculator[{n}+1]" if n < 2 else f" done\nAction: finish[{len(p) % 7}]"

    qs = ["What is 1?", "What is two?", "And three?"]
    one = [run_episode(ScriptedModel(reply), reg, q).to_dict() for q in qs]
    many = [t.to_dict() for t in run_episodes(ScriptedModel(reply), reg, qs)]
    assert one == many


def test_toolformer_texts_and_test_cuts(world):
    """Test prefixes stop right where the final sum's result comes; no test text is a training text."""
    w, _ = world
    texts = agents.toolformer_texts(w, 9, seed=0)
    assert sum(t.count("So ") == 1 and "from the right" in t for t in texts) >= 6  # two in three are worked sums
    tests = agents.toolformer_tests(w, 5, seed=0, exclude=set(texts))
    for t in tests:
        a, b = t["call"].split(" + ")
        assert t["prefix"].endswith(f"So {a} + {b} =") and int(a) + int(b) == int(t["answer"])
        assert not any(x.startswith(t["prefix"]) for x in texts)


def test_math_specialist_programs_print_the_gold_answer(world):
    from genforge.agents.pal import number_bindings

    w, _ = world
    rng = random.Random(3)
    rows = [arithmetic(rng, w) for _ in range(4)]
    progs = [agents.math_program(r) for r in rows]
    assert progs[0] == "step1 = n0 + n1\nprint(step1)"
    outs = [run_python(number_bindings(r["prompt"]) + p).stdout.strip() for r, p in zip(rows, progs)]
    assert outs == [r["answer"] for r in rows]
    convs = agents.specialist_conversations("arithmetic", rows)
    assert [c[1]["content"] for c in convs] == progs and convs[0][0]["content"] == rows[0]["prompt"]


def test_family_rows_are_disjoint(tmp_path, world):
    from genforge.io import write_jsonl
    from genforge.world.tasks import summarization

    w, _ = world
    rng = random.Random(5)
    for split, n in (("train", 40), ("test", 20)):
        write_jsonl(tmp_path / f"{split}.jsonl", [g(rng, w) for _ in range(n) for g in (arithmetic, summarization)])
    cfg = agents.Config(router_train=6, router_test=5, collab_items=4)
    fams = agents.family_rows(tmp_path, cfg)
    for fam, parts in fams.items():
        assert {r["task"] for p in parts.values() for r in p} == {fam}
        assert len(parts["router"]) == 6 and len(parts["test"]) == 5 and len(parts["collab"]) == 4
        assert not {r["prompt"] for r in parts["lora"]} & {r["prompt"] for r in parts["router"]}
        assert not {r["prompt"] for r in parts["test"]} & {r["prompt"] for r in parts["collab"]}
    with pytest.raises(agents.ConfigError, match="router_test"):
        agents.family_rows(tmp_path, agents.Config(router_test=30))


def test_spurious_positions_have_no_sum_near(world):
    w, _ = world
    texts = agents.toolformer_texts(w, 6, seed=0)
    pre = agents.spurious_prefixes(w, 8, seed=0, exclude=set(texts))
    assert len(pre) == 8
    full = agents.toolformer_texts(w, 16, seed=7919)
    for p in pre:
        text = next(t for t in full if t.startswith(p))
        assert "=" not in text[len(p) - 1:len(p) + 12]  # no result is about to come: a call cannot help here
