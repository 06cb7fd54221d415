"""Token-level losses shared by stages (each returns a sum and a count, as the trainer expects)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# the label convention lives with the data that makes labels (data must not import train); re-exported here
from genforge.data.sft_data import IGNORE as IGNORE


def lm_loss(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Next-token cross-entropy summed over labelled positions: (sum, n_labelled, {}).

    batch: input_ids (B, T), labels (B, T) already shifted (labels[t] is the token after input_ids[t]),
    IGNORE where a position must not count; optional attention_mask (B, T).
    """
    logits = model(batch["input_ids"], attention_mask=batch.get("attention_mask"))  # (B, T, V)
    labels = batch["labels"]
    loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    return loss, (labels != IGNORE).sum(), {}


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) per position (B, T); IGNORE positions give 0."""
    mask = labels != IGNORE
    lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return lp * mask
