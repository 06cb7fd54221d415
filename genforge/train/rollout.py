"""Prompt + response sequences for alignment: their layout, sampling them, and scoring their tokens.

Every alignment stage works on (prompt, response) pairs of token ids. One batch layout serves all:
prompts are padded on the left and responses on the right, so every response starts at the same
column P:

    [pad pad p0 p1 p2 | r0 r1 r2 pad]      attention_mask 0 on pads, position_ids count real tokens only

The logits at columns P-1 .. P+R-2 predict the R response tokens, so per-token tensors live in
"response space" (B, R) with a `response_mask` that is 1 from column 0 to each row's length: the shape
`genforge.train.rl_losses` expects. Sampling uses the inference engine (token ids in, ids out).

Shapes: B rows, P longest prompt, R longest response, V vocab, C width.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.infer.engine import Engine, split_by_length
from genforge.infer.sampling import SamplingParams
from genforge.text import render_prompt
from genforge.tokenizer import Tokenizer


def encode_prompt(tok: Tokenizer, prompt: str, system: str | None = None) -> list[int]:
    """Chat-template ids of a one-turn user prompt, ending with the generation prompt (`text.render_prompt`)."""
    return render_prompt(tok, prompt, chat=True, system=system or "")


def encode_response(tok: Tokenizer, text: str) -> list[int]:
    """Ids of an assistant answer as the model writes it: the text, then <|end|>.

    Special-token strings inside the text stay plain bytes, exactly as `encode_chat` encodes message content.
    """
    return tok.encode(text, allow_special=False) + [tok.end_id]


def make_batch(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int = 0,
               max_len: int | None = None) -> dict[str, torch.Tensor]:
    """Left-pad prompts and right-pad responses into one batch (see the module docstring).

    max_len bounds the batch width P + R: responses are cut to max_len - 1 tokens, then every prompt keeps
    at most its last max_len - R tokens (the oldest go first; R is the longest response).
    Returns input_ids, attention_mask, position_ids (B, P+R); response_ids, response_mask (B, R).
    """
    prompts, responses = [list(p) for p in prompts], [list(r) for r in responses]
    if max_len is not None:
        responses = [r[:max_len - 1] for r in responses]
        keep = max_len - max(1, max(len(r) for r in responses))
        prompts = [p[-keep:] for p in prompts]
    B, P, R = len(prompts), max(len(p) for p in prompts), max(1, max(len(r) for r in responses))
    ids = torch.full((B, P + R), pad_id, dtype=torch.long)
    mask = torch.zeros(B, P + R, dtype=torch.long)
    for b, (p, r) in enumerate(zip(prompts, responses)):
        ids[b, P - len(p):P] = torch.tensor(p, dtype=torch.long)
        ids[b, P:P + len(r)] = torch.tensor(r, dtype=torch.long)
        mask[b, P - len(p):P + len(r)] = 1
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)  # (B, P+R) true positions of each row's tokens
    return {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids,
            "response_ids": ids[:, P:].clone(), "response_mask": mask[:, P:].clone()}


def response_forward(model: nn.Module, batch: dict, with_hidden: bool = False, trim: bool = False):
    """Logits (B, R, V) predicting the response tokens (and the hidden states (B, R, C) that produce them).

    model: a GPT (or a GPT with LoRA layers); one forward over prompt + response.
    trim: run rows of similar length together, each group without the columns that are padding in all its rows
        (`length_groups`); positions past a row's response get zero hidden states (masked everywhere anyway).
        The same numbers up to float rounding (shorter reductions), not bit for bit.
    """
    R = batch["response_ids"].shape[1]
    groups = trimmed_groups(batch) if trim else None
    if groups is None:
        hidden = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"], return_hidden=True)  # (B, P+R, C)
        hidden = hidden[:, -R - 1:-1]  # (B, R, C): column P-1+t predicts response token t
    else:
        P = batch["input_ids"].shape[1] - R
        parts = []
        for idx, lo, hi in groups:
            h = model(batch["input_ids"][idx, lo:hi], attention_mask=batch["attention_mask"][idx, lo:hi],
                      position_ids=batch["position_ids"][idx, lo:hi], return_hidden=True)  # (n, hi-lo, C)
            parts.append(F.pad(h[:, P - lo - 1:-1], (0, 0, 0, R - (hi - P))))  # (n, R, C), zeros past hi
        hidden = in_batch_order(parts, groups)  # (B, R, C)
    logits = model.head(hidden)  # (B, R, V); GPT.head = lm_head (+ Gemma 2's logit soft-cap)
    return (logits, hidden) if with_hidden else logits


def length_groups(batch: dict) -> list[tuple[torch.Tensor, int, int]]:
    """Rows of a `make_batch` batch split into groups of similar length (`engine.split_by_length`):
    [(row index (n,), lo, hi)], where columns lo .. hi-1 hold every real token of the group's rows (the rest is
    padding in all of them).

    A batch is as wide as its longest prompt plus its longest response: at tiny one needle prompt (~350 tokens) in
    a rollout of 32 prompts (median 58) made every row ~4x wider than its tokens, and attention 16x costlier.
    """
    mask = batch["attention_mask"]  # (B, T)
    P = mask.shape[1] - batch["response_ids"].shape[1]
    p = mask[:, :P].sum(1).clamp(min=1).tolist()  # real prompt tokens per row (at least the column predicting r0)
    r = mask[:, P:].sum(1).clamp(min=1).tolist()  # real response tokens per row
    return [(torch.tensor(rows, dtype=torch.long, device=mask.device), P - max(p[i] for i in rows),
             P + max(r[i] for i in rows)) for rows in split_by_length(p, r)]


def trimmed_groups(batch: dict) -> list[tuple[torch.Tensor, int, int]] | None:
    """`length_groups(batch)`, or None when they would leave out no column (one full-width forward then)."""
    groups = length_groups(batch)
    if not groups or (len(groups) == 1 and groups[0][1] == 0 and groups[0][2] == batch["input_ids"].shape[1]):
        return None
    return groups


def in_batch_order(parts: list[torch.Tensor], groups: list[tuple[torch.Tensor, int, int]]) -> torch.Tensor:
    """The per-group results of `trimmed_groups` (n_g, ...) joined back into batch order: (B, ...)."""
    order = torch.cat([idx for idx, _, _ in groups])
    return torch.cat(parts)[torch.argsort(order)]


def gather_logprobs(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log p(ids) per position from logits (B, R, V): (B, R), 0 where mask is 0."""
    lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return lp * mask.to(lp.dtype)


def response_logprobs(model: nn.Module, batch: dict, trim: bool = False) -> torch.Tensor:
    """Per-token log-probs of the response tokens under `model`: (B, R) (trim: see `response_forward`)."""
    return gather_logprobs(response_forward(model, batch, trim=trim), batch["response_ids"], batch["response_mask"])


@torch.no_grad()
def batched_logprobs(model: nn.Module, batch: dict, chunk: int = 32, trim: bool = False) -> torch.Tensor:
    """`response_logprobs` without gradients, in chunks of rows (for the frozen reference and old policy)."""
    B = batch["input_ids"].shape[0]
    out = [response_logprobs(model, {k: v[i:i + chunk] for k, v in batch.items() if torch.is_tensor(v)}, trim)
           for i in range(0, B, chunk)]
    return torch.cat(out)


def sample_responses(model: nn.Module, prompts: list[list[int]], params: SamplingParams, *, stop_id: int,
                     chunk: int = 64, trim: bool = False) -> list[list[int]]:
    """Sample one response per prompt with the engine; a response that stopped keeps its stop token.

    The stop token is an action the policy took (ending its turn), so it is scored and trained like any
    other token; a response cut by max_new_tokens has no stop token. A seeded params gets seed + i
    for the batch whose first prompt is the i-th sampled. trim: prefill in length groups
    (`Engine.trim_prefill`) and, for greedy answers, batches of similar prompt lengths (`decode_batches`):
    the same responses up to float rounding. Sampled responses keep their batches (regrouped, each row
    would draw other random numbers: measured at tiny, the other own-sample preferences moved align's DPO
    win rate from 0.735 to 0.610, a seed's worth of change for a few per cent of the stage's CPU).
    """
    was_training = model.training
    model.eval()
    engine = Engine(model, trim_prefill=trim)
    out: list[list[int]] = [[] for _ in prompts]
    i = 0
    for rows in decode_batches([len(p) for p in prompts], chunk, params.max_new_tokens, trim and params.greedy):
        part = [prompts[k] for k in rows]
        room = min(params.max_new_tokens, model.config.max_seq_len - max(len(p) for p in part))
        p = replace(params, max_new_tokens=room, seed=None if params.seed is None else params.seed + i)
        for k, r in zip(rows, engine.generate(part, p, stop_ids=[stop_id])):
            out[k] = r + [stop_id] if len(r) < room else r
        i += len(rows)
    model.train(was_training)
    return out


# Cost of one more decode batch for `decode_batches`, in rows x columns: each decode step of a batch pays the
# model's per-call Python and dispatch. Measured at tiny on the gold curve's 64 greedy answers (sft model, 1
# thread): 2000 gave batches of 45/13/6 rows and 0.80x the CPU of one batch; 8000 (58/6) 0.90x.
DECODE_BATCH_OVERHEAD = 2000


def decode_batches(lengths: list[int], chunk: int, max_new_tokens: int, trim: bool = False) -> list[list[int]]:
    """The rows (prompt indices) of each engine batch: consecutive chunks of `chunk` prompts, or with trim,
    prompts sorted by length, chunked, and each chunk split where its lengths jump (`split_by_length`; a short
    prompt in a batch with a long one attends over the long one's padding at every decode step)."""
    n = len(lengths)
    if not trim:
        return [list(range(i, min(i + chunk, n))) for i in range(0, n, chunk)]
    order = sorted(range(n), key=lambda k: (lengths[k], k))
    out = []
    for i in range(0, n, chunk):
        part = order[i:i + chunk]
        out += [[part[j] for j in g] for g in split_by_length([lengths[k] for k in part],
                                                              [max_new_tokens // 2] * len(part),
                                                              overhead=DECODE_BATCH_OVERHEAD)]
    return out


# ---------------------------------------------------------------------------- policy and reference


def is_lora(model: nn.Module) -> bool:
    from genforge.model.peft import lora_modules

    return bool(lora_modules(model))


class Reference:
    """The frozen reference policy pi_ref: a frozen copy of the starting model or, for a LoRA policy,
    the policy itself with its adapter switched off (no second copy of the weights).
    """

    def __init__(self, policy: nn.Module, trim: bool = False):
        import copy

        self.policy, self.trim = policy, trim  # trim: length groups without shared padding (`response_forward`)
        self.frozen = None if is_lora(policy) else copy.deepcopy(policy).eval().requires_grad_(False)

    @torch.no_grad()
    def logprobs(self, batch: dict, chunk: int = 32) -> torch.Tensor:
        """Per-token response log-probs (B, R) under the reference (on the batch's device)."""
        device = next(self.policy.parameters()).device  # the reference runs where the policy runs
        where = batch["input_ids"].device
        batch = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
        if self.frozen is not None:
            return batched_logprobs(self.frozen.to(device), batch, chunk, self.trim).to(where)
        from genforge.model.peft import use_adapter

        was_training = self.policy.training
        self.policy.eval()
        with use_adapter(self.policy, None):
            out = batched_logprobs(self.policy, batch, chunk, self.trim)
        self.policy.train(was_training)
        return out.to(where)


def make_policy(model: nn.Module, lora_r: int = 0, lora_alpha: float = 16.0,
                lora_targets: Sequence[str] = ("q_proj", "v_proj")) -> nn.Module:
    """The trainable policy: the whole model (lora_r 0) or LoRA adapters on `lora_targets` (base frozen)."""
    model.train()
    if lora_r > 0:
        from genforge.model.peft import apply_lora

        apply_lora(model, r=lora_r, alpha=lora_alpha, target_modules=list(lora_targets))
    return model


def write_policy(folder, policy: nn.Module, tok: Tokenizer | None, run_config: dict, meta: dict) -> None:
    """Checkpoint files for a policy; a LoRA policy is written merged (plus its adapter in folder/adapter)."""
    import copy
    from pathlib import Path

    from genforge.checkpoint import write_checkpoint_files

    if is_lora(policy):
        from genforge.model.peft import merge_and_unload, save_lora

        save_lora(policy, Path(folder) / "adapter")
        policy = merge_and_unload(copy.deepcopy(policy))
    write_checkpoint_files(Path(folder), policy, tok if isinstance(tok, Tokenizer) else None, run_config, meta)


# ---------------------------------------------------------------------------- on-policy data for the trainer

RewardFn = Callable[[list[list[int]], list[list[int]], list[dict]], Sequence[float]]
"""(prompt ids, response ids, the prompts' rows) -> one score per response; NaN marks a failed score."""

MonitorFn = Callable[[list[list[int]], list[list[int]], list[dict]], dict[str, float]]
"""Extra per-rollout numbers to log (e.g. the world oracle's true quality next to the proxy reward)."""


class RolloutSource:
    """A stateful trainer data source for on-policy RL (PPO, GRPO).

    At the first step of each cycle it samples responses to `rollout_prompts` prompts (`group_size` each)
    from the *current* policy, scores them, and lets the subclass turn that into training tensors
    (`process`); the next `epochs * n_minibatches` optimizer steps walk shuffled minibatches of it. The
    buffer travels in the trainer checkpoint (`state_dict`), so resume is exact.

    A rollout whose reward function returned NaN is discarded: its step is skipped (the loss is NaN, so the
    trainer's guard counts it and does not update) and the next step samples afresh; after
    `max_nan_rewards` such rollouts the run stops with a TrainingError.
    """

    name = "rollout"

    def __init__(self, policy: nn.Module, prompts: list[list[int]], rows: list[dict], reward_fn: RewardFn, cfg,
                 train_cfg, *, pad_id: int, stop_id: int, group_size: int = 1, monitor_fn: MonitorFn | None = None):
        from genforge.errors import ConfigError, DataError

        self.policy, self.reward_fn, self.monitor_fn = policy, reward_fn, monitor_fn
        limit = self.sampling_model().config.max_seq_len - cfg.max_new_tokens
        keep = [i for i, p in enumerate(prompts) if len(p) <= limit]
        if len(keep) < len(prompts):
            print(f"[{self.name}] {len(prompts) - len(keep)} of {len(prompts)} prompts are longer than {limit} tokens "
                  f"(the context minus max_new_tokens) and are left out", flush=True)
        if not keep:
            raise DataError(f"{self.name}: no prompts to sample from (none fits in {limit} tokens)")
        self.prompts, self.rows = [prompts[i] for i in keep], [rows[i] for i in keep]
        self.cfg, self.group_size, self.pad_id, self.stop_id = cfg, group_size, pad_id, stop_id
        self.micro_batch, self.grad_accum, self.seed = train_cfg.micro_batch, train_cfg.grad_accum, train_cfg.seed
        self.n_rows = cfg.rollout_prompts * group_size
        per_step = self.micro_batch * self.grad_accum
        if self.n_rows < per_step or self.n_rows % per_step:
            raise ConfigError(f"{self.name}: a rollout has {self.n_rows} responses (rollout_prompts x group size), "
                              f"which must be a multiple of train.micro_batch x train.grad_accum = {per_step}")
        self.n_minibatches = self.n_rows // per_step
        self.steps_per_rollout = cfg.epochs * self.n_minibatches
        self.buffer: dict | None = None
        self.start, self.bad, self.nan_rollouts = -1, False, 0
        self.history: list[dict] = []  # one row of statistics per rollout

    # -- to be provided by PPO / GRPO
    def process(self, batch: dict, scores: torch.Tensor) -> tuple[dict, dict]:
        """(per-row training tensors, statistics) from a sampled batch and its scores."""
        raise NotImplementedError

    def sampling_model(self) -> nn.Module:
        return self.policy

    # -- the trainer's data contract
    def collect(self, step: int, rank: int = 0) -> None:
        import math
        import random

        from genforge.errors import TrainingError

        device = next(self.policy.parameters()).device
        seed = self.seed + 7 * rank  # each process samples its own prompts and responses
        rng = random.Random(seed * 1_000_003 + step)
        picked = [rng.randrange(len(self.prompts)) for _ in range(self.cfg.rollout_prompts)]
        picked = [i for i in picked for _ in range(self.group_size)]  # G consecutive samples per prompt
        prompts, rows = [self.prompts[i] for i in picked], [self.rows[i] for i in picked]
        max_len = self.sampling_model().config.max_seq_len
        params = SamplingParams(max_new_tokens=self.cfg.max_new_tokens, temperature=self.cfg.temperature,
                                top_k=self.cfg.top_k, top_p=self.cfg.top_p, seed=seed * 7919 + step)
        responses = sample_responses(self.sampling_model(), prompts, params, stop_id=self.stop_id,
                                     trim=getattr(self.cfg, "trim_padding", False))
        scores = torch.tensor([float(s) for s in self.reward_fn(prompts, responses, rows)], dtype=torch.float32)
        self.start = step
        if not torch.isfinite(scores).all():
            self.nan_rollouts += 1
            self.bad, self.buffer = True, None
            if self.nan_rollouts > self.cfg.max_nan_rewards:
                raise TrainingError(
                    f"[{self.name}] step {step}: the reward function returned NaN/inf in {self.nan_rollouts} "
                    f"rollouts (max_nan_rewards={self.cfg.max_nan_rewards}); fix the reward function")
            print(f"[{self.name}] step {step}: reward is NaN for {int((~torch.isfinite(scores)).sum())} "
                  f"responses; skipping this rollout ({self.nan_rollouts}/{self.cfg.max_nan_rewards})", flush=True)
            return
        batch = {k: v.to(device) for k, v in make_batch(prompts, responses, self.pad_id, max_len).items()}
        was_training = self.policy.training
        self.policy.eval()
        tensors, stats = self.process(batch, scores.to(device))
        self.policy.train(was_training)
        lengths = batch["response_mask"].sum(1).float()
        stats = {"step": step, "score": scores.mean().item(), "response_len": lengths.mean().item(), **stats}
        if self.monitor_fn is not None:
            stats.update(self.monitor_fn(prompts, responses, rows))
        stats = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in stats.items()}
        self.buffer = {**{k: batch[k] for k in ("input_ids", "attention_mask", "position_ids", "response_ids",
                                                "response_mask")}, **tensors}
        self.bad = False
        self.history.append(stats)

    def get_batch(self, step: int, micro: int, rank: int, world: int) -> dict:
        stale = self.start < 0 or step >= self.start + self.steps_per_rollout or step < self.start
        if (stale or (self.bad and step > self.start)) and micro == 0:
            self.collect(step, rank)
        if self.bad:
            return {"bad": True}
        epoch, mb = divmod(step - self.start, self.n_minibatches)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.start * 101 + epoch)
        order = torch.randperm(self.n_rows, generator=g)
        lo = (mb * self.grad_accum + micro) * self.micro_batch
        idx = order[lo:lo + self.micro_batch].to(self.buffer["input_ids"].device)
        out = {k: v[idx] for k, v in self.buffer.items()}
        # the rollout's statistics ride along so the trainer logs them with the step
        out.update({f"rollout_{k}": v for k, v in self.history[-1].items() if k != "step" and v is not None})
        return out

    def state_dict(self) -> dict:
        return {"buffer": self.buffer, "start": self.start, "bad": self.bad, "nan_rollouts": self.nan_rollouts,
                "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.buffer, self.start, self.bad = state["buffer"], state["start"], state["bad"]
        self.nan_rollouts, self.history = state["nan_rollouts"], state["history"]


def nan_loss(model: nn.Module) -> torch.Tensor:
    """A NaN loss connected to the model: the trainer's guard then skips the step (and counts it)."""
    return next(p for p in model.parameters() if p.requires_grad).sum() * float("nan")


def with_rollout_stats(metrics: dict, batch: dict) -> dict:
    """A minibatch's metrics plus the rollout's statistics (batch keys "rollout_*"), unless the minibatch
    measured the same thing itself."""
    for k, v in batch.items():
        if k.startswith("rollout_"):
            metrics.setdefault(k[len("rollout_"):], v)
    return metrics


def schedule_rollouts(train, rollouts: int, steps_per_rollout: int, max_nan_rewards: int) -> None:
    """Trainer steps = rollouts x optimiser steps per rollout (when rollouts is set); NaN rewards are bad steps."""
    train.max_steps = rollouts * steps_per_rollout if rollouts else train.max_steps
    train.max_bad_steps = max(train.max_bad_steps, max_nan_rewards)
