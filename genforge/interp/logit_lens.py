"""The logit lens (nostalgebraist 2020): decode every layer's residual stream through the final norm and head.

lens[l] = log_softmax(lm_head(norm(h_l))) for h_0 the embedding and h_l block l's output; the last entry
equals the model's own log-probabilities. How early the lens already agrees with the final prediction says
at which depth the model has settled on its next token.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from genforge.interp.hooks import residual_stream


@torch.no_grad()
def logit_lens(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Log-probabilities read at every layer: (L + 1, B, T, V) for ids (B, T)."""
    hs = residual_stream(model, ids)  # (L+1, B, T, C)
    return torch.log_softmax(model.lm_head(model.norm(hs)).float(), dim=-1)


@torch.no_grad()
def agreement_by_layer(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per layer, per position: does the lens's top-1 equal the final top-1, and equal the actual next token?
    Two bool tensors (L + 1, B, T - 1)."""
    lens = logit_lens(model, ids)[:, :, :-1]  # (L+1, B, T-1, V)
    top = lens.argmax(-1)  # (L+1, B, T-1)
    return top == top[-1:], top == ids[None, :, 1:]


def top_tokens(lens: torch.Tensor, tok, position: int, k: int = 1) -> list[list[str]]:
    """The k most likely tokens at one position of the first sequence, per layer: [[str] * k] * (L + 1)."""
    return [[tok.decode([int(i)]) for i in lens[l, 0, position].topk(k).indices] for l in range(lens.shape[0])]
