"""The speedrun `agents` stage's data: the formats it teaches are exactly what its evaluation reads back."""

from __future__ import annotations

import random

import pytest

from genforge.agents.knowledge import KnowledgeBase
from genforge.agents.llm import ScriptedModel, chat_prefix
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
    the training text, the prompt format, the stop strings and the action parser agree."""
    w, kb = world
    _, test = agents.hop_rows(w, 20, 10, seed=1)
    reg = agents.search_registry(kb, 2)
    gold = {r["question"]: agents.gold_trajectory(r, reg).render_steps().rstrip("\n") for r in test}

    def prompt_fn(t):
        return chat_prefix(tok, f"{agents.TAGS['react']} {t.question}", t.render_steps() + "Thought:")

    def reply(prompt: str) -> str:
        q = next(q for q in gold if f"{agents.TAGS['react']} {q}" in prompt)
        so_far = prompt.split("<|assistant|>", 1)[1]
        assert gold[q].startswith(so_far)
        return gold[q][len(so_far):] + "\nObservation: (the model would go on)"

    model = ScriptedModel(reply)
    trajs = run_episodes(model, reg, list(gold), ReActConfig(max_steps=5), prompt_fn=prompt_fn)
    assert [t.answer for t in trajs] == [r["answer"] for r in test]
    assert all(t.status == "answered" and t.n_malformed == 0 and len(t.steps) == 3 for t in trajs)
    assert len(model.prompts) == 3 * len(test)  # one batched call per round: three rounds


def test_training_conversations_hold_every_format(world):
    w, kb = world
    rng = random.Random(0)
    arith = [arithmetic(rng, w) for _ in range(5)]
    hops, _ = agents.hop_rows(w, 12, 10, seed=2)
    reg = agents.search_registry(kb, 2)
    convs = agents.training_conversations(arith, hops, kb, reg, 2)
    assert len(convs) == 3 * len(arith) + 3 * len(hops)
    pal = [c[1]["content"] for c in convs if c[0]["content"].startswith(agents.TAGS["pal"])]
    from genforge.agents.pal import number_bindings

    outs = [run_python(number_bindings(r["prompt"]) + p).stdout.strip() for r, p in zip(arith, pal)]
    assert outs == [r["answer"] for r in arith]  # every PAL training program prints the gold answer
    assert all("n0" in p for p in pal)  # and takes its numbers from the bindings
    react = [c[1]["content"] for c in convs if c[0]["content"].startswith(agents.TAGS["react"])]
    assert all(t.startswith("Thought: Find ") and "\nAction: search[" in t and t.endswith("]") for t in react)


def test_batched_episodes_equal_one_at_a_time():
    reg = default_registry(include=("calculator",))

    def reply(p: str) -> str:
        n = p.count("Observation:")
        return f" step {n}\nAction: calculator[{n}+1]" if n < 2 else f" done\nAction: finish[{len(p) % 7}]"

    qs = ["What is 1?", "What is two?", "And three?"]
    one = [run_episode(ScriptedModel(reply), reg, q).to_dict() for q in qs]
    many = [t.to_dict() for t in run_episodes(ScriptedModel(reply), reg, qs)]
    assert one == many
