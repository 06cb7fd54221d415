"""PAL and ReAct on scripted stub models: exact programs, exact trajectories, malformed-action handling."""

from __future__ import annotations

import random

from genforge.agents.knowledge import KnowledgeBase, multihop_questions
from genforge.agents.llm import ScriptedModel
from genforge.agents.pal import rationale_to_program, solve
from genforge.agents.react import ReActConfig, Step, answer_retrieve_once, demo_trajectory, run_episode
from genforge.agents.tools import default_registry
from genforge.world.facts import build_world
from genforge.world.tasks import arithmetic

W = build_world(0, 40, 8, 12)
KB = KnowledgeBase.from_world(W)


def _rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [arithmetic(rng, W) for _ in range(n)]


def test_rationale_programs_compute_every_gold_answer():
    from genforge.agents.sandbox import run_python
    rows = _rows(25)
    import textwrap
    code = "\n".join(f"def f{i}():\n{textwrap.indent(rationale_to_program(r['rationale']), '    ')}\nf{i}()"
                     for i, r in enumerate(rows))
    out = run_python(code).stdout.split()
    assert out == [r["answer"] for r in rows]


def test_pal_beats_direct_on_a_stub_that_structures_but_cannot_add():
    """The stub writes the right program (PAL) but guesses numbers off by one when it must compute them."""
    rows, shots = _rows(12, 1), _rows(2, 2)
    by_question = {r.get("question", r["prompt"]): r for r in rows}

    def reply(prompt: str) -> str:
        q = prompt.rsplit("Question: ", 1)[1].split("\n")[0]
        r = by_question[q]
        if prompt.endswith("Program:\n"):
            return rationale_to_program(r["rationale"]) + "\n\nQuestion: next"
        if prompt.endswith("The answer is"):
            return f" {int(r['answer']) + 1}."
        return f" {r['rationale']}\nThe answer is {int(r['answer']) + 1}."
    model = ScriptedModel(reply)
    pal = solve(model, rows, shots, "pal")
    direct = solve(model, rows, shots, "direct")
    assert pal.accuracy == 1.0 and direct.accuracy == 0.0
    assert all(d["isolation"] in ("bwrap", "rlimits-only") for d in pal.details)
    assert pal.ci[0] <= pal.accuracy <= pal.ci[1]
    assert "Program:\nstep1 = " in model.prompts[0]  # the few-shot programs are in the prompt


def test_pal_program_errors_score_zero():
    rows, shots = _rows(2, 3), _rows(1, 4)
    res = solve(ScriptedModel(lambda p: "print(undefined_name)"), rows, shots, "pal")
    assert res.accuracy == 0.0 and res.details[0]["output"].startswith("error: NameError")


def _qrow() -> dict:
    return next(r for r in multihop_questions(W, 20) if "sibling" in r["question"])


def test_react_exact_trajectory_on_scripted_stub():
    row = _qrow()
    reg = default_registry(kb=KB, include=("search", "calculator"))
    script = [f" I should look up the sibling.\nAction: search[{row['question'][27:-6]}]",
              f" Now where does {row['bridge']} live?\nAction: search[{row['bridge']} lives in]",
              f" Found it.\nAction: finish[{row['answer']}]\nObservation: ignored"]
    model = ScriptedModel(script)
    t = run_episode(model, reg, row["question"], ReActConfig(max_steps=5))
    first = " | ".join(KB.search(row["question"][27:-6]))
    second = " | ".join(KB.search(f"{row['bridge']} lives in"))
    assert t.status == "answered" and t.answer == row["answer"] and t.n_malformed == 0
    assert t.steps == [Step("I should look up the sibling.", "search", row["question"][27:-6], first),
                       Step(f"Now where does {row['bridge']} live?", "search", f"{row['bridge']} lives in", second),
                       Step("Found it.", "finish", row["answer"], "")]
    assert row["hops"][0] in first and row["hops"][1] in second
    # the second prompt carries the first observation: the loop feeds tool output back
    assert model.prompts[1].endswith(f"Observation: {first}\nThought:")


def test_trajectory_messages_train_actions_not_observations(tiny_tokenizer):
    """As chat turns, a trajectory's observations are user turns: the assistant mask (what a fine-tune learns)
    covers every thought and action and no observation."""
    row = _qrow()
    script = [f" Look up.\nAction: search[{row['question'][27:-6]}]", " Done.\nAction: finish[X]"]
    t = run_episode(ScriptedModel(script), default_registry(kb=KB, include=("search",)), row["question"],
                    ReActConfig(max_steps=5))
    msgs = t.to_messages("Answer with search. " + row["question"])
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert msgs[1]["content"] == f"Thought: Look up.\nAction: search[{row['question'][27:-6]}]"
    assert msgs[2]["content"] == f"Observation: {t.steps[0].observation}"
    assert msgs[3]["content"] == "Thought: Done.\nAction: finish[X]"
    ids, mask = tiny_tokenizer.encode_chat(msgs)
    learned = tiny_tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert "search[" in learned and "finish[X]" in learned and "Observation" not in learned


def test_malformed_action_counted_and_retried_once():
    reg = default_registry(kb=KB, include=("search", "calculator"))
    model = ScriptedModel([" I will compute.\nAction: calculate[2+2]",
                           " Oops.\nAction: calculator[{\"expression\": \"2+2\"}]",
                           " Done.\nAction: finish[4]"])
    t = run_episode(model, reg, "What is 2+2?")
    assert t.status == "answered" and t.answer == "4" and t.n_malformed == 1
    assert t.steps[0].malformed and "unknown tool 'calculate'; did you mean 'calculator'?" in t.steps[0].observation
    assert t.steps[1].observation == "4"


def test_two_malformed_in_a_row_fail_the_episode():
    reg = default_registry(kb=KB, include=("calculator",))
    model = ScriptedModel([" hmm, no action here", " Try.\nAction: calculator[{\"expr\": \"1\"}]", " never asked"])
    t = run_episode(model, reg, "What is 1?")
    assert t.status == "malformed" and t.n_malformed == 2 and len(model.prompts) == 2
    assert "unexpected argument 'expr'" in t.steps[1].observation


def test_step_limit():
    reg = default_registry(kb=KB, include=("calculator",))
    t = run_episode(ScriptedModel(lambda p: " again\nAction: calculator[1+1]"), reg, "q", ReActConfig(max_steps=3))
    assert t.status == "step_limit" and len(t.steps) == 3 and t.answer == ""


def test_demo_and_retrieve_once_prompts():
    row = _qrow()
    demo = demo_trajectory(KB, row)
    assert demo.count("Action: search[") == 2 and demo.endswith(f"Action: finish[{row['answer']}]\n\n")
    model = ScriptedModel(lambda p: " Somewhere\n")
    assert answer_retrieve_once(model, KB, [row["question"]], [row]) == ["Somewhere"]
    assert model.prompts[0].count("Facts: ") == 2
