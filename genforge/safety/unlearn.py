"""Machine unlearning: make a model forget planted facts, and measure what else it loses.

* Gradient ascent (GA): maximise the language-model loss on the forget set (Jang et al. 2023, "Knowledge
  Unlearning for Mitigating Privacy Risks in Language Models"). Unbounded: the loss can rise forever, and the
  model collapses ("catastrophic collapse") long before the forget set is merely at chance.
* Negative preference optimisation (NPO; Zhang et al. 2024, "Negative Preference Optimization: From Catastrophic
  Collapse to Effective Unlearning", eq. 3): L = (2/beta) E log(1 + (pi_theta(y|x) / pi_ref(y|x))^beta), DPO's
  loss with only a rejected answer. Its gradient is GA's weighted by how much the model still prefers y relative
  to the reference, so it slows down once a fact is forgotten.

Forget quality = drop in the forget facts' log-probability; retained knowledge = change on other facts; the
task score is the held-out text loss (measured by the caller).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.safety.tune import SeqBatches, continuation_logprob, finetune
from genforge.train.losses import IGNORE, lm_loss


def seq_logprob(model: nn.Module, batch: dict) -> torch.Tensor:
    """Sum over labelled positions of log p(label), per row (B,)."""
    logits = model(batch["input_ids"], attention_mask=batch.get("attention_mask"))
    labels = batch["labels"]
    lp = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    return (lp * (labels != IGNORE)).sum(-1)


def ga_loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Gradient ascent: minus the LM loss on forget rows (sum, count)."""
    loss, count, _ = lm_loss(model, batch)
    return -loss, count, {}


def npo_loss(beta: float):
    """NPO's loss over forget rows; the batch carries `ref_lp` (B,) from the frozen starting model."""
    def fn(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        ratio = seq_logprob(model, batch) - batch["ref_lp"]  # log pi_theta / pi_ref per row
        loss = (2.0 / beta) * F.softplus(beta * ratio)  # log(1 + exp(beta * ratio))
        return loss.sum(), torch.tensor(float(len(ratio))), {}
    return fn


def unlearn(model: nn.Module, forget: Sequence[Sequence[int]], targets_from: Sequence[int], *, method: str,
            steps: int, lr: float, beta: float = 0.1, micro_batch: int = 8, pad_id: int = 0, seed: int = 0,
            work_dir: str | None = None) -> nn.Module:
    """A copy of `model` after `steps` of GA or NPO on the forget sequences (only their continuations count)."""
    if method not in ("ga", "npo"):
        raise ValueError(f"unlearning method must be 'ga' or 'npo', got {method!r}")
    m = copy.deepcopy(model)
    extra = None
    if method == "npo":
        ref = torch.tensor(continuation_logprob(model, forget, targets_from, pad_id))
        extra = lambda idx: {"ref_lp": ref[idx]}  # noqa: E731
    data = SeqBatches(forget, micro_batch, pad_id, seed, targets_from, extra)
    loss = ga_loss if method == "ga" else npo_loss(beta)
    finetune(m, loss, data, steps, lr, seed, work_dir, name=f"unlearn-{method}")
    return m
