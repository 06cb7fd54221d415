"""A ROME-style rank-one edit of one fact in one MLP layer (Meng et al. 2022, "Locating and Editing Factual
Associations in GPT", sec. 3).

ROME reads an MLP's down projection W (C x H) as a key-value memory: the key k (H,) is the MLP's hidden
activation at the subject's last token, and W k the value it writes into the residual stream. To make the model
say a new object for the subject:

1. k* = the key at the subject's last token (causal attention makes it the same in every prompt that starts
   with the subject);
2. v* = W k* + delta, where delta (C,) is optimised so that adding it to the MLP output at that position makes
   the edit prompts end in the new object (eq. 4, without the paper's essence-KL term: a norm penalty instead);
3. the minimal change that maps k* to v* while disturbing the other keys least, measured by their second
   moment C = E[k k^T] over ordinary text (eq. 2): W' = W + (v* - W k*) (C^-1 k*)^T / (k*^T C^-1 k*).

Measured: efficacy (the edit prompt now prefers the new object), generalisation (paraphrases in which the
subject is not at the start), specificity (neighbouring facts' log-probs unchanged).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from genforge.tokenizer import Tokenizer


@dataclass
class EditResult:
    layer: int
    key: torch.Tensor  # k* (H,)
    delta: torch.Tensor  # v* - W k* (C,)
    loss_before: float  # -mean log p(new object | edit prompts) before the edit
    loss_after: float


def _mlp(model: nn.Module, layer: int) -> nn.Module:
    return model.layers[layer].mlp


@torch.inference_mode()
def collect_keys(model: nn.Module, layer: int, seqs: Sequence[Sequence[int]], max_keys: int = 4000) -> torch.Tensor:
    """The down projection's inputs at every position of the sequences -> (N, H) (at most max_keys rows)."""
    got: list[torch.Tensor] = []
    def keep(m: nn.Module, args: tuple) -> None:
        got.append(args[0].reshape(-1, args[0].shape[-1]))

    h = _mlp(model, layer).down_proj.register_forward_pre_hook(keep)
    try:
        for s in seqs:
            model(torch.tensor([list(s)]))
            if sum(len(g) for g in got) >= max_keys:
                break
    finally:
        h.remove()
    return torch.cat(got)[:max_keys].float()


def second_moment(keys: torch.Tensor, ridge: float = 1e-2) -> torch.Tensor:
    """C = E[k k^T] + ridge * mean diag * I (H, H): the ridge keeps C invertible with few keys."""
    c = keys.T @ keys / len(keys)
    return c + ridge * c.diagonal().mean() * torch.eye(c.shape[0])


def subject_key(model: nn.Module, layer: int, subject_ids: Sequence[int]) -> torch.Tensor:
    """k* (H,): the key at the last subject token of BOS + subject."""
    return collect_keys(model, layer, [subject_ids], max_keys=10 ** 9)[len(subject_ids) - 1]


def target_delta(model: nn.Module, layer: int, prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]],
                 subject_pos: int, steps: int = 60, lr: float = 0.1,
                 l2: float = 1e-2) -> tuple[torch.Tensor, float, float]:
    """delta (C,) added to the MLP output at `subject_pos` that makes each prompt continue with its target."""
    C = model.config.width
    delta = torch.zeros(C, requires_grad=True)
    mlp = _mlp(model, layer)

    def add(m, inp, out):  # out (1, T, C)
        out = out.clone()
        out[:, subject_pos] += delta
        return out

    seqs = [list(p) + list(t) for p, t in zip(prompts, targets)]

    def loss_fn() -> torch.Tensor:
        total = torch.zeros(())
        for s, p in zip(seqs, prompts):
            logp = torch.log_softmax(model(torch.tensor([s[:-1]]))[0].float(), -1)  # (T, V)
            tgt = torch.tensor(s[len(p):])
            total = total - logp[len(p) - 1:].gather(-1, tgt[:, None]).sum()
        return total / len(seqs)

    params = [p for p in model.parameters()]
    was = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    h = mlp.register_forward_hook(add)
    try:
        opt = torch.optim.Adam([delta], lr=lr)
        with torch.no_grad():
            before = float(loss_fn())
        for _ in range(steps):
            opt.zero_grad()
            loss = loss_fn() + l2 * delta.pow(2).sum()
            loss.backward()
            opt.step()
        with torch.no_grad():
            after = float(loss_fn())
    finally:
        h.remove()
        for p, w in zip(params, was):
            p.requires_grad_(w)
    return delta.detach(), before, after


@torch.no_grad()
def apply_rank_one(model: nn.Module, layer: int, key: torch.Tensor, delta: torch.Tensor, cov: torch.Tensor) -> None:
    """W <- W + delta (C^-1 k)^T / (k^T C^-1 k), in place: afterwards W k = old W k + delta."""
    W = _mlp(model, layer).down_proj.weight  # (C, H)
    cinv_k = torch.linalg.solve(cov, key)  # (H,)
    W += torch.outer(delta, cinv_k / (key @ cinv_k)).to(W.dtype)


def rome_edit(model: nn.Module, tok: Tokenizer, subject: str, prompts: Sequence[str], new_object: str,
              layer: int, cov: torch.Tensor, steps: int = 60, lr: float = 0.1) -> EditResult:
    """Edit `model` in place so that prompts starting with `subject` continue with " new_object"."""
    if not 0 <= layer < len(model.layers) - 1:
        raise ValueError(f"edit layer {layer}: must be below the last layer ({len(model.layers) - 1}); a later "
                         "layer's attention is what carries the subject's new value to the prediction")
    subj = tok.encode(subject, add_bos=True)
    ids = [tok.encode(p, add_bos=True) for p in prompts]
    for p, i in zip(prompts, ids):
        if i[:len(subj)] != subj:
            raise ValueError(f"edit prompt {p!r} must start with the subject {subject!r} (same tokens)")
    targets = [tok.encode(" " + new_object)] * len(ids)
    delta, before, after = target_delta(model, layer, ids, targets, len(subj) - 1, steps, lr)
    key = subject_key(model, layer, subj)
    apply_rank_one(model, layer, key, delta, cov)
    return EditResult(layer, key, delta, before, after)
