"""MaskGIT: the cosine schedule's mask counts, K steps decode every token, the loss reads masked tokens only."""

import math

import pytest
import torch

from genforge.image.maskgit import MaskGITConfig, MaskGITModel, gamma, mask_schedule
from genforge.image.vq import VQConfig


def _model():
    torch.manual_seed(0)
    return MaskGITModel(MaskGITConfig(vq=VQConfig(hidden=8, code_dim=4, codebook_size=12), depth=1, width=32,
                                      head_dim=16)).eval()


def test_cosine_schedule_counts():
    assert gamma(0.0) == 1.0 and abs(gamma(1.0)) < 1e-12
    # N = 16, K = 4: floor(16 cos(pi t / 8)) for t = 1, 2, 3, then 0
    assert mask_schedule(16, 4) == [math.floor(16 * math.cos(math.pi * t / 8)) for t in (1, 2, 3)] + [0]
    assert mask_schedule(16, 4) == [14, 11, 6, 0]
    for n, k in [(16, 1), (16, 8), (16, 16), (5, 5), (64, 12)]:
        s = mask_schedule(n, k)
        assert len(s) == k and s[-1] == 0
        assert all(b < a for a, b in zip([n] + s, s))  # at least one token fixed per step


@pytest.mark.parametrize("steps", [1, 4, 8, 16])
def test_k_steps_decode_every_token_following_the_schedule(steps):
    m = _model()
    trace = []
    ids = m.sample_tokens(6, torch.arange(6), steps=steps, seed=1, trace=trace)
    assert trace == mask_schedule(16, steps)
    assert ids.shape == (6, 16) and int(ids.max()) < 12 and int(ids.min()) >= 0  # no [MASK] left


def test_k_steps_are_k_forwards():
    m = _model()
    calls = []
    m.net.register_forward_hook(lambda *_: calls.append(1))
    m.sample(3, seed=0, steps=4)
    assert len(calls) == 4


def test_the_loss_ignores_unmasked_positions():
    m = _model()
    m.config.p_uncond = 0.0
    ids = torch.randint(0, 12, (8, 16))
    torch.manual_seed(5)
    loss, n, _ = m.loss({"x": ids, "cond": torch.zeros(8, dtype=torch.long)})
    assert n == 8 and torch.isfinite(loss)
    loss.backward()
    assert m.net.encoder.embed.word.weight.grad.abs().sum() > 0
    assert m.vq.encoder[0].weight.grad is None  # the tokenizer is not trained by the prior's loss
