import math

import pytest
import torch

from genforge.infer.sampling import (
    apply_penalties,
    probs_from_logits,
    sample_next,
    token_counts,
    top_k_filter,
    top_p_filter,
)


def _kept(logits: torch.Tensor) -> list[set[int]]:
    return [set(torch.nonzero(torch.isfinite(r)).flatten().tolist()) for r in logits]


def test_temperature_zero_is_argmax_and_deterministic():
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(0))
    a = sample_next(logits, temperature=0.0)
    b = sample_next(logits, temperature=0.0, top_k=3, top_p=0.5)
    assert torch.equal(a, logits.argmax(-1)) and torch.equal(a, b)


def test_top_k_1_equals_greedy_under_sampling():
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        logits = torch.randn(4, 30, generator=g) * 3
        assert torch.equal(sample_next(logits, temperature=1.5, top_k=1, generator=g), logits.argmax(-1))


def test_top_k_filter_keeps_exactly_k():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5]])
    assert _kept(top_k_filter(logits, 2)) == [{1, 3}]
    assert torch.equal(top_k_filter(logits, 0), logits) and torch.equal(top_k_filter(logits, 5), logits)


@pytest.mark.parametrize("p, expected", [(0.3, {0}), (0.5, {0}), (0.7, {0, 1}), (0.8, {0, 1, 2}),
                                         (0.9, {0, 1, 2, 3}),
                                         (0.95, {0, 1, 2, 3, 4}), (1.0, {0, 1, 2, 3, 4})])
def test_top_p_keeps_smallest_set_reaching_p(p, expected):
    # hand-made distribution: 0.5, 0.25, 0.125, 0.0625, 0.0625 (token ids permuted to test the un-sorting)
    probs = [0.5, 0.25, 0.125, 0.0625, 0.0625]
    perm = [3, 0, 4, 1, 2]  # vocab position of the i-th most likely token
    logits = torch.full((1, 5), 0.0)
    for rank, pos in enumerate(perm):
        logits[0, pos] = math.log(probs[rank])
    kept = _kept(top_p_filter(logits, p))[0]
    assert kept == {perm[r] for r in expected}


def test_top_p_batch_rows_independent():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]))
    assert _kept(top_p_filter(logits, 0.85)) == [{0, 1}, {0, 1, 2}]


def test_sampled_frequencies_follow_filtered_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.0625, 0.0625]])).repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    toks = sample_next(logits, temperature=1.0, top_p=0.7, generator=g)
    freq = torch.bincount(toks, minlength=5).float() / len(toks)
    assert freq[2:].sum() == 0
    assert abs(freq[0].item() - 2 / 3) < 0.03
    expected = probs_from_logits(logits[:1], top_p=0.7)[0]
    assert torch.allclose(expected, torch.tensor([2 / 3, 1 / 3, 0, 0, 0]), atol=1e-6)


def test_seeded_sampling_reproducible():
    logits = torch.randn(3, 40)
    a = sample_next(logits, generator=torch.Generator().manual_seed(7))
    b = sample_next(logits, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_repetition_penalty_ctrl_rule():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    out = apply_penalties(logits, [[0, 1]], repetition=2.0)
    # seen positive logits are divided, seen negative logits multiplied; unseen untouched
    assert torch.allclose(out, torch.tensor([[1.0, -4.0, 1.0, -1.0]]))


def test_frequency_and_presence_penalties():
    logits = torch.zeros(2, 4)
    prev = torch.tensor([[0, 0, 0, 2], [1, -1, -1, -1]])  # negative ids are padding
    out = apply_penalties(logits, prev, frequency=0.5, presence=1.0)
    assert torch.allclose(out, torch.tensor([[-2.5, 0.0, -1.5, 0.0], [0.0, -1.5, 0.0, 0.0]]))
    assert torch.equal(token_counts(prev, 4), torch.tensor([[3.0, 0, 1, 0], [0, 1, 0, 0]]))
    assert torch.equal(apply_penalties(logits, prev), logits)  # no-op by default
