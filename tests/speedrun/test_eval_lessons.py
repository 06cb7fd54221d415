"""The eval stage's lessons on scripted models: each arm asks the row's own phrasing, the claims are paired bootstrap
intervals over the same items, and a strategy's cost is counted in model calls."""

import random

import pytest

from genforge.eval.lm import StubLM
from genforge.report import StageReport
from genforge.speedrun import eval as ev
from genforge.speedrun.stage import StageContext


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    from genforge.eval.tasks import resolve_tasks
    from genforge.world import generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(out, seed=0, size="smoke")
    return {t.name: t for t in resolve_tasks("all", out, "test")}


def scripted(tasks, wrong_styles=("direct",), noisy: float = 0.0):
    """A model that knows every test row: right in the styles not in `wrong_styles`, wrong in those; with `noisy`,
    a sampled (T > 0) answer is wrong that often."""
    answers = {}
    for name in ("arithmetic", "coin_flip", "last_letter", "multiple_choice"):
        for row in tasks[name].load():
            for style, prompt in row["prompts"].items():
                answers[prompt] = (style, row["responses"][style], row["answer"])

    def respond(prompt, i, rng):
        style, good, answer = answers.get(prompt, ("?", "", ""))
        if style in wrong_styles:
            return "The answer is zzz."
        if noisy and i > 0 and rng.random() < noisy:  # sampled answers agree on one wrong number
            return "The answer is 7."
        return good
    return StubLM(respond, chat=True)


def test_score_strategy_uses_the_style_and_counts_calls(tasks):
    lm = scripted(tasks)
    rows = tasks["arithmetic"].load(5)
    cfg = ev.Config(samples=4)
    d = ev.score_strategy(lm, tasks["arithmetic"], rows, "direct", cfg, ev.EvalConfigStub(), None)
    c = ev.score_strategy(lm, tasks["arithmetic"], rows, "cot", cfg, ev.EvalConfigStub(), None)
    s = ev.score_strategy(lm, tasks["arithmetic"], rows, "self_consistency", cfg, ev.EvalConfigStub(), None)
    assert d["items"] == [0.0] * 5 and c["items"] == [1.0] * 5 and s["items"] == [1.0] * 5
    assert d["calls_per_item"] == c["calls_per_item"] == 1 and s["calls_per_item"] == 4
    assert lm.calls[0][0] == [r["prompts"]["direct"] for r in rows]
    assert all(p.endswith("Give only the final answer.") for p in lm.calls[0][0])


def test_prompting_lessons_hold_for_a_model_that_reasons_and_fail_for_one_that_does_not(tasks, tmp_path):
    cfg = ev.Config(limit=20, samples=3, strategies=["self_consistency", "least_to_most", "self_verify", "tot"],
                    search_limit=2)
    ctx = StageContext(tmp_path)
    # reasons well (CoT, L2M right), answers directly badly: CoT and SC lessons hold; L2M ties CoT, so not "beats"
    rep = StageReport("eval", "t")
    means = ev.prompting_lessons(ctx, rep, scripted(tasks), cfg, ev.EvalConfigStub(), dict(tasks), tmp_path)
    by = {les.claim.split(" (")[0]: les for les in rep.lessons}
    cot = [les for les in rep.lessons if les.claim.startswith("chain of thought beats")]
    assert len(cot) == 2 and all(les.holds for les in cot)
    assert all(les.effect == pytest.approx(1.0) for les in cot)
    assert by["self-consistency@3 is at least as accurate as chain of thought"].holds
    assert not by["least-to-most beats chain of thought on the compositional task"].holds
    assert means["cot"] == 1.0 and means["direct"] == 0.0
    costs = {r.metric: r.value for r in rep.rows if r.metric.startswith("cost:")}
    assert costs["cost: self_consistency on arithmetic"] == 3 and costs["cost: tot on arithmetic@2"] > 3
    # CoT wrong, direct and L2M right: the CoT lesson fails and L2M beats CoT
    rep2 = StageReport("eval", "t")
    ev.prompting_lessons(ctx, rep2, scripted(tasks, wrong_styles=("cot",)), cfg, ev.EvalConfigStub(), dict(tasks),
                         tmp_path)
    by2 = {les.claim.split(" (")[0]: les for les in rep2.lessons}
    assert not any(les.holds for les in rep2.lessons if les.claim.startswith("chain of thought beats"))
    assert by2["least-to-most beats chain of thought on the compositional task"].holds


def test_self_consistency_non_inferiority_fails_when_sampling_hurts(tasks, tmp_path):
    cfg = ev.Config(limit=20, samples=5, cot_tasks=[], strategies=["self_consistency"])
    rep = StageReport("eval", "t")
    ev.prompting_lessons(StageContext(tmp_path), rep, scripted(tasks, noisy=0.95), cfg, ev.EvalConfigStub(),
                         dict(tasks), tmp_path)
    (sc,) = [les for les in rep.lessons if les.claim.startswith("self-consistency")]
    assert sc.effect < -0.5 and not sc.holds


def test_self_consistency_does_not_hold_when_nothing_is_solved(tasks, tmp_path):
    cfg = ev.Config(limit=10, samples=3, cot_tasks=[], strategies=["self_consistency"])
    rep = StageReport("eval", "t")
    ev.prompting_lessons(StageContext(tmp_path), rep, scripted(tasks, wrong_styles=("cot", "direct")), cfg,
                         ev.EvalConfigStub(), dict(tasks), tmp_path)
    (sc,) = [les for les in rep.lessons if les.claim.startswith("self-consistency")]
    assert sc.effect == 0.0 and sc.target == 0.0 and not sc.holds  # 0 vs 0 is not "at least as accurate"


def test_icl_prompts_show_solved_examples_only_in_the_few_shot_arm(tasks):
    rows = tasks["coin_flip"].load(3)
    zero, few = ev.icl_prompts(tasks["coin_flip"], rows, 2)
    assert zero[0] == f"Question: {rows[0]['question']}\nAnswer:"
    assert few[0].endswith(zero[0]) and few[0].count("Question:") == 3 and few[0].count("The answer is") == 2
    assert "Think step by step" not in few[0]


def test_needle_cloze_case_ends_with_the_needles_lead_in():
    from genforge.eval.needle import world_cloze_case

    case = world_cloze_case(120, 0.5, random.Random(0), lambda s: len(s.split()))
    last = case.prompt.splitlines()[-1]
    assert last.startswith("The secret code for the ") and last.endswith(" is")
    assert f"{last} {case.answer}." in case.prompt  # the needle itself sits in the context


class WordLM(StubLM):
    """A stub that counts words as tokens."""

    max_len = 512

    def count_tokens(self, text):
        return len(text.split())


def test_icl_demonstrations_fit_the_trained_context(tasks, tmp_path):
    """Demonstrations that overflow the trained context are cut from the left by the LM (the model reads a fragment
    at untrained positions): the lesson uses only as many as fit, and says how many in its claim."""
    task, rows = tasks["coin_flip"], tasks["coin_flip"].load(4)
    lm = WordLM(lambda p, i, rng: "The answer is yes." if p.count("Question:") > 1 else "heads up and so on")
    words = lm.count_tokens
    full = max(words(p) for p in ev.icl_prompts(task, rows, 3, "cot")[1])
    assert ev.fit_shots(task, rows, 3, "cot", words, full) == 3
    k = ev.fit_shots(task, rows, 3, "cot", words, full - 1)
    assert k < 3 and max(words(p) for p in ev.icl_prompts(task, rows, k, "cot")[1]) <= full - 1
    assert ev.fit_shots(task, rows, 3, "cot", words, 5) == 0
    # direct demonstrations ("The answer is X.") are shorter than worked ones, so more of them fit
    assert max(words(p) for p in ev.icl_prompts(task, rows, 3, "direct")[1]) < full
    cfg = ev.Config(icl_limit=4, icl_shots=3, icl_style="cot", icl_tokens=8)
    context = max(words(p) for p in ev.icl_prompts(task, rows, 2, "cot")[1]) + cfg.icl_tokens  # 2 of 3 fit
    rep = StageReport("eval", "t")
    ev.icl_lesson(rep, lm, task, cfg, tmp_path, context=context)
    few = lm.calls[1][0]
    assert all(words(p) <= context - cfg.icl_tokens for p in few) and lm.calls[1][1]["max_new_tokens"] == 8
    assert few[0].count("Question:") == 3 and rep.lessons[0].claim.startswith("in-context learning: 2-shot")
    assert rep.lessons[0].holds  # the stub answers in format only after demonstrations
