"""The copying (induction) score: zero for a model that ignores its context, large for one that copies."""

import torch
from torch import nn

from genforge.eval.induction import repeated_sequence_losses


class _Copier(nn.Module):
    """An ideal induction head: predict the token that followed the previous occurrence of the current token."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        B, T = ids.shape
        out = torch.zeros(B, T, self.vocab)
        for b in range(B):
            for t in range(T):
                prev = [s for s in range(t) if ids[b, s] == ids[b, t]]
                if prev and prev[-1] + 1 <= t:
                    out[b, t, ids[b, prev[-1] + 1]] = 20.0
        return out


class _Unigram(nn.Module):
    """Ignores its context: the same distribution at every position."""

    def __init__(self, vocab: int):
        super().__init__()
        self.bias = nn.Parameter(torch.randn(vocab))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(*ids.shape, -1)


def test_copier_predicts_the_second_copy_and_unigram_does_not():
    vocab = list(range(1, 200))
    first, second = repeated_sequence_losses(_Copier(200), vocab, bos_id=0, n=8, length=12)
    assert sum(a - b for a, b in zip(first, second)) / 8 > 3.0  # second copy nearly free
    first, second = repeated_sequence_losses(_Unigram(200), vocab, bos_id=0, n=8, length=12)
    assert abs(sum(first) / 8 - sum(second) / 8) < 0.5
