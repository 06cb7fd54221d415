"""Direct preference optimisation (`genforge dpo`): learn from preference pairs without a reward model or sampling.

DPO (Rafailov et al. 2023) shows that the KL-regularised RLHF objective has the closed-form optimum
pi*(y|x) ∝ pi_ref(y|x) exp(r(x,y) / beta), so the reward can be written through the policy itself,
r = beta log(pi / pi_ref) (+ a term that cancels in pairs), and Bradley–Terry on that implicit reward is the
loss of their eq. 7 (`rl_losses.dpo_loss`). The reference is frozen; its sequence log-probs are computed
once before training, so it never sits in memory beside the policy.

Logged: loss, preference accuracy (implicit reward of chosen > rejected), reward margin and the chosen /
rejected implicit rewards (a falling chosen reward with a rising margin is the known DPO behaviour of
pushing both down, the rejected one faster).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from genforge.config import to_dict
from genforge.errors import DataError
from genforge.tokenizer import Tokenizer
from genforge.train.reward import RankedPrompt, batch_indices, load_preference_run
from genforge.train.rl_losses import dpo_loss
from genforge.train.rollout import (
    Reference,
    encode_prompt,
    encode_response,
    make_batch,
    make_policy,
    response_logprobs,
    write_policy,
)
from genforge.train.trainer import TrainConfig, Trainer


@dataclass
class DPOConfig:
    """`genforge dpo`: preference-tune a policy against a frozen reference (the starting model)."""

    init_from: str = "runs/tiny/sft/chat/checkpoint"  # policy and reference start here (usually the SFT model)
    data: str = "runs/tiny/world/preferences.jsonl"  # ranked lists (every pair is used) or chosen/rejected pairs
    val_data: str = ""  # held-out preferences; empty -> hold out val_fraction of the prompts of `data`
    val_fraction: float = 0.1
    out_dir: str = "runs/tiny/dpo"
    beta: float = 0.1  # strength of the implicit KL to the reference (higher = stay closer)
    max_len: int = 256
    lora_r: int = 0  # 0 = full fine-tuning; > 0 = LoRA adapters of this rank (reference = adapters off)
    lora_alpha: float = 16.0
    trim_padding: bool = True  # forwards in length groups without shared padding (`rollout.length_groups`)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        max_steps=200, micro_batch=8, warmup_steps=10, lr=1e-4, weight_decay=0.0, eval_every=50, ckpt_every=0))


def preference_pairs(rows: list[RankedPrompt], tok: Tokenizer) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt ids, chosen ids, rejected ids) for every pair of every ranked list."""
    return [(p, encode_response(tok, c), encode_response(tok, r))
            for row in rows for p in [encode_prompt(tok, row.prompt)] for c, r in row.pairs()]


class PairData:
    """Tokenized pairs with their reference log-probs; batch = chosen rows then rejected rows.

    The frozen reference scores a pair the first time a batch holds it (then the numbers are cached), so
    a short run over a big preference file costs only the pairs it sees.
    """

    def __init__(self, pairs: list, ref: Reference, pad_id: int, micro_batch: int, max_len: int, seed: int = 0,
                 grad_accum: int = 1):
        if not pairs:
            raise DataError("dpo: no preference pairs")
        self.pairs, self.ref, self.pad_id, self.micro_batch, self.max_len = pairs, ref, pad_id, micro_batch, max_len
        self.seed, self.grad_accum = seed, grad_accum
        self.cache: dict[int, tuple[float, float]] = {}  # pair -> reference (chosen, rejected) summed log-probs

    def collate(self, idx: list[int], with_ref: bool = True) -> dict:
        prompts = [self.pairs[i][0] for i in idx] * 2
        responses = [self.pairs[i][1] for i in idx] + [self.pairs[i][2] for i in idx]
        batch = make_batch(prompts, responses, self.pad_id, self.max_len)  # (2b, ...)
        if with_ref:
            todo = sorted({i for i in idx if i not in self.cache})
            if todo:
                lp = self.ref.logprobs(self.collate(todo, with_ref=False)).sum(1).tolist()  # (2n,)
                self.cache.update({i: (lp[k], lp[len(todo) + k]) for k, i in enumerate(todo)})
            batch["ref_chosen"] = torch.tensor([self.cache[i][0] for i in idx])  # (b,)
            batch["ref_rejected"] = torch.tensor([self.cache[i][1] for i in idx])
        return batch

    def get_batch(self, step: int, micro: int, rank: int, world: int) -> dict:
        index = (step * self.grad_accum + micro) * world + rank
        return self.collate(batch_indices(len(self.pairs), self.micro_batch, index, self.seed))

    def eval_batches(self) -> list[dict]:
        n = len(self.pairs)
        return [self.collate(list(range(i, min(i + self.micro_batch, n)))) for i in range(0, n, self.micro_batch)]


def make_loss_fn(beta: float, nll_weight: float = 0.0, trim: bool = False):
    """DPO loss per pair; with nll_weight > 0 plus that times the chosen answer's per-token NLL (RPO: Pang et al.
    2024, "Iterative Reasoning Preference Optimization", eq. 1). On reasoning answers that differ in a digit, DPO
    alone lowers the chosen answer's likelihood too and greedy answers get worse; the NLL term keeps it up.
    trim: forwards in length groups (`rollout.response_forward`)."""
    def loss_fn(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, int, dict]:
        lp = response_logprobs(model, batch, trim).sum(1)  # (2b,) summed sequence log-probs
        b = lp.shape[0] // 2
        loss, rc, rr = dpo_loss(lp[:b], lp[b:], batch["ref_chosen"], batch["ref_rejected"], beta)
        if nll_weight:
            n_chosen = batch["response_mask"][:b].sum(1).clamp(min=1).to(lp.dtype)  # (b,) chosen answer tokens
            loss = loss - nll_weight * lp[:b] / n_chosen
        return loss.sum(), b, {"pref_acc": (rc > rr).float().mean().item(), "margin": (rc - rr).mean().item(),
                               "reward_chosen": rc.mean().item(), "reward_rejected": rr.mean().item()}
    return loss_fn


@torch.no_grad()
def evaluate_pairs(model: torch.nn.Module, data: PairData, beta: float) -> dict:
    """Held-out DPO loss, preference accuracy and mean reward margin."""
    dev = next(model.parameters()).device
    loss_fn = make_loss_fn(beta)
    tot = {"loss": 0.0, "pref_acc": 0.0, "margin": 0.0}
    n = 0
    for batch in data.eval_batches():
        loss, b, m = loss_fn(model, {k: v.to(dev) for k, v in batch.items()})
        tot["loss"] += float(loss)
        tot["pref_acc"] += m["pref_acc"] * b
        tot["margin"] += m["margin"] * b
        n += b
    return {f"val_{k}": v / max(n, 1) for k, v in tot.items()}


def train_dpo(policy: torch.nn.Module, tok: Tokenizer, train_rows: list[RankedPrompt], val_rows: list[RankedPrompt],
              cfg: TrainConfig, out_dir: str | Path, *, beta: float = 0.1, max_len: int = 256,
              run_config: dict | None = None, nll_weight: float = 0.0, trim_padding: bool = False) -> dict:
    """DPO of `policy` (reference = its state now) with the shared trainer; checkpoint in out_dir/checkpoint.

    trim_padding: forwards in length groups without shared padding (`rollout.length_groups`; same numbers up to
    float rounding)."""
    ref = Reference(policy, trim=trim_padding)
    train = PairData(preference_pairs(train_rows, tok), ref, tok.pad_id, cfg.micro_batch, max_len, cfg.seed,
                     cfg.grad_accum)
    val = PairData(preference_pairs(val_rows, tok), ref, tok.pad_id, cfg.micro_batch, max_len) if val_rows else None

    def save_fn(folder: Path) -> None:
        write_policy(folder, policy, tok, run_config or {}, {"stage": "dpo", "step": trainer.step, "beta": beta,
                                                             "metrics": trainer.last_eval})

    trainer = Trainer(policy, cfg, make_loss_fn(beta, nll_weight, trim_padding), train, out_dir, save_fn=save_fn,
                      name="dpo", eval_fn=(lambda m: evaluate_pairs(m, val, beta)) if val else None)
    return trainer.fit()


def main(cfg: DPOConfig) -> dict:
    """Run DPO from cfg; returns the final metrics (held-out preference accuracy and margin among them)."""
    model, tok, train_rows, val_rows, out = load_preference_run(cfg, "DPO")
    policy = make_policy(model, cfg.lora_r, cfg.lora_alpha)
    return train_dpo(policy, tok, train_rows, val_rows, cfg.train, out, beta=cfg.beta, max_len=cfg.max_len,
                     run_config=to_dict(cfg), trim_padding=cfg.trim_padding)
