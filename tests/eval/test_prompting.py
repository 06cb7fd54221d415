"""Prompting strategies on scripted generate functions: the control flow, not a model's skill."""

import re

import pytest

from genforge.eval import prompting as P
from genforge.eval.lm import StubLM


def test_few_shot_prompt_formats():
    ex = [P.Example("What is 2 plus 3?", "The answer is 5.", "2 plus 3 is 5.", "5"),
          P.Example("What is 1 plus 1?", "The answer is 2.", "1 plus 1 is 2.", "2")]
    assert P.few_shot_prompt("What is 4 plus 4?") == "What is 4 plus 4?"  # zero-shot: untouched
    one = P.few_shot_prompt("What is 4 plus 4?", ex[:1])
    assert one == "Question: What is 2 plus 3?\nAnswer: The answer is 5.\n\nQuestion: What is 4 plus 4?\nAnswer:"
    cot = P.few_shot_prompt("What is 4 plus 4?", ex, cot=True, instruction="Solve it.")
    assert cot.startswith("Solve it.\n\n")
    assert "Answer: 2 plus 3 is 5. The answer is 5.\n\n" in cot and cot.count("Question:") == 3
    assert cot.endswith("Question: What is 4 plus 4?\nAnswer:")


def test_majority_vote_normalises_and_breaks_ties_by_first_seen():
    assert P.majority_vote(["7", "5", "7.0", "", "5"]) == ("7", {"7": 2, "5": 2})
    assert P.majority_vote(["5", "7", "7"])[0] == "7"
    assert P.majority_vote(["", ""]) == ("", {})


def test_self_consistency_votes_on_extracted_answers():
    script = ["I think 3+4 = 7. The answer is 7.", "Hmm, The answer is 5.", "so 7", "The answer is 3.",
              "Therefore the answer is 7."]
    lm = StubLM(respond=lambda prompt, i, rng: script[i] if "first" in prompt else "The answer is 1.")
    res = P.self_consistency(lm.generate, ["first question", "second question"], k=5, temperature=0.8, seed=3)
    assert res[0]["answer"] == "7" and res[0]["votes"] == {"7": 3, "5": 1, "3": 1}
    assert res[0]["samples"] == script
    assert res[1]["answer"] == "1" and res[1]["votes"] == {"1": 5}
    (prompts, kw), = lm.calls  # one batched call, k samples each, sampling on
    assert kw["n"] == 5 and kw["temperature"] == 0.8 and kw["seed"] == 3


def test_zero_shot_cot_two_stages():
    def respond(prompt, i, rng):
        return " 9" if prompt.endswith("Therefore, the answer is") else "Four plus five makes nine."

    lm = StubLM(respond=respond)
    res = P.zero_shot_cot(lm.generate, ["What is 4 plus 5?"])
    assert res[0]["answer"] == "9"
    first, second = lm.calls[0][0][0], lm.calls[1][0][0]
    assert first == "What is 4 plus 5?\nLet's think step by step."
    assert "Four plus five makes nine." in second and second.endswith("Therefore, the answer is")


def test_least_to_most_answers_subquestions_in_order():
    def respond(prompt, i, rng):
        if prompt.endswith(P.DECOMPOSE + "\n"):
            return "1. How many apples does Mara have?\n2. How many after Tobin gives 2?"
        last_q = prompt.rstrip().rsplit("Question:", 1)[-1]
        if "How many apples does Mara have" in last_q:
            return "3"
        if "after Tobin" in last_q:
            assert "Mara have?\nAnswer: 3" in prompt  # the first subanswer is visible to the second step
            return "5"
        assert "Answer: 3" in prompt and "Answer: 5" in prompt
        return "The answer is 5."

    lm = StubLM(respond=respond)
    (res,) = P.least_to_most(lm.generate, ["Mara has 3 apples; Tobin gives her 2. How many now?"])
    assert res["subquestions"] == ["How many apples does Mara have?", "How many after Tobin gives 2?"]
    assert res["subanswers"] == ["3", "5"] and res["answer"] == "5"
    assert len(lm.calls) == 1 + 2 + 1  # decompose, two steps, final


def test_self_verify_retries_until_verified():
    def respond(prompt, i, rng):
        if "Is the proposed answer correct?" in prompt:
            return "Yes" if "Proposed answer: 5" in prompt else "No"
        return "The answer is 5." if "(Not 4.)" in prompt else "The answer is 4."

    lm = StubLM(respond=respond)
    (res,) = P.self_verify(lm.generate, ["2 plus 3?"], max_retries=2)
    assert res["answer"] == "5" and res["verified"] and res["attempts"] == 2 and res["rejected"] == ["4"]
    assert any(kw["temperature"] > 0 for _, kw in lm.calls)  # the retry sampled


def test_self_verify_keeps_greedy_answer_when_nothing_verifies():
    def respond(prompt, i, rng):
        if prompt.endswith("Reply:"):
            return "No"
        return f"The answer is {20 + prompt.count(',')}." if "(Not" in prompt else "The answer is 11."

    lm = StubLM(respond=respond)
    (res,) = P.self_verify(lm.generate, ["hard question"], max_retries=3, seed=0)
    verifications = [c for c in lm.calls if c[0][0].endswith("Reply:")]
    assert len(verifications) == 4  # the greedy answer + 3 retries, each checked
    assert lm.calls[0][1]["temperature"] == 0.0
    assert not res["verified"] and res["attempts"] == 4 and res["rejected"] == ["11", "20", "21", "22"]
    assert res["answer"] == "11"  # nothing verified: the greedy answer stands


# ---- tree of thoughts -----------------------------------------------------------------------------------------

def _tot_stub(finish_at: int | None = None):
    """Thoughts named by their level and sibling index; optionally one states an answer at `finish_at`."""
    def respond(prompt, i, rng):
        level = len([ln for ln in prompt.splitlines() if ln.startswith("step")])
        if finish_at is not None and level == finish_at and i == 0:
            return "step: so the answer is 42"
        if prompt.endswith("The answer is"):
            return " 17"
        return f"step{level}-{i}"
    return StubLM(respond=respond)


@pytest.mark.parametrize("branching,beam,depth", [(3, 2, 3), (2, 1, 4), (4, 3, 2)])
def test_tot_expands_beam_times_depth(branching, beam, depth):
    lm = _tot_stub()
    res = P.tree_of_thoughts(lm.generate, "Q", cfg=P.ToTConfig(branching=branching, beam_width=beam, depth=depth),
                             evaluate=lambda p, states: [0.5] * len(states))
    # level 0 expands the root; each later level expands the states the previous one kept
    kept = [1]
    for _ in range(depth - 1):
        kept.append(min(beam, branching * kept[-1]))
    assert res.expansions == sum(kept)
    assert res.thoughts == res.evaluations == branching * sum(kept)
    assert len(res.steps) == depth and res.answer == "17"  # nobody finished: the best state concludes
    thought_calls = [kw for _, kw in lm.calls if kw["n"] == branching]
    assert len(thought_calls) == depth  # one batched call per level


def test_tot_keeps_best_and_prunes():
    def evaluate(prompt, states):  # only sibling 0 ever looks promising
        return [0.9 if s[-1].endswith("-0") else 0.1 for s in states]

    lm = _tot_stub()
    res = P.tree_of_thoughts(lm.generate, "Q", cfg=P.ToTConfig(branching=3, beam_width=2, depth=3, prune_below=0.5),
                             evaluate=evaluate)
    assert res.expansions == 3  # one survivor per level
    assert res.pruned == 2 * 3
    assert res.steps == ["step0-0", "step1-0", "step2-0"]
    assert [len(level) for level in res.levels] == [1, 1, 1]


def test_tot_stops_at_a_finished_state_and_uses_model_values():
    def respond(prompt, i, rng):
        if prompt.endswith("Rating:"):
            return "9" if "answer is 42" in prompt else "3"
        return _tot_stub(finish_at=1).respond(prompt, i, rng)

    lm = StubLM(respond=respond)
    res = P.tree_of_thoughts(lm.generate, "Q", cfg=P.ToTConfig(branching=2, beam_width=3, depth=4))
    assert res.answer == "42" and res.value == pytest.approx(0.9)
    assert res.steps[-1] == "step: so the answer is 42"
    # level 0: root -> 2 kept; level 1: 2 expanded -> 2 finished + 1 unfinished kept (beam 3);
    # finished states are not expanded: level 2 expands 1 -> 2 kept; level 3 expands 2
    assert res.expansions == 1 + 2 + 1 + 2
    assert res.evaluations == res.thoughts == 2 * res.expansions
    assert P.parse_rating("Rating: 7/10") == pytest.approx(0.7) and P.parse_rating("great") == 0.5


# ---- automatic prompt search -------------------------------------------------------------------------------------

def test_prompt_search_keeps_best_instruction():
    dev = [P.Example(f"What is {a} plus {b}?", "", "", str(a + b)) for a, b in [(1, 2), (3, 4), (5, 5)]]

    def respond(prompt, i, rng):
        if "The instruction was:" in prompt:
            return ["Add the two numbers carefully.", "Say hello.", "Add the two numbers carefully."][i % 3]
        a, b = map(int, re.findall(r"\d+", prompt.splitlines()[-1]))
        if prompt.startswith("Add the two numbers carefully."):
            return f"The answer is {a + b}."
        if prompt.startswith("Answer the question."):
            return f"The answer is {a + b}." if a < 3 else "The answer is 0."
        return "The answer is 0."

    lm = StubLM(respond=respond)
    res = P.prompt_search(lm.generate, dev, lambda out, ex: float(P.extract_answer(out) == ex.answer),
                          seed_instructions=("", "Answer the question."), n_generated=3)
    scores = {c["instruction"]: c["score"] for c in res["candidates"]}
    assert scores == {"": 0.0, "Answer the question.": pytest.approx(1 / 3), "Add the two numbers carefully.": 1.0,
                      "Say hello.": 0.0}  # proposals are deduplicated
    assert res["best"] == "Add the two numbers carefully." and res["best_score"] == 1.0
