"""Exponential moving averages of weights, the copy the diffusion models and GANs sample from.

Averaging the iterates gives smoother, better samples at no training cost (Polyak & Juditsky 1992; for GANs
Yazici et al. 2019, Karras et al. 2018; Ho et al. 2020 sample DDPM from an EMA too).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` to hold the average.

    Its parameters keep requires_grad=True on purpose: no optimizer holds them and no loss reaches them, but the
    shared Trainer leaves frozen tensors out of its resume state (PEFT runs reload them from the base model), and
    the average must be resumed exactly like the weights it follows.
    """
    return copy.deepcopy(module)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers (batch-norm statistics) are copied."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)
