"""Heads that turn a transformer's final hidden states into scalars: reward models and value functions.

A head is a module over hidden states (B, T, C), composed with an unchanged `GPT` trunk (which gives
the states via `forward(..., return_hidden=True)`) rather than a subclass of it.

* `ScalarHead`: one number per position, C -> 1. Read at the last real token it scores a whole
  sequence (a reward model, as HF's `LlamaForSequenceClassification` does); read at every response
  token it is a PPO value function.
* `RewardModel`: trunk + score head. Saved as an ordinary checkpoint folder (the trunk, which any HF
  user can load as a causal LM) plus `score_head.safetensors`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

from genforge.model.gpt import GPT

SCORE_HEAD_FILE = "score_head.safetensors"


class ScalarHead(nn.Module):
    """Linear C -> 1 over hidden states: (B, T, C) -> (B, T).

    init_std 0 starts every output at 0 (a neutral value function); a reward head uses a small random init
    1/sqrt(C+1) so pairs are not all tied at step 0.
    """

    def __init__(self, width: int, bias: bool = False, init_std: float | None = None):
        super().__init__()
        self.score = nn.Linear(width, 1, bias=bias)
        std = 1.0 / math.sqrt(width + 1) if init_std is None else init_std
        if std > 0:
            nn.init.normal_(self.score.weight, 0.0, std)
        else:
            nn.init.zeros_(self.score.weight)
        if bias:
            nn.init.zeros_(self.score.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.score(hidden.float()).squeeze(-1)  # (B, T)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Column of the last real (mask 1) token of each row: (B, T) -> (B,). Works for left and right padding."""
    T = attention_mask.shape[1]
    return T - 1 - attention_mask.flip(1).long().argmax(1)


class RewardModel(nn.Module):
    """A GPT trunk and a score head read at the last real token: ids (B, T) -> rewards (B,)."""

    def __init__(self, trunk: GPT, head: ScalarHead | None = None):
        super().__init__()
        self.trunk = trunk
        self.head = head or ScalarHead(trunk.config.width)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.trunk(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            return_hidden=True)  # (B, T, C)
        last = last_token_index(attention_mask)  # (B,)
        return self.head(hidden[torch.arange(len(last), device=last.device), last])  # (B,)

    def save_head(self, folder: str | Path) -> None:
        """Write the score head beside the trunk's checkpoint files."""
        save_file({k: v.detach().float().contiguous() for k, v in self.head.state_dict().items()},
                  str(Path(folder) / SCORE_HEAD_FILE), metadata={"format": "pt"})

    @classmethod
    def from_trunk(cls, trunk: nn.Module, head_state: dict[str, torch.Tensor]) -> RewardModel:
        """A reward model from a loaded trunk and the tensors of score_head.safetensors (loading the folder is
        `genforge.train.reward.load_reward_model`: the model layer does no checkpoint I/O)."""
        head = ScalarHead(trunk.config.width, bias="score.bias" in head_state)
        head.load_state_dict(head_state)
        return cls(trunk, head).eval()
