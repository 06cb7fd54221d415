"""PPO for language models (`genforge ppo`): policy + value head, frozen reference, per-token KL penalty, GAE.

The recipe of Ziegler et al. 2019 / Ouyang et al. 2022, written out:

1. rollout: sample a response per prompt from the current policy (the engine), score it with the reward
   (a reward model or a verifiable function), and record the policy's and the frozen reference's per-token
   log-probs and the value head's estimates;
2. reward per token: -beta * (log pi - log pi_ref), plus the score on the last token (Ziegler eq. 2); beta is
   fixed or adapted toward a target KL (their sec. 2.2);
3. advantages by GAE (Schulman et al. 2016), whitened over the rollout (the scores are first standardised per
   rollout, see `normalize_scores`);
4. `epochs` passes of shuffled minibatches: clipped surrogate (Schulman et al. 2017, eq. 7) + vf_coef * clipped
   value loss (- ent_coef * entropy), each minibatch one step of the shared trainer.

The value head reads the policy's own final hidden states (a shared trunk, as in TRL). Logged per step:
reward (`rollout_score`), KL to the reference, entropy, clip fraction, value loss, explained variance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

from genforge.config import save_resolved, to_dict
from genforge.errors import ConfigError, DataError
from genforge.io import read_jsonl
from genforge.model.heads import ScalarHead
from genforge.tokenizer import Tokenizer
from genforge.train.rl_losses import (
    KLController,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_penalized_rewards,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
)
from genforge.train.rollout import (
    MonitorFn,
    Reference,
    RewardFn,
    RolloutSource,
    encode_prompt,
    gather_logprobs,
    make_policy,
    nan_loss,
    response_forward,
    schedule_rollouts,
    with_rollout_stats,
    write_policy,
)
from genforge.train.trainer import TrainConfig, Trainer


@dataclass
class PPOConfig:
    """`genforge ppo`: RL fine-tuning against a reward model or a verifiable reward, with a KL leash."""

    init_from: str = "runs/tiny/sft/chat/checkpoint"  # the policy and the frozen reference start here
    prompts: str = "runs/tiny/world/tasks/train.jsonl"  # JSONL rows with "prompt" (plus "task"/"answer" if verifiable)
    reward: str = "rm"  # rm (reward_model) | verifiable (the world's answer check: 1 correct, 0 not)
    reward_model: str = "runs/tiny/reward/checkpoint"  # used when reward=rm
    out_dir: str = "runs/tiny/ppo"
    lora_r: int = 0  # 0 = full fine-tuning; > 0 = LoRA adapters (reference = adapters off)
    lora_alpha: float = 16.0
    rollouts: int = 20  # rollout/update cycles (sets train.max_steps)
    rollout_prompts: int = 32  # responses sampled per rollout
    epochs: int = 2  # passes over each rollout
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    kl_coef: float = 0.05  # beta of the per-token KL penalty (0 = no leash)
    kl_target: float = 0.0  # > 0: adapt beta toward this KL per response (Ziegler et al. 2019)
    kl_horizon: int = 10000
    gamma: float = 1.0
    lam: float = 0.95
    clip: float = 0.2  # policy ratio clip epsilon
    vf_clip: float = 0.2
    vf_coef: float = 0.1
    ent_coef: float = 0.0
    whiten_advantages: bool = True
    normalize_scores: bool = True  # standardise each rollout's scores (a batch baseline; see PPORollouts.process)
    max_nan_rewards: int = 3  # rollouts with a NaN reward skipped before the run stops
    trim_padding: bool = True  # forwards in length groups without shared padding (`rollout.length_groups`)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        micro_batch=8, warmup_steps=0, lr=1e-4, min_lr_ratio=1.0, weight_decay=0.0, eval_every=0, ckpt_every=0,
        log_every=1))


class ActorCritic(nn.Module):
    """The policy (a GPT, maybe with LoRA) and a value head on its final hidden states."""

    def __init__(self, policy: nn.Module, value_head: ScalarHead | None = None, trim: bool = False):
        super().__init__()
        self.policy, self.trim = policy, trim  # trim: see `rollout.response_forward`
        self.value_head = value_head or ScalarHead(policy.config.width, bias=True, init_std=0.0)

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, R, V) over the response tokens, values (B, R): V(state before token t))."""
        logits, hidden = response_forward(self.policy, batch, with_hidden=True, trim=self.trim)
        return logits, self.value_head(hidden)


class PPORollouts(RolloutSource):
    """Rollouts with GAE advantages; see the module docstring for the steps."""

    name = "ppo"

    def __init__(self, ac: ActorCritic, ref: Reference, *args, **kw):
        super().__init__(ac, *args, **kw)
        self.ref = ref
        self.kl_ctl = KLController(self.cfg.kl_coef, self.cfg.kl_target or None, self.cfg.kl_horizon)

    def sampling_model(self) -> nn.Module:
        return self.policy.policy

    @torch.no_grad()
    def process(self, batch: dict, scores: torch.Tensor) -> tuple[dict, dict]:
        mask = batch["response_mask"].float()  # (B, R)
        logits, values = self.policy(batch)
        logp = gather_logprobs(logits, batch["response_ids"], mask)  # (B, R)
        values = values * mask
        ref_logp = self.ref.logprobs(batch)
        beta = self.kl_ctl.value
        if self.cfg.normalize_scores and len(scores) > 1:
            # The score lands on the last token. A reward model's scores are often all positive, so unless
            # they are centred the last token (often <|end|>) is reinforced whatever the answer: the policy
            # learns to stop early. Centring per rollout (TRL's whiten_rewards) removes that bias; scaling
            # to unit std makes kl_coef mean the same thing for any reward scale.
            scores = (scores - scores.mean()) / (scores.std() + 1e-6)
        rewards, kl = kl_penalized_rewards(scores, logp, ref_logp, mask, beta)
        adv, returns = gae(rewards, values, mask, self.cfg.gamma, self.cfg.lam)
        if self.cfg.whiten_advantages:
            adv = masked_whiten(adv, mask)
        kl_seq = kl.sum(1).mean().item()  # KL(pi || pi_ref) per response, the k1 estimate
        self.kl_ctl.update(kl_seq, self.n_rows)
        stats = {"kl": kl_seq, "kl_coef": beta, "entropy": masked_mean(entropy_from_logits(logits), mask).item(),
                 "explained_var": explained_variance(values, returns, mask).item(),
                 "return": returns[:, 0].mean().item()}
        return {"old_logp": logp, "old_values": values, "advantages": adv, "returns": returns}, stats

    def state_dict(self) -> dict:
        return {**super().state_dict(), "kl_coef": self.kl_ctl.value}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.kl_ctl.value = state["kl_coef"]


def make_loss_fn(cfg: PPOConfig):
    def loss_fn(model: nn.Module, batch: dict) -> tuple[torch.Tensor, int, dict]:
        if batch.get("bad"):
            return nan_loss(model), 1, {}
        mask = batch["response_mask"].float()
        logits, values = model(batch)  # (b, R, V), (b, R)
        logp = gather_logprobs(logits, batch["response_ids"], mask)
        pg, st = ppo_policy_loss(logp, batch["old_logp"], batch["advantages"], mask, cfg.clip)
        vf, vf_frac = ppo_value_loss(values, batch["old_values"], batch["returns"], mask, cfg.vf_clip)
        if cfg.ent_coef:
            entropy = masked_mean(entropy_from_logits(logits), mask)
            loss = pg + cfg.vf_coef * vf - cfg.ent_coef * entropy
        else:  # logged only: no backward through a softmax over (b, R, V) that adds zeros to the gradient
            with torch.no_grad():
                entropy = masked_mean(entropy_from_logits(logits), mask)
            loss = pg + cfg.vf_coef * vf
        metrics = {"policy_loss": pg.item(), "value_loss": vf.item(), "clip_frac": st["clip_frac"].item(),
                   "vf_clip_frac": vf_frac.item(), "approx_kl_old": st["approx_kl"].item(),
                   "entropy": entropy.item()}
        return loss, 1, with_rollout_stats(metrics, batch)
    return loss_fn


def train_ppo(policy: nn.Module, tok: Tokenizer, prompts: list[dict], reward_fn: RewardFn, cfg: PPOConfig,
              out_dir: str | Path, *, monitor_fn: MonitorFn | None = None, run_config: dict | None = None
              ) -> tuple[dict, list[dict]]:
    """PPO of `policy` (reference = its state now); returns (trainer result, one stats row per rollout).

    prompts: rows with a "prompt" string (kept whole and handed to reward_fn / monitor_fn).
    """
    ref = Reference(policy, trim=cfg.trim_padding)
    ac = ActorCritic(policy, trim=cfg.trim_padding)
    ids = [encode_prompt(tok, r["prompt"]) for r in prompts]
    source = PPORollouts(ac, ref, ids, prompts, reward_fn, cfg, cfg.train, pad_id=tok.pad_id, stop_id=tok.end_id,
                         monitor_fn=monitor_fn)
    train = cfg.train
    schedule_rollouts(train, cfg.rollouts, source.steps_per_rollout, cfg.max_nan_rewards)

    def save_fn(folder: Path) -> None:
        write_policy(folder, policy, tok, run_config or {}, {"stage": "ppo", "step": trainer.step,
                                                             "rollouts": source.history[-1:]})
        save_file({k: v.detach().float().contiguous() for k, v in ac.value_head.state_dict().items()},
                  str(folder / "value_head.safetensors"))

    trainer = Trainer(ac, train, make_loss_fn(cfg), source, out_dir, save_fn=save_fn, name="ppo")
    result = trainer.fit()
    return result, source.history


# ---------------------------------------------------------------------------- rewards from files


def read_prompts(path: str | Path) -> list[dict]:
    """Prompt rows (JSONL with a "prompt" field)."""
    rows = []
    for line, obj in read_jsonl(path, required=("prompt",)):
        if not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
            raise DataError(f'{path}:{line}: "prompt" must be a non-empty string')
        rows.append(obj)
    if not rows:
        raise DataError(f"{path}: no prompts")
    return rows


def rm_reward(reward_model, pad_id: int, trim: bool = False) -> RewardFn:
    """Reward = the reward model's score of prompt + response (trim: see `reward.rm_scores`)."""
    from genforge.train.reward import score_responses

    return lambda prompts, responses, rows: score_responses(reward_model, prompts, responses, pad_id,
                                                            trim=trim).tolist()


def verifiable_reward(tok: Tokenizer) -> RewardFn:
    """Reward = 1 if the world's answer check accepts the response for the row's task/answer, else 0."""
    from genforge.text import detokenize
    from genforge.world.tasks import is_correct

    def fn(prompts, responses, rows):
        out = []
        for resp, row in zip(responses, rows):
            if "answer" not in row or "task" not in row:
                raise DataError('verifiable reward needs prompt rows with "task" and "answer" fields')
            out.append(1.0 if is_correct(row["task"], detokenize(tok, resp), row["answer"]) else 0.0)
        return out

    return fn


def main(cfg: PPOConfig) -> dict:
    """Run PPO from cfg; returns the trainer's result plus the last rollout's statistics."""

    from genforge.checkpoint import load_checkpoint

    if cfg.reward not in ("rm", "verifiable"):
        raise ConfigError(f"ppo.reward must be 'rm' or 'verifiable', got {cfg.reward!r}")
    model, tok, _ = load_checkpoint(cfg.init_from)
    if tok is None:
        raise DataError(f"{cfg.init_from}: checkpoint has no tokenizer.json; PPO needs one")
    prompts = read_prompts(cfg.prompts)
    if cfg.reward == "rm":
        from genforge.train.reward import load_reward_model

        reward_fn = rm_reward(load_reward_model(cfg.reward_model), tok.pad_id, cfg.trim_padding)
    else:
        reward_fn = verifiable_reward(tok)
    out = Path(cfg.out_dir)
    save_resolved(cfg, out)
    policy = make_policy(model, cfg.lora_r, cfg.lora_alpha)
    result, history = train_ppo(policy, tok, prompts, reward_fn, cfg, out, run_config=to_dict(cfg))
    return {**result, **{f"last_{k}": v for k, v in (history[-1] if history else {}).items()}}
