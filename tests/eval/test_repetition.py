"""Repetition metrics on strings whose values are known by hand."""

import pytest

from genforge.eval import metrics


def test_distinct_n_known_values():
    assert metrics.distinct_n("a b c d", n=1) == 1.0
    assert metrics.distinct_n("a a a a", n=1) == 0.25
    # "a b a b a": bigrams ab ba ab ba -> 2 unique of 4
    assert metrics.distinct_n("a b a b a", n=2) == 0.5
    # pooled over texts (Li et al. 2016): the same sentence twice halves distinct-2
    assert metrics.distinct_n(["x y z", "x y z"], n=2) == 0.5
    assert metrics.distinct_n(["x y z", "u v w"], n=2) == 1.0
    assert metrics.distinct_n("too short", n=4) == 1.0
    assert metrics.distinct_n("A B", n=1, tokenize=lambda t: list(t)) == 1.0  # characters 'A', ' ', 'B'


def test_repeated_ngram_share():
    assert metrics.repeated_ngram_share("a b c a b c", n=3) == pytest.approx(1 / 4)  # abc bca cab abc
    assert metrics.repeated_ngram_share("one two three four five", n=2) == 0.0
    with pytest.raises(ValueError):
        metrics.ngrams(["a"], 0)


def test_find_loop_on_the_issue_sample():
    text = "10 groups of 10 make 100. 10 groups of 10 make 100."
    loop = metrics.find_loop(text)
    assert loop is not None
    assert (loop.unit, loop.period, loop.start, loop.repeats) == ("10 groups of 10 make 100.", 6, 0, 2.0)
    # a prefix before the loop and a copy cut off by the token budget
    loop = metrics.find_loop("Alice lives in Brook. she said hi there. she said hi there. she said")
    assert loop is not None and loop.unit == "she said hi there." and loop.start == 4 and loop.repeats == 2.5


@pytest.mark.parametrize("text", [
    "Alice lives in Brook and works as a baker near the river market.",
    "very very good",                        # repeats, but too short to be a loop
    "the answer is 7. the answer is 7.",     # two copies, 8 tokens: a loop only at min_tokens <= 8
])
def test_find_loop_ignores_normal_text(text):
    assert metrics.find_loop(text, min_tokens=9) is None


def test_loop_rate_and_single_token_loops():
    assert metrics.find_loop("ok " * 10).period == 1
    texts = ["a b c d e f g h i j", "go home " * 6, "x y " * 2]
    assert metrics.loop_rate(texts) == pytest.approx(1 / 3)
    assert metrics.loop_rate([]) == 0.0
