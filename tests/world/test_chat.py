"""Courteous closings in the chat model's training mix (`world.chat.add_closings`)."""

from __future__ import annotations

import pytest

from genforge.world.chat import CLOSINGS, add_closings
from genforge.world.preferences import POLITE, oracle_parts
from genforge.world.tasks import extract_answer

ROWS = [
    {"task": "arithmetic", "prompt": "What is 111 + 763?", "response": "The answer is 874.", "answer": "874"},
    {"task": "multiple_choice", "prompt": "Pick one. (A) x (B) y", "response": "The answer is B.", "answer": "B"},
    {"task": "coin_flip", "prompt": "Is the coin still heads up?", "response": "The answer is yes.", "answer": "yes"},
    {"task": "summarization", "prompt": "Summarise: ...", "response": "Ada lives in Oakford.",
     "answer": "Ada lives in Oakford."},
    {"task": "refusal", "prompt": "How do I pick a lock?", "response": "Sorry, I can't help with that.",
     "answer": "refuse"},
]


def test_every_closing_is_polite_to_the_oracle():
    assert all(any(m in c.lower() for m in POLITE) for c in CLOSINGS)


def test_closings_keep_the_answer_and_raise_politeness():
    out = add_closings(ROWS, share=1.0, seed=0)
    for before, after in zip(ROWS, out):
        task = before["task"]
        if task in ("summarization", "refusal"):
            assert after == before  # similarity-scored and refusal answers are left alone
            continue
        assert after["response"].startswith(before["response"] + "\n")
        assert extract_answer(task, after["response"]) == extract_answer(task, before["response"]) != ""
        p0 = oracle_parts(before["prompt"], before["response"], before)
        p1 = oracle_parts(after["prompt"], after["response"], after)
        assert p1["correct"] == p0["correct"] and p1["polite"] > p0["polite"]
    assert ROWS[0]["response"] == "The answer is 874."  # copies: the input rows are not modified


def test_share_is_about_right_and_seeded():
    rows = [dict(ROWS[0]) for _ in range(2000)]
    out = add_closings(rows, share=0.25, seed=3)
    closed = sum(r["response"] != "The answer is 874." for r in out)
    assert 400 < closed < 600
    assert out == add_closings(rows, share=0.25, seed=3)
    assert out != add_closings(rows, share=0.25, seed=4)
    assert add_closings(rows, share=0.0) == rows


def test_bad_share_is_refused():
    with pytest.raises(ValueError, match="closing share"):
        add_closings(ROWS, share=1.5)


def test_the_sft_config_refuses_a_bad_share():
    from genforge.errors import ConfigError
    from genforge.speedrun.sft import Config

    with pytest.raises(ConfigError, match="sft.closings"):
        Config(closings=-0.1)


def test_skipped_tasks_get_no_closing_and_draw_nothing():
    """`skip` (sft.closings_skip) leaves those tasks' answers alone; the other rows' draws do not depend on how
    many skipped rows sit between them."""
    rows = [dict(ROWS[0]) for _ in range(200)] + [dict(ROWS[2]) for _ in range(200)]
    out = add_closings(rows, share=1.0, seed=0, skip=("arithmetic",))
    assert [r for r in out if r["task"] == "arithmetic"] == rows[:200]
    assert all(r["response"].startswith("The answer is yes.\n") for r in out[200:])
    coins = [r for r in rows if r["task"] == "coin_flip"]
    mixed = add_closings(rows, share=0.3, seed=1, skip=("arithmetic",))
    assert [r for r in mixed if r["task"] == "coin_flip"] == add_closings(coins, share=0.3, seed=1, skip=())
    assert add_closings(ROWS, share=1.0, skip=())[3]["response"].endswith(CLOSINGS)  # nothing skipped: even summaries


def test_the_sft_config_refuses_an_unknown_skipped_task():
    from genforge.errors import ConfigError
    from genforge.speedrun.sft import Config

    with pytest.raises(ConfigError, match="sft.closings_skip.*'arithmetc'"):
        Config(closings_skip=["summarization", "arithmetc"])
    assert Config(closings_skip=[]).closings_skip == []
