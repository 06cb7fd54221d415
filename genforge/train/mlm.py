"""Masked-language-model objective (BERT, Devlin et al. 2019, sec. 3.1): pick 15 % of the real tokens as
targets; of those, 80 % become [MASK], 10 % a random token, 10 % stay unchanged; predict the originals.

Why 80/10/10: [MASK] never appears at fine-tuning time, so a model that only ever saw [MASK] at predicted
positions would learn nothing useful about unmasked tokens; random and unchanged targets force it to keep
a good representation of every position.

`mask_tokens` is the data collator (ids in, corrupted ids + labels out); `mlm_loss` the loss; `mlm_loss_fn` and
`WindowData` plug MLM pretraining into the one loop (`genforge.train.trainer.Trainer`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from genforge.errors import ConfigError

IGNORE = -100  # label of positions that are not predicted (PyTorch's cross_entropy ignore_index)


@dataclass
class MLMConfig:
    mask_rate: float = 0.15  # share of real tokens chosen as targets
    replace_mask: float = 0.8  # of the targets: -> [MASK]
    replace_random: float = 0.1  # of the targets: -> a random token (the rest stay unchanged)

    def __post_init__(self) -> None:
        if not 0 < self.mask_rate < 1:
            raise ConfigError(f"mlm.mask_rate must be in (0, 1), got {self.mask_rate}")
        if self.replace_mask < 0 or self.replace_random < 0 or self.replace_mask + self.replace_random > 1:
            raise ConfigError("mlm.replace_mask + mlm.replace_random must be within [0, 1], got "
                              f"{self.replace_mask} + {self.replace_random}")


def mask_tokens(ids: torch.Tensor, mask_id: int, vocab_size: int, cfg: MLMConfig | None = None,
                special: torch.Tensor | None = None, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(corrupted ids, labels) for ids (B, T). special (B, T) bool marks positions never chosen (padding, BOS).

    labels hold the original id at target positions and IGNORE elsewhere. Random replacements are drawn from
    [0, vocab_size) excluding nothing (as BERT); pass vocab_size = the real vocabulary (not counting [MASK]).
    """
    cfg = cfg or MLMConfig()
    g = generator
    u = torch.rand(ids.shape, generator=g, device=ids.device)
    target = u < cfg.mask_rate  # (B, T)
    if special is not None:
        target &= ~special
    labels = torch.where(target, ids, torch.full_like(ids, IGNORE))
    r = torch.rand(ids.shape, generator=g, device=ids.device)
    to_mask = target & (r < cfg.replace_mask)
    to_random = target & (r >= cfg.replace_mask) & (r < cfg.replace_mask + cfg.replace_random)
    out = ids.clone()
    out[to_mask] = mask_id
    rand = torch.randint(0, vocab_size, ids.shape, generator=g, device=ids.device)
    out[to_random] = rand[to_random]
    return out, labels


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over target positions: logits (B, T, V), labels (B, T) with IGNORE elsewhere."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)


def mlm_batches(windows: torch.Tensor, batch_size: int, mask_id: int, vocab_size: int, pad_id: int,
                seed: int, cfg: MLMConfig | None = None) -> Iterator[dict]:
    """Endless shuffled MLM batches from token windows (N, T) (padded with pad_id): dicts of input_ids,
    attention_mask, labels."""
    g = torch.Generator().manual_seed(seed)
    while True:
        for idx in torch.randperm(len(windows), generator=g).split(batch_size):
            ids = windows[idx]
            real = ids != pad_id
            x, y = mask_tokens(ids, mask_id, vocab_size, cfg, special=~real, generator=g)
            yield {"input_ids": x, "attention_mask": real.long(), "labels": y}


def mlm_loss_fn(mask_id: int, vocab_size: int, pad_id: int, cfg: MLMConfig | None = None):
    """A trainer loss_fn(model, batch) over raw windows {"ids": (B, T)}: masks them afresh each time (dynamic
    masking, as RoBERTa; drawn from the global RNG the trainer seeds) and sums the targets' cross-entropy."""
    def loss_fn(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        ids = batch["ids"]
        real = ids != pad_id
        x, y = mask_tokens(ids, mask_id, vocab_size, cfg, special=~real)
        logits = model(x, attention_mask=real.long())  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE, reduction="sum")
        n = (y != IGNORE).sum()
        acc = ((logits.argmax(-1) == y) & (y != IGNORE)).sum().item() / max(1, n.item())
        return loss, n, {"masked_acc": acc}
    return loss_fn


class WindowData:
    """Random windows (B, T) of a token stream; a pure function of (step, micro) for exact resume."""

    def __init__(self, stream: torch.Tensor, window: int, batch_size: int, seed: int):
        if len(stream) <= window:
            raise ConfigError(f"MLM data: {len(stream)} tokens is not more than one window of {window}")
        self.stream, self.window, self.batch_size, self.seed = stream, window, batch_size, seed

    def get_batch(self, step: int, micro: int, rank: int = 0, world: int = 1) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + (step * 64 + micro) * world + rank)
        starts = torch.randint(0, len(self.stream) - self.window, (self.batch_size,), generator=g).tolist()
        return {"ids": torch.stack([self.stream[s:s + self.window] for s in starts])}
