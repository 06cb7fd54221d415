"""Helpers of the engine lesson: the intervals its lessons rest on."""

import math

import numpy as np
import torch

from genforge.eval.stats import Interval
from genforge.model.gpt import GPT, GPTConfig
from genforge.speedrun.engine import _ratio_minus_one, sequence_nll, wilson_interval


def test_wilson_interval_stays_honest_at_zero_hits():
    est, lo, hi, n = wilson_interval(0, 384)
    assert est == 0 and lo == 0 and 0.009 < hi < 0.01 and n == 384  # 1.96^2 / (384 + 1.96^2)
    assert wilson_interval(0, 100)[2] > 0.03  # 100 clean negatives cannot show an FPR below 1 %
    est, lo, hi, _ = wilson_interval(50, 100)
    assert est == 0.5 and math.isclose(lo, 1 - hi) and 0.40 < lo < 0.41


def test_ratio_minus_one_maps_a_log_difference():
    est, lo, hi, n = _ratio_minus_one(Interval(math.log(1.1), math.log(1.05), math.log(1.2), 7))
    assert math.isclose(est, 0.1) and math.isclose(lo, 0.05) and math.isclose(hi, 0.2) and n == 7


def test_sequence_nll_matches_the_mean_cross_entropy():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, depth=1, width=32, head_dim=16, max_seq_len=32))
    ids = torch.randint(0, 50, (3, 9))
    batches = [{"input_ids": ids[:2, :-1], "labels": ids[:2, 1:]}, {"input_ids": ids[2:, :-1], "labels": ids[2:, 1:]}]
    nll = sequence_nll(model, batches)
    assert nll.shape == (3,)
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[:, :-1]), -1).gather(-1, ids[:, 1:, None])[..., 0]  # (3, 8)
    assert np.allclose(nll, -logp.mean(1).numpy(), atol=1e-5)
    assert model.training  # the mode is restored
