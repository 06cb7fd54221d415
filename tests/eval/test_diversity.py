import math

import pytest

from genforge.errors import DataError
from genforge.eval.diversity import diversity, per_prompt, self_bleu
from genforge.eval.metrics import distinct_n


def test_self_bleu_identical_and_disjoint():
    assert self_bleu(["the cat sat on the mat"] * 3) == pytest.approx(100.0)
    assert self_bleu(["alpha beta gamma delta", "one two three four"]) == pytest.approx(0.0)


def test_self_bleu_hand_computed():
    # "a b c d" vs "a b c e": precisions 3/4, 2/3, 1/2 and 0/1 -> exp smoothing makes the last 1/2 (0.5 / 1);
    # brevity penalty 1; BLEU = (3/4 * 2/3 * 1/2 * 1/2) ** (1/4) = 0.125 ** 0.25. Symmetric, so the mean is the same.
    assert self_bleu(["a b c d", "a b c e"]) == pytest.approx(100 * 0.125 ** 0.25, abs=1e-6)
    with pytest.raises(DataError):
        self_bleu(["only one"])


def test_distinct_n_hand_computed():
    # "a b a b" has bigrams ab, ba, ab: 2 distinct of 3
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["a b", "a c"], 1) == pytest.approx(3 / 4)


def test_diversity_averages_per_prompt():
    groups = [["a b c d", "a b c e"], ["x y", "x y"]]
    d = diversity(groups)
    assert d["distinct_1"] == pytest.approx((5 / 8 + 2 / 4) / 2)
    assert d["self_bleu"] == pytest.approx((100 * 0.125 ** 0.25 + 100.0) / 2, abs=1e-6)
    p = per_prompt(groups)
    assert len(p["self_bleu"]) == 2 and math.isclose(p["distinct_2"][1], 1 / 2)
