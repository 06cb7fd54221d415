"""The reasoning generators: every phrasing of every row is right, the rationales compute what they say, and a
question keeps one phrasing (so the split builder's dedup keeps it out of two splits)."""

import random
import re

import pytest

from genforge.eval.score import score_outputs
from genforge.world.facts import build_world
from genforge.world.reasoning import (
    STYLES,
    addition_steps,
    arithmetic,
    calendar_skills,
    coin_flip,
    date_arithmetic,
    last_letter,
    multiple_choice,
    pick_style,
)
from genforge.world.tasks import is_correct

GENS = [arithmetic, last_letter, coin_flip, date_arithmetic, multiple_choice]


@pytest.fixture(scope="module")
def rows():
    w = build_world(0, 60, 12, 20)
    rng = random.Random(0)
    return [g(rng, w) for g in GENS for _ in range(200)]


def test_every_phrasing_is_correct_and_asks_its_style(rows):
    for r in rows:
        assert r["prompt"] == r["prompts"][r["style"]] and r["response"] == r["responses"][r["style"]]
        assert {"cot", "direct"} <= set(r["prompts"]) <= set(STYLES)
        for style, resp in r["responses"].items():
            assert is_correct(r["task"], resp, r["answer"]), (style, resp)
            shown = "-".join(r["answer"]) if r["task"] == "last_letter" else r["answer"]
            assert resp.endswith(f"The answer is {shown}.")
            assert r["prompts"][style] == f"{r['question']}\n{STYLES[style]}"
        assert r["responses"]["direct"] == f"The answer is {shown}."


def test_styles_are_mixed_and_fixed_by_the_question(rows):
    for task in ("arithmetic", "last_letter"):
        styles = {r["style"] for r in rows if r["task"] == task}
        assert styles == ({"cot", "direct", "l2m"} if task == "last_letter" else {"cot", "direct"})
    r = rows[0]
    assert all(pick_style(r["task"], r["question"]) == r["style"] for _ in range(3))


@pytest.mark.parametrize(("a", "b"), [(347, 589), (999, 999), (100, 100), (905, 95), (123, 877)])
def test_column_addition_rationale_computes_the_sum(a, b):
    steps = addition_steps(a, b)
    columns = max(len(str(a)), len(str(b)))
    assert all(", carry " in s for s in steps[:columns])  # the carry is always written
    carry = 0
    for i, s in enumerate(steps[:columns]):
        lhs, rhs = re.match(r"([\d+]+)=(\d+),", s).groups()
        terms = [int(x) for x in lhs.split("+")]
        assert terms[:2] == [a // 10 ** i % 10, b // 10 ** i % 10] and sum(terms) == int(rhs) == sum(terms[:2]) + carry
        carry = int(rhs) // 10
    # each line ends with the answer so far, one digit longer than the last: the final sum is the last line's
    sofar = [re.search(r"so far (\d+)\.$", s).group(1) for s in steps]
    assert [len(x) for x in sofar] == list(range(1, len(steps) + 1))
    assert all(b.endswith(a) for a, b in zip(sofar, sofar[1:])) and int(sofar[-1]) == a + b


def test_arithmetic_rationale_matches_the_answer(rows):
    for r in (r for r in rows if r["task"] == "arithmetic"):
        a, b, total = map(int, re.search(r"So (\d+) \+ (\d+) = (\d+)\.", r["rationale"]).groups())
        assert a + b == total == int(r["answer"]) and str(a) in r["question"] and str(b) in r["question"]


def test_last_letter_spans_4_to_6_words_and_least_to_most_builds_the_answer(rows):
    for r in (r for r in rows if r["task"] == "last_letter"):
        words = r["question"].rsplit(": ", 1)[1].rstrip(".").split()
        assert 4 <= len(words) <= 6 and r["answer"] == "".join(w[-1].lower() for w in words)
        sofar = re.findall(r"so far ([a-z-]+)\.", r["responses"]["l2m"])
        assert sofar == ["-".join(r["answer"][:k]) for k in range(1, len(words) + 1)]
        # each word is written after a space, as in the question, so it is the same BPE tokens in both
        assert re.findall(r"The last letter of (\S+) is", r["rationale"]) == words
        # the model writes the letters hyphenated; every scorer compares what it extracts with the joined gold
        assert score_outputs("last_letter", [r], [r["responses"]["cot"]]).score == 1.0
        assert r["responses"]["direct"] == f"The answer is {'-'.join(r['answer'])}."


def test_coin_flip_rationale_tracks_the_state(rows):
    for r in (r for r in rows if r["task"] == "coin_flip"):
        flips = r["question"].count(" flips the coin.")
        assert r["answer"] == ("yes" if flips % 2 == 0 else "no")
        # every step restates one sentence of the question, in order, then the state after it
        said = [s.split(",")[0] + "." for s in r["rationale"].splitlines()[1:-1]]
        asked = r["question"].split(". ")[1:-1]
        assert said == [a if a.endswith(".") else a + "." for a in asked]


def test_needle_rows_plant_one_code_and_ask_for_it():
    from genforge.world.needle import needle_row

    w = build_world(0, 60, 12, 20)
    rng = random.Random(0)
    for _ in range(50):
        r = needle_row(rng, w, max_words=60)
        context, question = r["prompt"].rsplit("\n", 1)
        assert context.count(r["response"]) == 1 and question.startswith("What is the secret code for the ")
        assert is_correct("needle", r["response"], r["answer"]) and not is_correct("needle", "otter-1.", r["answer"])
        assert len(context.split()) <= 60 + 40  # the budget, plus the last sentence and the needle


def test_needle_document_repeats_the_planted_fact_at_the_end():
    from genforge.world.needle import needle_document

    doc = needle_document(random.Random(1), build_world(0, 60, 12, 20), 60)
    body, last = doc.rsplit("\n", 1)
    fact = last.split(": ", 1)[1]
    assert fact[0].islower() and fact[0].upper() + fact[1:] in body


def _date(text: str):
    import datetime as dt

    return dt.datetime.strptime(text, "%B %d, %Y").date()


def test_calendar_skills_are_the_pieces_of_date_arithmetic():
    """The drill trains the pieces: a count that stays inside one month, and a month's length."""
    import calendar
    import datetime as dt

    w, rng = build_world(0, 60, 12, 20), random.Random(1)
    kinds = set()
    for _ in range(300):
        r = calendar_skills(rng, w)
        m = re.fullmatch(r"(\d+) days? after (.+) is (.+)\.", r["rationale"])
        if m:
            n, start, end = int(m[1]), _date(m[2]), _date(m[3])
            assert end == start + dt.timedelta(days=n) and end.month == start.month and r["answer"] == m[3]
            kinds.add("count")
        else:
            month, year, days = re.fullmatch(r"(\w+) (\d+) has (\d+) days\.", r["rationale"]).groups()
            month_no = list(calendar.month_name).index(month)
            assert int(days) == calendar.monthrange(int(year), month_no)[1] == int(r["answer"])
            kinds.add("length")
        assert r["responses"]["direct"] == f"The answer is {r['answer']}."
    assert kinds == {"count", "length"}
