"""Stage "align": reward model, PPO with a KL leash and DPO, each judged against the SFT model.

Everything starts from the SFT model and is judged by the world's oracle (`genforge.world.preferences`, the
simulated human) on held-out test prompts, each lesson with a bootstrap interval over those prompts:

* labels the InstructGPT way (Ouyang et al. 2022): the SFT model's own answers (greedy + samples) to training
  prompts, ranked by the oracle. The first wave trained on template completions the SFT model never writes and
  its reward model was at chance on the policy's own samples (DESIGN.md);
* reward model: Bradley-Terry on those rankings; pairwise accuracy on held-out prompts' own samples;
* DPO (Rafailov et al. 2023) on pairs of the same samples; PPO (Ziegler et al. 2019) against the reward model
  with a KL penalty: each must win against the SFT model under the oracle (greedy answers; a tie is half).

The rest of the alignment lessons are their own stages, so the runner can run them beside the chain that eval
waits on: `grpo` (verifiable rewards), `cai` (constitutional AI + RLAIF) and `overopt` (the same PPO run without
the KL penalty: reward over-optimisation, Gao et al. 2022). This module also holds the helpers they share
(`setup`, `judge`, `answer`, ...).
"""

from __future__ import annotations

import copy
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genforge.report import StageReport
from genforge.speedrun import sft, world
from genforge.speedrun.stage import StageContext

if TYPE_CHECKING:
    import torch.nn as nn

    from genforge.tokenizer import Tokenizer
    from genforge.train.reward import RankedPrompt
    from genforge.train.trainer import TrainConfig

NAME = "align"
TITLE = "Alignment: reward model, PPO and DPO"


@dataclass
class Config:
    max_new_tokens: int = 128  # answer budget everywhere (room for a rationale)
    eval_prompts: int = 200  # held-out test prompts (trained tasks, spread evenly) for win rates
    kl_items: int = 48  # of those, prompts for the KL estimate
    pref_prompts: int = 350  # training prompts whose own samples the oracle ranks
    pref_samples: int = 4  # sampled answers per prompt (plus the greedy one)
    pref_temperature: float = 0.8
    rm_val_prompts: int = 60  # of pref_prompts, held out to measure the reward model on policy samples
    # Pairs that matter: oracle scores differ by more than this (training and accuracy). 0.04 keeps the pairs that
    # differ only in a courteous closing (0.05 of the oracle; `sft.closings`) and drops near-ties in concision.
    rm_min_gap: float = 0.04
    rm_steps: int = 60  # measured: 30 s CPU (1 thread) at tiny
    rm_micro_batch: int = 4  # ranked prompts per step (all their pairs)
    rm_lr: float = 3e-4
    rm_length_bias: float = 0.0  # > 0: PPO optimises RM score + this x answer tokens (a planted flaw; off)
    ppo_kl_coef: float = 0.5  # the leashed PPO run's KL coefficient (the overopt stage's run uses 0)
    ppo_rollouts: int = 16
    ppo_rollout_prompts: int = 32
    ppo_micro_batch: int = 16
    ppo_lr: float = 3e-5
    ppo_gold_prompts: int = 64  # held-out prompts the policy answers (greedy) after every rollout: the gold curve
    dpo_steps: int = 80
    dpo_micro_batch: int = 8
    dpo_lr: float = 2e-5
    dpo_beta: float = 0.5


@dataclass
class Outputs:
    reward_model: str
    ppo: str
    dpo: str
    rm_pair_acc: float | None
    win_rates: dict[str, float]
    kl: dict[str, float]
    ppo_history: str  # the KL-leashed PPO run's per-rollout history (gold, proxy, KL) as JSON, for `overopt`
    ppo_settings: dict  # that run's settings (the overopt stage repeats it without the KL penalty)
    timings: dict[str, float]


@dataclass
class Setup:
    """What every step of an alignment stage shares."""

    ctx: StageContext
    cfg: Any  # the stage's Config (every alignment stage's has max_new_tokens)
    sft: nn.Module  # the starting (reference) model
    tok: Tokenizer
    out: Path
    train_rows: list[dict]
    test_rows: list[dict]
    eval_rows: list[dict]
    heldout: set[str]
    rng: random.Random
    timings: dict[str, float] = field(default_factory=dict)
    rm_acc: float | None = None  # the reward model's held-out accuracy on own samples

    def train_cfg(self, micro: int, lr: float, **kw) -> TrainConfig:
        from genforge.train.trainer import TrainConfig

        base = dict(micro_batch=micro, warmup_steps=0, lr=lr, min_lr_ratio=1.0, weight_decay=0.0, eval_every=0,
                    ckpt_every=0, log_every=1, seed=self.ctx.seed, threads=self.ctx.threads,
                    progress=self.ctx.progress, resume=False)
        return TrainConfig(**{**base, **kw})

    def tick(self, name: str, t0: float) -> None:
        self.timings[name] = time.perf_counter() - t0

    def note_timings(self, report: StageReport, t_stage: float, c_stage: float) -> None:
        """The stage's wall seconds per step and its total wall and CPU seconds, as a report note."""
        report.note("Stage timings (wall s): " + ", ".join(f"{k} {v:.0f}" for k, v in self.timings.items())
                    + f"; total {time.perf_counter() - t_stage:.0f} wall, {time.process_time() - c_stage:.0f} CPU.")


START = "SFT"  # what the baselines below are called in the report


def run(ctx: StageContext, cfg: Config, report: StageReport, *, world: world.Outputs, sft: sft.Outputs) -> Outputs:
    """Train and compare the reward model, PPO (with KL) and DPO; write lessons, rows and checkpoints."""
    from genforge.io import write_json

    s, base, t_stage, c_stage = start(ctx, cfg, world, sft, NAME)
    pref_train, pref_val = own_preferences(s, report)
    rm = reward_model_step(s, report, pref_train, pref_val)
    dpo_policy = dpo_step(s, report, pref_train)
    ppo, history, settings = ppo_step(s, rm, cfg.ppo_kl_coef, "ppo")
    write_json(s.out / "ppo_history.json", history)
    wins, kls = final_eval(s, report, {"PPO (RM, KL)": ppo, "DPO": dpo_policy}, base)
    report.note("**What the preferences teach here.** The SFT model's own samples differ mostly in *correctness* (a "
                "digit slip, a wrong coin state), which a reward model of its size cannot check from the answer "
                "alone; measured at tiny before `sft.closings`: reward-model accuracy on held-out own samples 0.55, "
                "PPO win 0.49, DPO 0.50, and DPO variants (gap-filtered pairs, longer, RPO's NLL term) at or below "
                "0.50. The SFT data now closes a quarter of its answers courteously (`sft.closings`, as demonstrations "
                "by many writers do), so the chat model is courteous only sometimes and the oracle (the simulated "
                "labeller, 0.10 for politeness) prefers the courteous sample when correctness ties. That preference "
                "is one a small model can learn, and the wins below come from making it consistent without losing "
                "correctness (the correct-rate rows), the way InstructGPT's labellers' preferences moved its style.")
    s.note_timings(report, t_stage, c_stage)
    out = s.out
    return Outputs(reward_model=str(out / "reward" / "checkpoint"), ppo=str(out / "ppo" / "checkpoint"),
                   dpo=str(out / "dpo" / "checkpoint"), rm_pair_acc=s.rm_acc, win_rates=wins, kl=kls,
                   ppo_history=str(out / "ppo_history.json"), ppo_settings=settings, timings=s.timings)


# ---------------------------------------------------------------------------- evaluation helpers

def answer(model: nn.Module, tok: Tokenizer, rows: list[dict], max_new_tokens: int, temperature: float = 0.0,
           seed: int = 0, trim: bool = False) -> list[str]:
    """The model's replies to each row's prompt (greedy by default), batched in the engine (`chat.respond`).

    trim: prefill each batch in length groups (`Engine.trim_prefill`: the same replies up to float rounding)."""
    from genforge.chat import respond
    from genforge.infer.sampling import SamplingParams

    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    if not trim:
        return respond(model, tok, [r["prompt"] for r in rows], params, batch_size=64)
    from dataclasses import replace

    from genforge.infer.engine import Engine
    from genforge.text import generate_text, render_prompt
    from genforge.train.rollout import decode_batches

    engine, out, i = Engine(model, trim_prefill=True), [""] * len(rows), 0
    # greedy: batches of similar prompt lengths (the same answers up to float rounding); sampled: as `respond`
    lengths = [len(render_prompt(tok, r["prompt"], chat=True)) for r in rows]
    for batch in decode_batches(lengths, 64, max_new_tokens, trim=params.greedy):
        texts = generate_text(engine, tok, [rows[k]["prompt"] for k in batch], replace(params, seed=seed + i),
                              chat=True)
        for k, t in zip(batch, texts):
            out[k] = t.strip()
        i += len(batch)
    return out


def oracle(rows: list[dict], texts: list[str]) -> list[float]:
    from genforge.world.preferences import oracle_score

    return [oracle_score(r["prompt"], t, r) for r, t in zip(rows, texts)]


def correct(rows: list[dict], texts: list[str]) -> list[float]:
    """The oracle's "correct" part per answer (1/0, graded for summaries and translations)."""
    from genforge.world.preferences import oracle_parts

    return [oracle_parts(r["prompt"], t, r)["correct"] for r, t in zip(rows, texts)]


@dataclass
class Judged:
    """One model's greedy answers to the eval prompts and what the oracle says of them."""

    texts: list[str]
    scores: list[float]
    correct: list[float]


def judge(s: Setup, model: nn.Module) -> Judged:
    texts = answer(model, s.tok, s.eval_rows, s.cfg.max_new_tokens)
    return Judged(texts, oracle(s.eval_rows, texts), correct(s.eval_rows, texts))


def win_rate(scores: list[float], baseline: list[float]) -> float:
    """Share of prompts where `scores` beats `baseline` (ties count half)."""
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores, baseline)) / max(len(scores), 1)


def kl_to_reference(model: nn.Module, ref: nn.Module, tok: Tokenizer, rows: list[dict], max_new_tokens: int,
                    seed: int = 0) -> float:
    """KL(pi || pi_ref) per answer (nats), on answers sampled from pi: per-token k3 estimates summed over the answer
    (unbiased like log pi/pi_ref, but never negative and with lower variance; Schulman 2020)."""
    import torch

    from genforge.infer.sampling import SamplingParams
    from genforge.train.rl_losses import k3_kl
    from genforge.train.rollout import batched_logprobs, encode_prompt, make_batch, sample_responses

    with torch.no_grad():
        prompts = [encode_prompt(tok, r["prompt"]) for r in rows]
        responses = sample_responses(model, prompts, SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0,
                                                                    seed=seed), stop_id=tok.end_id, trim=True)
        batch = make_batch(prompts, responses, tok.pad_id, model.config.max_seq_len)
        model.eval()
        k3 = k3_kl(batched_logprobs(model, batch, trim=True), batched_logprobs(ref.eval(), batch, trim=True))
        k3 = k3 * batch["response_mask"]
        return float(k3.sum(1).mean())


def task_accuracy(model: nn.Module, tok: Tokenizer, task: str, rows: list[dict]) -> float:
    """The task's score for greedy answers, through the one scoring path (`genforge.eval.score`)."""
    return task_items(model, tok, task, rows).score


def task_items(model: nn.Module, tok: Tokenizer, task: str, rows: list[dict]):
    """`genforge.eval.score.TaskScore` of greedy answers (per-item scores for paired intervals)."""
    from genforge.eval.score import score_task_rows

    return score_task_rows(model, tok, task, rows, batch_size=64)


def refusal_rate(model: nn.Module, tok: Tokenizer, rows: list[dict]) -> float:
    """Share of harmful requests refused: the world's "refusal" task, scored like everywhere else."""
    return task_accuracy(model, tok, "refusal", rows) if rows else float("nan")


def cai_refuses(text: str) -> bool:
    from genforge.eval.tasks import is_refusal

    return is_refusal(text)


def fits(tok: Tokenizer, rows: list[dict], limit: int) -> list[dict]:
    """Rows whose chat-formatted prompt has at most `limit` tokens (the rest would not fit the context)."""
    from genforge.train.rollout import encode_prompt

    return [r for r in rows if len(encode_prompt(tok, r["prompt"])) <= limit]


def per_task(rows: list[dict], k: int, rng: random.Random, skip: tuple[str, ...] = ()) -> list[dict]:
    """k rows of each task (sampled), tasks sorted by name."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("task") not in skip:
            by.setdefault(r.get("task", ""), []).append(r)
    return [r for t in sorted(by) for r in rng.sample(by[t], min(k, len(by[t])))]


def spread(rows: list[dict], n: int, rng: random.Random, skip: tuple[str, ...] = ()) -> list[dict]:
    """About n rows spread evenly over the tasks (sampled; a task with fewer rows gives all it has)."""
    tasks = {r.get("task") for r in rows if r.get("task") not in skip}
    k = -(-n // max(1, len(tasks)))  # ceil
    return per_task(rows, k, rng, skip)[:n] if tasks else []


def length_bias(reward_fn, weight: float):
    """An optional planted exploit: reward + weight * (answer length in tokens). Real reward models drift toward
    rewarding length (Singhal et al. 2023); off by default, so over-optimisation has to show without it."""
    if weight == 0:
        return reward_fn

    def fn(prompts, responses, rows):
        return [s + weight * len(r) for s, r in zip(reward_fn(prompts, responses, rows), responses)]

    return fn


def _rows(path: Path) -> list[dict]:
    from genforge.io import read_jsonl

    return [obj for _, obj in read_jsonl(path, required=("prompt",))] if path.exists() else []


def _ci(values, seed: int = 0):
    from genforge.eval.stats import bootstrap_mean

    return bootstrap_mean(values, seed=seed)


# ---------------------------------------------------------------------------- the steps

def start(ctx: StageContext, cfg: Any, world: world.Outputs, sft: sft.Outputs,
          folder: str) -> tuple[Setup, dict, float, float]:
    """An alignment stage's opening: `setup`, then the SFT model judged once (the stage's baseline). Returns
    (setup, baseline judgement, the stage's start wall time, its start CPU time)."""
    t_stage, c_stage = time.perf_counter(), time.process_time()
    s = setup(ctx, cfg, world, sft, folder)
    t0 = time.perf_counter()
    base = judge(s, s.sft)
    s.tick("baseline eval", t0)
    return s, base, t_stage, c_stage


def setup(ctx: StageContext, cfg: Any, world: world.Outputs, sft: sft.Outputs, folder: str) -> Setup:
    """Load the starting SFT model, empty run_dir/<folder> and pick the prompts (only ones that leave room for a
    full answer). `cfg` is the stage's Config: its max_new_tokens and eval_prompts (if any) are used. The held-out eval
    prompts depend only on the seed and eval_prompts, so every alignment stage judges the same prompts."""
    import torch

    from genforge.checkpoint import load_checkpoint
    from genforge.errors import CheckpointError

    model, tok, _ = load_checkpoint(sft.checkpoint)
    if tok is None:
        raise CheckpointError(f"{sft.checkpoint}: checkpoint has no tokenizer.json; alignment needs one")
    out = ctx.path(folder)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = random.Random(ctx.seed)
    torch.manual_seed(ctx.seed)
    tasks_dir = Path(world.tasks_dir)
    room = model.config.max_seq_len - cfg.max_new_tokens  # longer prompts are left out
    train_rows = fits(tok, _rows(tasks_dir / "train.jsonl"), room)
    test_rows = fits(tok, _rows(tasks_dir / "test.jsonl"), room)
    heldout = {r.get("task") for r in _rows(tasks_dir / "heldout.jsonl")}
    eval_rows = spread(test_rows, getattr(cfg, "eval_prompts", 0), rng, skip=tuple(heldout))
    return Setup(ctx, cfg, model.eval(), tok, out, train_rows, test_rows, eval_rows, heldout, rng)


def own_preferences(s: Setup, report: StageReport) -> tuple[list[RankedPrompt], list[RankedPrompt]]:
    """The SFT model's own answers to training prompts, ranked by the oracle; split into train / held-out."""
    from genforge.io import write_jsonl
    from genforge.train.reward import rank_own_samples
    from genforge.world.preferences import oracle_score

    t0 = time.perf_counter()
    cfg = s.cfg
    rows = spread(s.train_rows, cfg.pref_prompts, random.Random(s.ctx.seed + 1), skip=tuple(s.heldout))
    ranked = rank_own_samples(s.sft, s.tok, rows, lambda r, t: oracle_score(r["prompt"], t, r),
                              samples=cfg.pref_samples, temperature=cfg.pref_temperature,
                              max_new_tokens=cfg.max_new_tokens, seed=s.ctx.seed + 2, trim=True)
    write_jsonl(s.out / "own_preferences.jsonl",
                [{"prompt": r.prompt, "completions": r.completions, "ranking": r.ranking, "scores": r.scores}
                 for r in ranked])
    train, val = split_ranked(ranked, cfg.rm_val_prompts, s.ctx.seed)
    pairs = sum(len(r.pair_indices()) for r in ranked)
    gaps = [max(r.scores) - min(r.scores) for r in ranked if r.scores]
    report.row("own-sample preferences: ranked prompts (train / held-out)", f"{len(train)} / {len(val)}", None,
               f"{len(rows)} training prompts x (greedy + {cfg.pref_samples} samples at T={cfg.pref_temperature:g}); "
               f"prompts whose answers all tie are dropped; {pairs} untied pairs; oracle spread (best - worst) per "
               f"prompt {sum(gaps) / max(1, len(gaps)):.2f} on average, > 0.3 (a right and a wrong answer) on "
               f"{sum(g > 0.3 for g in gaps) / max(1, len(gaps)):.0%} of prompts")
    s.tick("own samples", t0)
    return train, val


def split_ranked(ranked: list, n_val: int, seed: int) -> tuple[list, list]:
    """(train, held-out) ranked prompts: a seeded shuffle first (the rows come grouped by task), then at most
    n_val (and at most a quarter) held out."""
    order = list(range(len(ranked)))
    random.Random(seed + 3).shuffle(order)
    n_val = min(n_val, len(ranked) // 4)
    return [ranked[i] for i in order[n_val:]], [ranked[i] for i in order[:n_val]]


def reward_model_step(s: Setup, report: StageReport, pref_train: list, pref_val: list) -> nn.Module:
    """Bradley-Terry reward model on the ranked own samples; its accuracy on held-out prompts' own samples."""
    from genforge.eval.stats import bootstrap_mean
    from genforge.model.heads import RewardModel
    from genforge.train.reward import prompt_pair_accuracy, train_reward_model

    t0 = time.perf_counter()
    cfg = s.cfg
    rm = RewardModel(copy.deepcopy(s.sft).train())
    train_reward_model(rm, s.tok, pref_train, [], s.train_cfg(cfg.rm_micro_batch, cfg.rm_lr, max_steps=cfg.rm_steps,
                                                              log_every=10), s.out / "reward",
                       max_len=s.sft.config.max_seq_len, min_gap=cfg.rm_min_gap, trim_padding=True)
    rm.eval().requires_grad_(False)
    per_prompt = prompt_pair_accuracy(rm, s.tok, pref_val, min_gap=cfg.rm_min_gap)
    # the same measure on as many training prompts: a wide gap is memorisation, not a reward model that generalises
    seen = prompt_pair_accuracy(rm, s.tok, pref_train[:len(pref_val)], min_gap=cfg.rm_min_gap)
    n_pairs = sum(len(r.pair_indices(cfg.rm_min_gap)) for r in pref_val)
    acc = bootstrap_mean(per_prompt, seed=s.ctx.seed) if per_prompt else None
    if acc is not None:
        s.rm_acc = acc.estimate
        train_acc = sum(seen) / max(1, len(seen))
        report.lesson("the reward model orders the policy's own held-out answers like the labeller (>= 0.8)",
                      ("pairwise accuracy, held-out own samples", acc), ("chance", 0.5), effect=acc, target=0.8,
                      effect_name="accuracy",
                      note=f"{n_pairs} untied pairs of {len(per_prompt)} held-out prompts (greedy + "
                           f"{cfg.pref_samples} samples each, ranked by the oracle); mean over prompts of each "
                           f"prompt's pair accuracy, bootstrap over prompts; on {len(seen)} training prompts "
                           f"{train_acc:.2f}. Most pairs differ in correctness (a digit slip in a sum, a wrong coin "
                           "state), which the reward model has to verify from the answer alone; the courteous "
                           "closing pairs it orders easily")
        _rm_accuracy_by_kind(s, report, rm, pref_val)
    s.tick("reward model", t0)
    return rm


def _rm_accuracy_by_kind(s: Setup, report: StageReport, rm: nn.Module, pref_val: list) -> None:
    """The held-out pair accuracy split by what a pair differs in: correctness (one answer right, one wrong, or
    graded similarity) vs only the rest of the oracle (courtesy, shown steps, length)."""
    from genforge.train.reward import prompt_pair_accuracy
    from genforge.world.preferences import oracle_parts

    rows = {r["prompt"]: r for r in s.train_rows}
    graded: dict[tuple[str, str], float | None] = {}  # (prompt, completion) -> the oracle's "correct", once each

    def correct_of(r, k: int) -> float | None:
        key = (r.prompt, r.completions[k])
        if key not in graded:
            row = rows.get(r.prompt)
            graded[key] = None if row is None else oracle_parts(row["prompt"], r.completions[k], row)["correct"]
        return graded[key]

    def same_correct(r, a: int, b: int) -> bool:
        ca = correct_of(r, a)
        return ca is not None and ca == correct_of(r, b)

    acc = {}
    for kind, keep in (("style", same_correct), ("correctness", lambda r, a, b: not same_correct(r, a, b))):
        per = prompt_pair_accuracy(rm, s.tok, pref_val, min_gap=s.cfg.rm_min_gap, keep=keep)
        acc[kind] = (sum(per) / len(per), len(per)) if per else (float("nan"), 0)
    report.row("reward model accuracy, pairs that differ only in style / in correctness",
               f"{acc['style'][0]:.2f} / {acc['correctness'][0]:.2f}", 0.5,
               f"held-out own samples; {acc['style'][1]} / {acc['correctness'][1]} prompts with such pairs. A reward "
               "model this size learns what it can see in the answer (a courteous closing, the steps shown) and "
               "not whether a worked sum is right")


def dpo_step(s: Setup, report: StageReport, pref_train: list) -> nn.Module:
    """DPO on best-vs-worst of each ranked prompt (own samples)."""
    from genforge.train.dpo import train_dpo
    from genforge.train.reward import best_vs_worst
    from genforge.train.rollout import make_policy

    t0 = time.perf_counter()
    cfg = s.cfg
    policy = make_policy(copy.deepcopy(s.sft))
    pairs = best_vs_worst(pref_train)
    train_dpo(policy, s.tok, pairs, [], s.train_cfg(cfg.dpo_micro_batch, cfg.dpo_lr, max_steps=cfg.dpo_steps,
                                                    log_every=10), s.out / "dpo", beta=cfg.dpo_beta,
              max_len=s.sft.config.max_seq_len, trim_padding=True)
    policy.eval()
    report.note(f"**DPO** trained on {len(pairs)} best-vs-worst pairs of the SFT model's own answers (oracle-ranked), "
                f"beta {cfg.dpo_beta:g}, lr {cfg.dpo_lr:g}, {cfg.dpo_steps} steps of {cfg.dpo_micro_batch} pairs.")
    s.tick("dpo", t0)
    return policy


def ppo_settings(cfg: Config) -> dict:
    """The PPO run's settings, as the overopt stage repeats them (with its own KL coefficient)."""
    return {"rollouts": cfg.ppo_rollouts, "rollout_prompts": cfg.ppo_rollout_prompts,
            "micro_batch": cfg.ppo_micro_batch, "lr": cfg.ppo_lr, "max_new_tokens": cfg.max_new_tokens,
            "length_bias": cfg.rm_length_bias, "gold_prompts": cfg.ppo_gold_prompts}


def ppo_step(s: Setup, rm: nn.Module, kl_coef: float, name: str,
             settings: dict | None = None) -> tuple[nn.Module, list[dict], dict]:
    """PPO against the reward model (the proxy) with KL coefficient `kl_coef`, watched by the oracle (gold):
    (policy, per-rollout history with each response's gold score, the settings used). The checkpoint goes to
    s.out/name; `settings` default to this stage's (`ppo_settings`)."""
    from genforge.text import detokenize
    from genforge.train.ppo import PPOConfig, rm_reward, train_ppo
    from genforge.train.rollout import make_policy
    from genforge.world.preferences import oracle_score

    st = settings or ppo_settings(s.cfg)
    ppo_prompts = [r for r in s.train_rows if r.get("task") not in s.heldout]
    proxy = length_bias(rm_reward(rm, s.tok.pad_id, trim=True), st["length_bias"])
    gold: list[list[float]] = []  # per rollout, the oracle score of every response
    # Gao et al. measure gold on held-out prompts: the same ones after every rollout (greedy), so the curve is
    # paired across rollouts; each rollout's own prompts differ (task mix), which left the first runs' curves noise
    n_fixed = st.get("gold_prompts", 0)
    fixed = s.eval_rows[::max(1, len(s.eval_rows) // n_fixed)][:n_fixed] if n_fixed else []
    gold_fixed: list[list[float]] = []

    def monitor(prompts, responses, rows):
        g = [oracle_score(r["prompt"], detokenize(s.tok, [t for t in x if t != s.tok.end_id]), r)
             for r, x in zip(rows, responses)]
        gold.append(g)
        out = {"oracle": sum(g) / max(len(g), 1)}
        if fixed:
            was = policy.training
            policy.eval()
            gf = oracle(fixed, answer(policy, s.tok, fixed, st["max_new_tokens"], trim=True))
            policy.train(was)
            gold_fixed.append(gf)
            out["oracle_fixed"] = sum(gf) / len(gf)
        return out

    t0 = time.perf_counter()
    policy = make_policy(copy.deepcopy(s.sft))
    pcfg = PPOConfig(rollouts=st["rollouts"], rollout_prompts=st["rollout_prompts"], epochs=2,
                     max_new_tokens=st["max_new_tokens"], kl_coef=kl_coef,
                     train=s.train_cfg(st["micro_batch"], st["lr"]))
    _, history = train_ppo(policy, s.tok, ppo_prompts, proxy, pcfg, s.out / name, monitor_fn=monitor)
    for i, (h, g) in enumerate(zip(history, gold)):
        h["gold"] = g
        if gold_fixed:
            h["gold_fixed"] = gold_fixed[i]
    s.tick(name, t0)
    return policy.eval(), history, {**st, "kl_coef": kl_coef}


def final_eval(s: Setup, report: StageReport, models: dict[str, nn.Module],
               base: Judged) -> tuple[dict[str, float], dict[str, float]]:
    """Win rate against the SFT model under the oracle (lesson rows), mean oracle, correct rate and KL."""
    from genforge.eval.stats import bootstrap_mean, bootstrap_win_rate

    t0 = time.perf_counter()
    seed = s.ctx.seed
    kl_rows = s.eval_rows[:s.cfg.kl_items]
    wins, kls = {}, {}
    mean = lambda v: sum(v) / max(1, len(v))  # noqa: E731
    for label, m in models.items():
        j = judge(s, m)
        wr = bootstrap_win_rate(j.scores, base.scores, seed=seed)
        wins[label] = wr.estimate
        kls[label] = kl_to_reference(m, s.sft, s.tok, kl_rows, s.cfg.max_new_tokens, seed=seed + 5)
        report.lesson(f"{label} beats the {START} model under the oracle",
                      ("mean oracle score", bootstrap_mean(j.scores, seed=seed)),
                      (f"{START} model", bootstrap_mean(base.scores, seed=seed)), effect=wr, target=0.5,
                      effect_name="win rate",
                      note=f"{len(s.eval_rows)} held-out prompts, greedy, ties count half; correct rate "
                           f"{mean(j.correct):.3f} vs {mean(base.correct):.3f}; KL to reference {kls[label]:.2f} "
                           "nats/answer")
        report.row(f"{label}: correct rate (oracle)", mean(j.correct), mean(base.correct),
                   f"baseline = {START} model; mean oracle {mean(j.scores):.3f} vs {mean(base.scores):.3f}")
    s.tick("final eval", t0)
    return wins, kls
