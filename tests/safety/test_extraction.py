import math

import pytest

from genforge.eval.lm import StubLM
from genforge.safety import extraction
from genforge.world.canaries import Canary


class RankedLM(StubLM):
    """Scores each two-digit secret by a fixed table, so the secret's rank is known in advance."""

    def __init__(self, order: list[str]):
        super().__init__()
        self.score = {s: -float(i) for i, s in enumerate(order)}  # order[0] is the most likely

    def loglikelihood(self, pairs):
        return [(self.score[c], 2, False) for _, c in pairs]


@pytest.mark.parametrize("rank", [1, 2, 10, 100])
def test_exposure_on_stub_with_known_rank(rank):
    space = [" ".join(f"{i:02d}") for i in range(100)]
    secret = space[37]
    order = [s for s in space if s != secret]
    order.insert(rank - 1, secret)
    c = Canary("c", "The code is", secret, 1, "embedded")
    r = extraction.canary_exposure(RankedLM(order), c, n_candidates=1000)
    assert r.exhaustive and r.rank == rank and r.space == 100
    assert r.exposure == pytest.approx(math.log2(100) - math.log2(rank))


def test_sampled_exposure_estimate():
    # the secret beats every sampled candidate -> exposure log2(m + 1); rank m+1 -> 0
    secret = "1 2 3 4 5 6"
    c = Canary("c", "The code is", secret, 1, "exact")

    class Best(StubLM):
        def loglikelihood(self, pairs):
            return [(0.0 if cont == secret else -1.0, 6, False) for _, cont in pairs]

    class Worst(StubLM):
        def loglikelihood(self, pairs):
            return [(-9.0 if cont == secret else -1.0, 6, False) for _, cont in pairs]

    assert extraction.canary_exposure(Best(), c, n_candidates=63).exposure == pytest.approx(6.0)
    assert extraction.canary_exposure(Worst(), c, n_candidates=63).exposure == pytest.approx(0.0)


def test_exposure_rank_bounds():
    assert extraction.exposure_from_rank(1, 1024) == 10
    with pytest.raises(ValueError):
        extraction.exposure_from_rank(0, 10)


def test_verbatim_share_and_prefix_extraction():
    corpus = ["the quick brown fox jumps over the lazy dog near the river bank"]
    idx = extraction.ngram_index(corpus, n=4)
    assert extraction.verbatim_share("a quick brown fox jumps", idx, n=4) == pytest.approx(0.5)
    assert extraction.verbatim_share("nothing here at all", idx, n=4) == 0.0
    c = Canary("c", "The code is", "1 2 3", 4, "embedded")

    class Parrot(StubLM):
        def generate(self, prompts, **kw):
            return [[" 1 2 3."] if "code" in p else [" no"] for p in prompts]

    assert extraction.prefix_extraction(Parrot(), [c, Canary("d", "Other", "4 5 6", 1, "exact")]) == [1.0, 0.0]
