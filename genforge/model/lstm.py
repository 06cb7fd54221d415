"""The pre-transformer baseline: an LSTM language model (Hochreiter & Schmidhuber 1997; as a word-level LM, Zaremba
et al. 2014). ids (B, T) -> next-token logits (B, T, V), with a tied embedding/output table like `GPT`.

Everything a position knows about the past must pass through a fixed-size state (B, C) carried step by step, which
is why such models use distant context poorly (Khandelwal et al. 2018, "Sharp Nearby, Fuzzy Far Away"); the
speedrun's `objectives` lesson measures loss by position in the context beside a transformer of matched size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from genforge.errors import ConfigError


@dataclass
class LSTMConfig:
    vocab_size: int = 4096
    width: int = 128  # embedding and hidden size C
    layers: int = 2
    dropout: float = 0.0
    init_std: float = 0.02

    def resolved(self) -> LSTMConfig:
        if self.layers < 1 or self.width < 1:
            raise ConfigError(f"lstm.layers and lstm.width must be >= 1, got {self.layers}, {self.width}")
        return LSTMConfig(**self.__dict__)


class LSTMLM(nn.Module):
    """Embedding -> stacked LSTM -> tied output head."""

    def __init__(self, cfg: LSTMConfig):
        super().__init__()
        self.config = cfg = cfg.resolved()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.width)
        self.lstm = nn.LSTM(cfg.width, cfg.width, cfg.layers, batch_first=True,
                            dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        nn.init.normal_(self.embed_tokens.weight, 0.0, cfg.init_std)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> torch.Tensor:
        h, _ = self.lstm(self.embed_tokens(input_ids), state)  # (B, T, C)
        return h @ self.embed_tokens.weight.T  # (B, T, V)


def width_for_params(target: int, vocab_size: int, layers: int) -> int:
    """The LSTM width whose parameter count is closest to `target` (for matched-size comparisons).

    An LSTM layer has 4 gates of (C*C input + C*C recurrent + 2C biases); plus the V*C tied table."""
    def count(c: int) -> int:
        return vocab_size * c + layers * (8 * c * c + 8 * c)
    return min(range(8, 2049, 4), key=lambda c: abs(count(c) - target))
