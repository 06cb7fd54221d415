"""LSTM language model: shapes, causality, matched parameter count."""

import torch

from genforge.model.gpt import GPT, GPTConfig
from genforge.model.lstm import LSTMLM, LSTMConfig, width_for_params


def test_lstm_lm():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=300, depth=2, width=64, head_dim=16))
    target = sum(p.numel() for p in gpt.parameters())
    width = width_for_params(target, 300, 1)
    m = LSTMLM(LSTMConfig(vocab_size=300, width=width, layers=1)).eval()
    assert abs(m.num_params() - target) / target < 0.03
    a = torch.randint(0, 300, (2, 12))
    b = a.clone()
    b[:, 7] = (a[:, 7] + 1) % 300
    with torch.no_grad():
        la, lb = m(a), m(b)
    assert la.shape == (2, 12, 300)
    torch.testing.assert_close(la[:, :7], lb[:, :7])  # the past never sees the future
    assert (la[:, 7:] - lb[:, 7:]).abs().max() > 0
