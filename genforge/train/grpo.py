"""GRPO (`genforge grpo`): group-relative policy optimisation with a verifiable reward (Shao et al. 2024).

No value function: each prompt gets G sampled responses and a response's advantage is its reward
standardised within its group, (r - mean) / std (their sec. 4.1.2, "outcome supervision"), given to every
one of its tokens. The loss is the clipped surrogate averaged per response then over responses, with an
optional KL to the frozen reference through the k3 estimator added to the loss (not to the reward), as in
their eq. 3–4. The default reward is the world's arithmetic check: 1 if the answer is right, else 0.

Candid notes: with `epochs` 1 and one optimizer step per rollout the policy that sampled is the one being
updated, so the ratio is 1 and the clip never binds (the "one update per batch" of most small reproductions);
when a rollout holds more responses than one step takes (rollout_prompts x G > micro_batch x grad_accum) the
later steps of the same pass are off-policy and the ratio and its clip do act. A group whose
G answers all score the same (all right or all wrong) carries no signal; its share is logged as
`zero_std_groups`, the thing to watch when picking G and the task difficulty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from genforge.config import save_resolved, to_dict
from genforge.errors import ConfigError, DataError
from genforge.tokenizer import Tokenizer
from genforge.train import rollout
from genforge.train.rl_losses import entropy_from_logits, group_advantages, grpo_loss, masked_mean
from genforge.train.trainer import TrainConfig, Trainer


@dataclass
class GRPOConfig:
    """`genforge grpo`: G samples per prompt, group-normalised advantages, verifiable reward."""

    init_from: str = "runs/tiny/sft/chat/checkpoint"  # the policy and the frozen reference start here
    prompts: str = "runs/tiny/world/tasks/train.jsonl"  # JSONL rows with "prompt", "task" and "answer"
    tasks: str = "arithmetic"  # comma-separated task names to keep from `prompts` ("" = all rows)
    out_dir: str = "runs/tiny/grpo"
    lora_r: int = 0
    lora_alpha: float = 16.0
    rollouts: int = 20  # rollout/update cycles (sets train.max_steps)
    rollout_prompts: int = 8  # prompts per rollout
    group_size: int = 8  # G: responses sampled per prompt
    epochs: int = 1  # passes over each rollout
    max_new_tokens: int = 96
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    clip: float = 0.2
    beta: float = 0.04  # weight of the k3 KL to the reference in the loss (0 = no reference at all)
    adv_eps: float = 1e-4
    dr_grpo: bool = False  # Dr. GRPO (Liu et al. 2025): no std scaling of advantages, no per-answer length norm
    max_nan_rewards: int = 3
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        micro_batch=16, warmup_steps=0, lr=1e-4, min_lr_ratio=1.0, weight_decay=0.0, eval_every=0, ckpt_every=0,
        log_every=1))


class GRPORollouts(rollout.RolloutSource):
    """Rollouts of G responses per prompt with group-normalised advantages."""

    name = "grpo"

    def __init__(self, policy: nn.Module, ref: rollout.Reference | None, *args, **kw):
        super().__init__(policy, *args, **kw)
        self.ref = ref

    @torch.no_grad()
    def process(self, batch: dict, scores: torch.Tensor) -> tuple[dict, dict]:
        mask = batch["response_mask"].float()
        logits = rollout.response_forward(self.policy, batch)
        logp = rollout.gather_logprobs(logits, batch["response_ids"], mask)  # (B, R)
        adv = group_advantages(scores, self.group_size, self.cfg.adv_eps, scale=not self.cfg.dr_grpo)  # (B,)
        out = {"old_logp": logp, "advantages": adv}
        stats = {"entropy": masked_mean(entropy_from_logits(logits), mask).item(),
                 "zero_std_groups": (scores.view(-1, self.group_size).std(1) == 0).float().mean().item()}
        if self.ref is not None:
            out["ref_logp"] = self.ref.logprobs(batch)
            stats["kl"] = ((logp - out["ref_logp"]) * mask).sum(1).mean().item()  # per response (k1)
        return out, stats


def make_loss_fn(cfg: GRPOConfig):
    def loss_fn(model: nn.Module, batch: dict) -> tuple[torch.Tensor, int, dict]:
        if batch.get("bad"):
            return rollout.nan_loss(model), 1, {}
        mask = batch["response_mask"].float()
        logits = rollout.response_forward(model, batch)
        logp = rollout.gather_logprobs(logits, batch["response_ids"], mask)
        loss, st = grpo_loss(logp, batch["old_logp"], batch.get("ref_logp"), batch["advantages"], mask, cfg.clip,
                             cfg.beta, norm_len=cfg.max_new_tokens if cfg.dr_grpo else None)
        metrics = {"clip_frac": st["clip_frac"].item(), "kl_k3": st["kl"].item()}
        return loss, 1, rollout.with_rollout_stats(metrics, batch)
    return loss_fn


def train_grpo(policy: nn.Module, tok: Tokenizer, prompts: list[dict], reward_fn: rollout.RewardFn, cfg: GRPOConfig,
               out_dir: str | Path, *, monitor_fn: rollout.MonitorFn | None = None, run_config: dict | None = None
               ) -> tuple[dict, list[dict]]:
    """GRPO of `policy` (reference = its state now); returns (trainer result, one stats row per rollout)."""
    if cfg.group_size < 2:
        raise ConfigError("grpo.group_size must be >= 2: advantages are relative to the other samples of a group")
    if cfg.epochs < 1:
        raise ConfigError(f"grpo.epochs={cfg.epochs}: each rollout needs >= 1 pass (1 = the usual one update per "
                          "batch)")
    ref = rollout.Reference(policy) if cfg.beta > 0 else None
    ids = [rollout.encode_prompt(tok, r["prompt"]) for r in prompts]
    source = GRPORollouts(policy, ref, ids, prompts, reward_fn, cfg, cfg.train, pad_id=tok.pad_id,
                          stop_id=tok.end_id, group_size=cfg.group_size, monitor_fn=monitor_fn)
    train = cfg.train
    rollout.schedule_rollouts(train, cfg.rollouts, source.steps_per_rollout, cfg.max_nan_rewards)

    def save_fn(folder: Path) -> None:
        rollout.write_policy(folder, policy, tok, run_config or {}, {"stage": "grpo", "step": trainer.step,
                                                             "rollouts": source.history[-1:]})

    trainer = Trainer(policy, train, make_loss_fn(cfg), source, out_dir, save_fn=save_fn, name="grpo")
    result = trainer.fit()
    return result, source.history


def main(cfg: GRPOConfig) -> dict:
    """Run GRPO from cfg with the world's answer check as the reward; returns the final statistics."""

    from genforge.checkpoint import load_checkpoint
    from genforge.train.ppo import read_prompts, verifiable_reward

    model, tok, _ = load_checkpoint(cfg.init_from)
    if tok is None:
        raise DataError(f"{cfg.init_from}: checkpoint has no tokenizer.json; GRPO needs one")
    prompts = read_prompts(cfg.prompts)
    keep = {t.strip() for t in cfg.tasks.split(",") if t.strip()}
    if keep:
        prompts = [r for r in prompts if r.get("task") in keep]
        if not prompts:
            raise DataError(f"{cfg.prompts}: no rows with task in {sorted(keep)}")
    out = Path(cfg.out_dir)
    save_resolved(cfg, out)
    policy = rollout.make_policy(model, cfg.lora_r, cfg.lora_alpha)
    result, history = train_grpo(policy, tok, prompts, verifiable_reward(tok), cfg, out, run_config=to_dict(cfg))
    return {**result, **{f"last_{k}": v for k, v in (history[-1] if history else {}).items()}}
