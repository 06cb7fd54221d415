"""A tiny caption tokenizer and text encoder, trained here with the generator (no pretrained weights).

The image world's captions use a closed vocabulary ("a small red circle in the top left"), so a word-level
tokenizer and a bag-of-words encoder are enough to carry the attributes; id 0 is padding and an all-padding
caption is the "empty prompt" that classifier-free guidance uses as the unconditional input.
"""

from __future__ import annotations

import torch
from torch import nn

from genforge.world.images import ATTRIBUTES

PAD, UNK = 0, 1


class CaptionTokenizer:
    """Word-level ids for captions; the vocabulary is the world's words plus any extra words given."""

    def __init__(self, extra_words: tuple[str, ...] = (), max_len: int = 12) -> None:
        words = ["a", "in", "the", "moving", "and", "up", "down", "left", "right"]
        for values in ATTRIBUTES.values():
            for v in values:
                words.extend(v.split())
        words.extend(extra_words)
        self.vocab = ["<pad>", "<unk>"] + sorted(set(words))
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        self.max_len = max_len

    def __len__(self) -> int:
        return len(self.vocab)

    def add_word(self, word: str) -> int:
        """Add a new word (e.g. a textual-inversion token) and return its id."""
        if word not in self.ids:
            self.ids[word] = len(self.vocab)
            self.vocab.append(word)
        return self.ids[word]

    def __call__(self, captions: list[str]) -> torch.Tensor:
        """(B, max_len) int64 ids, right-padded with 0; longer captions are cut."""
        out = torch.zeros(len(captions), self.max_len, dtype=torch.long)
        for i, c in enumerate(captions):
            ids = [self.ids.get(w, UNK) for w in c.lower().split()][: self.max_len]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


class TextEncoder(nn.Module):
    """Bag of word embeddings -> MLP -> (B, dim); an all-padding caption maps to a learned null vector."""

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=PAD)
        self.null = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) -> (B, dim)."""
        mask = (ids != PAD).float().unsqueeze(-1)  # (B, L, 1)
        n = mask.sum(1)  # (B, 1)
        pooled = (self.embed(ids) * mask).sum(1) / n.clamp(min=1)
        out = self.proj(pooled)
        return torch.where(n > 0, out, self.null.expand_as(out))
