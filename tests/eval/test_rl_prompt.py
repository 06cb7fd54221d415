import random

from genforge.eval.rl_prompt import RLPromptConfig, render, rl_prompt_search

PHRASES = ("", "Answer.", "Be brief.", "magic words", "Read carefully.", "Hmm.")


def stub_score(instructions, step):
    """A stub task: an instruction containing the magic words solves 80 % of a noisy minibatch, others 20 %."""
    rng = random.Random(step)
    return [(0.8 if "magic" in ins else 0.2) + rng.uniform(-0.1, 0.1) for ins in instructions]


def test_render_drops_empty_and_repeats():
    assert render(PHRASES, [0, 1, 1, 2]) == "Answer. Be brief."
    assert render(PHRASES, [0, 0]) == ""


def test_rl_prompt_search_raises_the_reward_on_a_stub_task():
    res = rl_prompt_search(stub_score, PHRASES, RLPromptConfig(slots=2, steps=15, group=6, seed=0))
    first, last = sum(res["curve"][:3]) / 3, sum(res["curve"][-3:]) / 3
    assert last > first + 0.2  # the policy learned to say the magic words
    assert "magic" in res["greedy"] and "magic" in res["best"]
    assert len(res["curve"]) == 15 and all(1 <= e <= 6 for e in res["evaluated"])


def test_no_signal_no_learning():
    res = rl_prompt_search(lambda ins, step: [0.5] * len(ins), PHRASES, RLPromptConfig(steps=5, seed=1))
    assert all(abs(p - 1 / len(PHRASES)) < 1e-6 for row in res["probs"] for p in row)  # zero advantage: no update
