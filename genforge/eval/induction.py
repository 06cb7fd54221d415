"""Copying from the context: the induction test of Olsson et al. 2022 ("In-context learning and induction heads").

Feed `[BOS] s s` where `s` is a sequence of random tokens. Nothing but the context predicts the second copy of `s`,
so a model with induction heads (attend to the token after the previous occurrence of the current token, copy it)
predicts it far better than the first; a model without them predicts both copies equally badly. The per-sequence
loss difference (first copy minus second, nats/token) is the "in-context copying" score.

Measured at `tiny` (0.87 M parameters, 900 steps): the base scores about -0.5 (it copies nothing), and still does
with 15 % of the corpus built to reward copying (needle and read-back documents). A model trained only on repeats
of a fixed length learns to copy by position, not content: probed at another length it scores below zero. So probe
at lengths the training did not use. A copy curriculum mixed into pretraining (`genforge/data/copymix.py`, measured
there) raised this probe above zero at tiny but did not make the model copy inside corpus text.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genforge.tokenizer import ordinary_ids

__all__ = ["ordinary_ids", "repeated_sequence_losses"]


@torch.no_grad()
def repeated_sequence_losses(model: nn.Module, vocab: list[int], bos_id: int, n: int = 64, length: int = 24,
                             seed: int = 0) -> tuple[list[float], list[float]]:
    """Mean next-token loss (nats) on the first and on the second copy of `n` random sequences of `length` tokens
    drawn uniformly from `vocab` (ordinary, non-special ids). Returns (first, second), one value per sequence."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.as_tensor(vocab, dtype=torch.long)
    seq = pool[torch.randint(len(pool), (n, length), generator=g)]  # (n, L)
    ids = torch.cat([torch.full((n, 1), bos_id, dtype=torch.long), seq, seq], dim=1)  # (n, 1 + 2L)
    model.eval()
    logits = model(ids[:, :-1]).float()  # (n, 2L, V): position t predicts token t + 1
    nats = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # (n, 2L)
    # The first token of each copy is unpredictable from the sequence itself (the first follows BOS, the second
    # follows the end of the first copy), so both halves drop it and compare the same L - 1 transitions.
    first, second = nats[:, 1:length], nats[:, length + 1:]
    return first.mean(dim=1).tolist(), second.mean(dim=1).tolist()
