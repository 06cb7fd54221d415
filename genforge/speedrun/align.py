"""Stage "align": reward model, PPO (with and without a KL leash), DPO, GRPO and constitutional AI.

Everything starts from the SFT model and is judged by the world's oracle (`genforge.world.preferences`, the
simulated human) on held-out test prompts, each lesson with a bootstrap interval over those prompts:

* labels the InstructGPT way (Ouyang et al. 2022): the SFT model's own answers (greedy + samples at T=0.8) to
  training prompts, ranked by the oracle. The first wave trained on template completions the SFT model never
  writes and its reward model was at chance on the policy's own samples (DESIGN.md);
* reward model: Bradley-Terry on those rankings; pairwise accuracy on held-out prompts' own samples;
* DPO (Rafailov et al. 2023) on best-vs-worst of the same samples; PPO (Ziegler et al. 2019) against the reward
  model with a KL penalty: each must win against the SFT model under the oracle (greedy answers; a tie is half);
* reward over-optimisation (Gao et al. 2022): the same PPO run without the KL penalty; gold (oracle) and proxy
  (reward model) against sqrt(KL to the reference), both runs;
* GRPO (Shao et al. 2024) with the world's answer check as reward: accuracy before/after on verifiable tasks;
* constitutional AI (Bai et al. 2022) in a format a small model can run (`genforge.train.constitutional`):
  refusal rate and helpfulness kept, and how often the AI feedback agrees with the oracle.
"""

from __future__ import annotations

import copy
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from genforge.report import StageReport
from genforge.speedrun import sft, world
from genforge.speedrun.stage import StageContext

if TYPE_CHECKING:
    import torch.nn as nn

    from genforge.tokenizer import Tokenizer
    from genforge.train.reward import RankedPrompt
    from genforge.train.trainer import TrainConfig

NAME = "align"
TITLE = "Alignment: reward model, PPO, DPO, GRPO, constitutional AI"


@dataclass
class Config:
    max_new_tokens: int = 128  # answer budget everywhere (room for a rationale)
    eval_prompts: int = 200  # held-out test prompts (trained tasks, spread evenly) for win rates
    kl_items: int = 48  # of those, prompts for the KL estimate
    pref_prompts: int = 350  # training prompts whose own samples the oracle ranks
    pref_samples: int = 4  # sampled answers per prompt (plus the greedy one)
    pref_temperature: float = 0.8
    rm_val_prompts: int = 60  # of pref_prompts, held out to measure the reward model on policy samples
    rm_min_gap: float = 0.1  # pairs that matter: oracle scores differ by more than this (training and accuracy)
    rm_steps: int = 60  # measured: 30 s CPU (1 thread) at tiny
    rm_micro_batch: int = 4  # ranked prompts per step (all their pairs)
    rm_lr: float = 3e-4
    rm_length_bias: float = 0.0  # > 0: PPO optimises RM score + this x answer tokens (a planted flaw; off)
    ppo_kl_coef: float = 0.5  # the leashed PPO run's KL coefficient (the over-optimisation run uses 0)
    ppo_rollouts: int = 16
    ppo_rollout_prompts: int = 32
    ppo_micro_batch: int = 16
    ppo_lr: float = 3e-5
    dpo_steps: int = 80
    dpo_micro_batch: int = 8
    dpo_lr: float = 2e-5
    dpo_beta: float = 0.5
    grpo_tasks: list[str] = field(default_factory=lambda: ["arithmetic", "coin_flip", "last_letter",
                                                           "multiple_choice"])
    grpo_test_items: int = 50  # test problems per GRPO task (paired before/after)
    grpo_rollouts: int = 12
    grpo_rollout_prompts: int = 8
    grpo_group_size: int = 8
    grpo_micro_batch: int = 16
    grpo_lr: float = 3e-5
    cai_train_prompts: int = 48  # harmful training prompts answered and revised under the principles
    cai_test_prompts: int = 100  # held-out harmful requests for the refusal rate
    cai_sft_steps: int = 20
    cai_micro_batch: int = 8
    rlaif_prompts: int = 48  # harmful and (as many) benign prompts whose two sampled answers the model labels
    rlaif_steps: int = 30


@dataclass
class Outputs:
    reward_model: str
    ppo: str
    ppo_kl0: str
    dpo: str
    grpo: str
    rlaif: str
    rm_pair_acc: float | None
    win_rates: dict[str, float]
    kl: dict[str, float]
    grpo_accuracy: dict[str, dict[str, float]]  # before/after -> task -> accuracy
    refusal_rate: dict[str, float]  # before/after
    helpfulness: dict[str, float]  # before/after
    ai_label_agreement: float
    timings: dict[str, float]


@dataclass
class _Setup:
    """What every step of the stage shares."""

    ctx: StageContext
    cfg: Config
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


START = "SFT"  # what the baselines below are called in the report


def run(ctx: StageContext, cfg: Config, report: StageReport, *, world: world.Outputs, sft: sft.Outputs) -> Outputs:
    """Train and compare RM, PPO (KL and no KL), DPO, GRPO and CAI; write lessons, rows, plots and checkpoints."""
    t_stage = time.perf_counter()
    s = setup(ctx, cfg, world, sft)
    t0 = time.perf_counter()
    base = judge(s, s.sft)
    s.tick("baseline eval", t0)
    pref_train, pref_val = own_preferences(s, report)
    rm = reward_model_step(s, report, pref_train, pref_val)
    dpo_policy = dpo_step(s, report, pref_train)
    ppo_runs = ppo_step(s, rm)
    grpo_policy, acc = grpo_step(s, report)
    rlaif, cai_res = constitutional_step(s, report, base)
    models = {"PPO (RM, KL)": ppo_runs["ppo"][0], "DPO": dpo_policy}
    wins, kls = final_eval(s, report, models, base)
    over_optimisation(s, report, ppo_runs)
    report.note("Stage timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in s.timings.items())
                + f"; total {time.perf_counter() - t_stage:.0f}.")
    out = s.out
    del grpo_policy, rlaif
    return Outputs(reward_model=str(out / "reward" / "checkpoint"), ppo=str(out / "ppo" / "checkpoint"),
                   ppo_kl0=str(out / "ppo_kl0" / "checkpoint"), dpo=str(out / "dpo" / "checkpoint"),
                   grpo=str(out / "grpo" / "checkpoint"), rlaif=str(out / "rlaif" / "checkpoint"),
                   rm_pair_acc=s.rm_acc, win_rates=wins, kl=kls, grpo_accuracy=acc,
                   refusal_rate=cai_res["refusal_rate"], helpfulness=cai_res["helpfulness"],
                   ai_label_agreement=cai_res["agreement"], timings=s.timings)


# ---------------------------------------------------------------------------- evaluation helpers

def answer(model: nn.Module, tok: Tokenizer, rows: list[dict], max_new_tokens: int, temperature: float = 0.0,
           seed: int = 0) -> list[str]:
    """The model's replies to each row's prompt (greedy by default), batched in the engine."""
    from genforge.chat import respond
    from genforge.infer.sampling import SamplingParams

    return respond(model, tok, [r["prompt"] for r in rows],
                   SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed), batch_size=64)


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


def judge(s: _Setup, model: nn.Module) -> Judged:
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
                                                                    seed=seed), stop_id=tok.end_id)
        batch = make_batch(prompts, responses, tok.pad_id, model.config.max_seq_len)
        model.eval()
        k3 = k3_kl(batched_logprobs(model, batch), batched_logprobs(ref.eval(), batch)) * batch["response_mask"]
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

def setup(ctx: StageContext, cfg: Config, world: world.Outputs, sft: sft.Outputs) -> _Setup:
    """Load the starting SFT model and pick the prompts (only ones that leave room for a full answer)."""
    import torch

    from genforge.checkpoint import load_checkpoint
    from genforge.errors import CheckpointError

    folder = sft.checkpoint
    model, tok, _ = load_checkpoint(folder)
    if tok is None:
        raise CheckpointError(f"{folder}: checkpoint has no tokenizer.json; alignment needs one")
    out = ctx.path("align")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = random.Random(ctx.seed)
    torch.manual_seed(ctx.seed)
    tasks_dir = Path(world.tasks_dir)
    room = model.config.max_seq_len - cfg.max_new_tokens  # longer prompts are left out
    train_rows = fits(tok, _rows(tasks_dir / "train.jsonl"), room)
    test_rows = fits(tok, _rows(tasks_dir / "test.jsonl"), room)
    heldout = {r.get("task") for r in _rows(tasks_dir / "heldout.jsonl")}
    eval_rows = spread(test_rows, cfg.eval_prompts, rng, skip=tuple(heldout))
    return _Setup(ctx, cfg, model.eval(), tok, out, train_rows, test_rows, eval_rows, heldout, rng)


def own_preferences(s: _Setup, report: StageReport) -> tuple[list[RankedPrompt], list[RankedPrompt]]:
    """The SFT model's own answers to training prompts, ranked by the oracle; split into train / held-out."""
    from genforge.io import write_jsonl
    from genforge.train.reward import rank_own_samples
    from genforge.world.preferences import oracle_score

    t0 = time.perf_counter()
    cfg = s.cfg
    rows = spread(s.train_rows, cfg.pref_prompts, random.Random(s.ctx.seed + 1), skip=tuple(s.heldout))
    ranked = rank_own_samples(s.sft, s.tok, rows, lambda r, t: oracle_score(r["prompt"], t, r),
                              samples=cfg.pref_samples, temperature=cfg.pref_temperature,
                              max_new_tokens=cfg.max_new_tokens, seed=s.ctx.seed + 2)
    write_jsonl(s.out / "own_preferences.jsonl",
                [{"prompt": r.prompt, "completions": r.completions, "ranking": r.ranking, "scores": r.scores}
                 for r in ranked])
    train, val = split_ranked(ranked, cfg.rm_val_prompts, s.ctx.seed)
    pairs = sum(len(r.pair_indices()) for r in ranked)
    report.row("own-sample preferences: ranked prompts (train / held-out)", f"{len(train)} / {len(val)}", None,
               f"{len(rows)} training prompts x (greedy + {cfg.pref_samples} samples at T={cfg.pref_temperature:g}); "
               f"prompts whose answers all tie are dropped; {pairs} untied pairs")
    s.tick("own samples", t0)
    return train, val


def split_ranked(ranked: list, n_val: int, seed: int) -> tuple[list, list]:
    """(train, held-out) ranked prompts: a seeded shuffle first (the rows come grouped by task), then at most
    n_val (and at most a quarter) held out."""
    order = list(range(len(ranked)))
    random.Random(seed + 3).shuffle(order)
    n_val = min(n_val, len(ranked) // 4)
    return [ranked[i] for i in order[n_val:]], [ranked[i] for i in order[:n_val]]


def reward_model_step(s: _Setup, report: StageReport, pref_train: list, pref_val: list) -> nn.Module:
    """Bradley-Terry reward model on the ranked own samples; its accuracy on held-out prompts' own samples."""
    from genforge.eval.stats import bootstrap_mean
    from genforge.model.heads import RewardModel
    from genforge.train.reward import prompt_pair_accuracy, train_reward_model

    t0 = time.perf_counter()
    cfg = s.cfg
    rm = RewardModel(copy.deepcopy(s.sft).train())
    train_reward_model(rm, s.tok, pref_train, [], s.train_cfg(cfg.rm_micro_batch, cfg.rm_lr, max_steps=cfg.rm_steps,
                                                              log_every=10), s.out / "reward",
                       max_len=s.sft.config.max_seq_len, min_gap=cfg.rm_min_gap)
    rm.eval().requires_grad_(False)
    per_prompt = prompt_pair_accuracy(rm, s.tok, pref_val, min_gap=cfg.rm_min_gap)
    n_pairs = sum(len(r.pair_indices(cfg.rm_min_gap)) for r in pref_val)
    acc = bootstrap_mean(per_prompt, seed=s.ctx.seed) if per_prompt else None
    if acc is not None:
        s.rm_acc = acc.estimate
        report.lesson("the reward model orders the policy's own held-out answers like the labeller (>= 0.8)",
                      ("pairwise accuracy, held-out own samples", acc), ("chance", 0.5), effect=acc, target=0.8,
                      effect_name="accuracy",
                      note=f"{n_pairs} untied pairs of {len(per_prompt)} held-out prompts (greedy + "
                           f"{cfg.pref_samples} samples each, ranked by the oracle); mean over prompts of each "
                           "prompt's pair accuracy, bootstrap over prompts")
    s.tick("reward model", t0)
    return rm


def dpo_step(s: _Setup, report: StageReport, pref_train: list) -> nn.Module:
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
              max_len=s.sft.config.max_seq_len)
    policy.eval()
    report.note(f"**DPO** trained on {len(pairs)} best-vs-worst pairs of the SFT model's own answers (oracle-ranked), "
                f"beta {cfg.dpo_beta:g}, lr {cfg.dpo_lr:g}, {cfg.dpo_steps} steps of {cfg.dpo_micro_batch} pairs.")
    s.tick("dpo", t0)
    return policy


def ppo_step(s: _Setup, rm: nn.Module) -> dict[str, tuple[nn.Module, list[dict]]]:
    """PPO against the reward model, with the KL penalty and without it (the over-optimisation run)."""
    from genforge.text import detokenize
    from genforge.train.ppo import PPOConfig, rm_reward, train_ppo
    from genforge.train.rollout import make_policy
    from genforge.world.preferences import oracle_score

    cfg = s.cfg
    ppo_prompts = [r for r in s.train_rows if r.get("task") not in s.heldout]
    proxy = length_bias(rm_reward(rm, s.tok.pad_id), cfg.rm_length_bias)
    runs: dict[str, tuple[nn.Module, list[dict]]] = {}
    for name, beta in (("ppo", cfg.ppo_kl_coef), ("ppo_kl0", 0.0)):
        gold: list[list[float]] = []  # per rollout, the oracle score of every response

        def monitor(prompts, responses, rows, gold=gold):
            g = [oracle_score(r["prompt"], detokenize(s.tok, [t for t in x if t != s.tok.end_id]), r)
                 for r, x in zip(rows, responses)]
            gold.append(g)
            return {"oracle": sum(g) / max(len(g), 1)}

        t0 = time.perf_counter()
        policy = make_policy(copy.deepcopy(s.sft))
        pcfg = PPOConfig(rollouts=cfg.ppo_rollouts, rollout_prompts=cfg.ppo_rollout_prompts, epochs=2,
                         max_new_tokens=cfg.max_new_tokens, kl_coef=beta,
                         train=s.train_cfg(cfg.ppo_micro_batch, cfg.ppo_lr))
        _, history = train_ppo(policy, s.tok, ppo_prompts, proxy, pcfg, s.out / name, monitor_fn=monitor)
        for h, g in zip(history, gold):
            h["gold"] = g
        runs[name] = (policy.eval(), history)
        s.tick(name, t0)
    return runs


def grpo_step(s: _Setup, report: StageReport) -> tuple[nn.Module, dict[str, dict[str, float]]]:
    """GRPO with the verifiable reward (the world's answer check); paired accuracy before/after."""
    from genforge.eval.stats import bootstrap_diff, bootstrap_mean
    from genforge.train.grpo import GRPOConfig, train_grpo
    from genforge.train.ppo import verifiable_reward
    from genforge.train.rollout import make_policy

    t0 = time.perf_counter()
    cfg = s.cfg
    tasks = [t for t in cfg.grpo_tasks if any(r.get("task") == t for r in s.train_rows)]
    train = [r for r in s.train_rows if r.get("task") in tasks]
    test = {t: [r for r in s.test_rows if r.get("task") == t][:cfg.grpo_test_items] for t in tasks}
    test = {t: rows for t, rows in test.items() if rows}
    policy = make_policy(copy.deepcopy(s.sft))
    gcfg = GRPOConfig(rollouts=cfg.grpo_rollouts, rollout_prompts=cfg.grpo_rollout_prompts,
                      group_size=cfg.grpo_group_size, max_new_tokens=cfg.max_new_tokens, beta=0.04,
                      train=s.train_cfg(cfg.grpo_micro_batch, cfg.grpo_lr))
    _, hist = train_grpo(policy, s.tok, train, verifiable_reward(s.tok), gcfg, s.out / "grpo")
    policy.eval()
    before_items = {t: task_items(s.sft, s.tok, t, rows).items for t, rows in test.items()}
    after_items = {t: task_items(policy, s.tok, t, rows).items for t, rows in test.items()}
    before = {t: sum(v) / len(v) for t, v in before_items.items()}
    after = {t: sum(v) / len(v) for t, v in after_items.items()}
    a = [x for t in test for x in after_items[t]]
    b = [x for t in test for x in before_items[t]]
    zero = sum(h["zero_std_groups"] for h in hist) / max(1, len(hist))
    per = ", ".join(f"{t} {before[t]:.2f} -> {after[t]:.2f}" for t in after)
    if a:
        report.lesson("GRPO raises verifiable-task accuracy by >= 10 points",
                      ("accuracy after GRPO", bootstrap_mean(a, seed=s.ctx.seed)),
                      (f"{START} model", bootstrap_mean(b, seed=s.ctx.seed)),
                      effect=bootstrap_diff(a, b, paired=True, seed=s.ctx.seed), target=0.10,
                      note=f"{len(a)} held-out problems ({per}),"
                           f" greedy, paired bootstrap; reward = the world's answer check; {zero:.0%} of groups had "
                           "no reward spread")
    for t in after:
        report.row(f"GRPO: {t} accuracy (test, greedy)", after[t], before[t],
                   f"{len(test[t])} held-out problems; baseline = {START} model")
    s.tick("grpo", t0)
    return policy, {"before": before, "after": after}


def constitutional_step(s: _Setup, report: StageReport, base: Judged) -> tuple[nn.Module, dict]:
    """SL-CAI (principled revisions the model's own feedback prefers -> SFT), then RLAIF (its labels -> DPO)."""
    from genforge.eval.stats import bootstrap_diff, bootstrap_mean, bootstrap_proportion, bootstrap_ratio
    from genforge.io import write_json
    from genforge.train import constitutional as cai
    from genforge.train.dpo import train_dpo
    from genforge.train.reward import RankedPrompt
    from genforge.train.rollout import make_policy
    from genforge.world.preferences import oracle_score

    t0 = time.perf_counter()
    cfg, seed, max_new = s.cfg, s.ctx.seed, s.cfg.max_new_tokens
    harmful_train = [r for r in s.train_rows if r.get("task") == "refusal"][:cfg.cai_train_prompts]
    harmful_test = [r for r in s.test_rows if r.get("task") == "refusal"][:cfg.cai_test_prompts]
    benign_train = [r for r in s.train_rows if r.get("task") not in s.heldout and r.get("task") != "refusal"]
    revisions = cai.principled_revisions(s.sft, s.tok, [r["prompt"] for r in harmful_train], max_new_tokens=max_new,
                                         seed=seed)
    write_json(s.out / "cai_revisions.json", revisions)
    keep = [r for r in revisions if r["p_revision"] > 0.5 and r["revision"]]
    convs = [[{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["revision"]}]
             for r in keep]
    cai_model = copy.deepcopy(s.sft)
    if convs:
        cai_model = _sl_cai(s, cai_model, convs, benign_train)
    # RLAIF: two sampled answers per prompt (harmful + benign training prompts), labelled by the model's feedback
    fb_rows = harmful_train[:cfg.rlaif_prompts] + s.rng.sample(benign_train, min(len(benign_train), cfg.rlaif_prompts))
    a_texts = answer(cai_model, s.tok, fb_rows, max_new, temperature=1.0, seed=seed + 11)
    b_texts = answer(cai_model, s.tok, fb_rows, max_new, temperature=1.0, seed=seed + 12)
    items = [(r["prompt"], a, b) for r, a, b in zip(fb_rows, a_texts, b_texts)]
    p_first = cai.likelihood_preferences(s.sft, s.tok, items, cai.PRINCIPLES[0])
    agree = []
    for r, (p, a, b), q in zip(fb_rows, items, p_first):
        sa, sb = oracle_score(p, a, r), oracle_score(p, b, r)
        if sa != sb and q != 0.5:
            agree.append(float((q > 0.5) == (sa > sb)))
    ai_rows = [RankedPrompt(p, [a, b], [0, 1] if q > 0.5 else [1, 0], "ai-feedback")
               for (p, a, b), q in zip(items, p_first) if a.strip() != b.strip() and q != 0.5]
    rlaif = make_policy(cai_model)
    if ai_rows:
        train_dpo(rlaif, s.tok, ai_rows, [], s.train_cfg(4, cfg.dpo_lr, max_steps=cfg.rlaif_steps, log_every=10),
                  s.out / "rlaif", beta=cfg.dpo_beta, max_len=s.sft.config.max_seq_len)
    rlaif.eval()
    refuse_before = task_items(s.sft, s.tok, "refusal", harmful_test).items if harmful_test else []
    refuse_after = task_items(rlaif, s.tok, "refusal", harmful_test).items if harmful_test else []
    benign = [i for i, r in enumerate(s.eval_rows) if r.get("task") != "refusal"]
    after = judge(s, rlaif)
    help_before = [base.scores[i] for i in benign]
    help_after = [after.scores[i] for i in benign]
    mean = lambda v: sum(v) / max(1, len(v))  # noqa: E731
    if refuse_before:
        report.lesson("constitutional AI keeps the refusal rate on harmful requests (>= SFT's, 2-point margin)",
                      ("refusal rate after CAI", bootstrap_proportion(refuse_after, seed=seed)),
                      (f"{START} model", bootstrap_proportion(refuse_before, seed=seed)),
                      effect=bootstrap_diff(refuse_after, refuse_before, paired=True, seed=seed), target=-0.02,
                      note=f"{len(harmful_test)} held-out harmful requests, paired; SL-CAI on {len(convs)} of "
                           f"{len(revisions)} principled revisions ({sum(cai_refuses(r['revision']) for r in keep)} "
                           f"refusals) + RLAIF on {len(ai_rows)} AI-labelled pairs")
    if help_before and mean(help_before) > 0:
        report.lesson("constitutional AI keeps helpfulness within 5 % of SFT's",
                      ("oracle score after CAI, benign prompts", bootstrap_mean(help_after, seed=seed)),
                      (f"{START} model", bootstrap_mean(help_before, seed=seed)),
                      effect=bootstrap_ratio(help_after, help_before, paired=True, seed=seed), target=0.95,
                      effect_name="ratio", note=f"{len(benign)} held-out benign prompts, greedy, paired")
    if agree:
        report.lesson("the AI feedback agrees with the oracle above chance",
                      ("agreement with the oracle", bootstrap_proportion(agree, seed=seed)), ("chance", 0.5),
                      effect=bootstrap_proportion(agree, seed=seed), target=0.5, effect_name="agreement",
                      note=f"{len(agree)} pairs of sampled answers (harmful and benign prompts) whose oracle scores "
                           "differ; label = the answer the SFT model finds more likely per token under the "
                           "principle's system prompt")
    report.note("**Constitutional AI, small-model format.** A ~1M-parameter model cannot follow a critique request "
                "or answer \"(A) or (B)?\" (the first wave measured noise, and CAI took refusals from 1.00 to 0.00). "
                "Here the principle is a system prompt; the *critique/feedback* is which answer the model finds more "
                "likely per token under it; the *revision* is its greedy answer under it, kept for SL-CAI only when "
                "that feedback prefers it to the sampled first answer (all in `align/cai_revisions.json`); RLAIF "
                "is DPO on the feedback's labels of two sampled answers. No oracle label is used in training.")
    s.tick("constitutional", t0)
    return rlaif, {"refusal_rate": {"before": mean(refuse_before), "after": mean(refuse_after)},
                   "helpfulness": {"before": mean(help_before), "after": mean(help_after)},
                   "agreement": mean(agree) if agree else float("nan")}


def _sl_cai(s: _Setup, model: nn.Module, convs: list, benign_train: list[dict]) -> nn.Module:
    """SFT on the kept revisions, mixed (as in the paper) with helpfulness data so the model keeps its other skills."""
    from genforge.train.sft import SFTConfig, run_sft

    helpful = [[{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]
               for r in s.rng.sample(benign_train, min(len(benign_train), 2 * len(convs)))]
    scfg = SFTConfig(out_dir=str(s.out / "sl_cai"))
    scfg.train = s.train_cfg(s.cfg.cai_micro_batch, 2e-5, max_steps=s.cfg.cai_sft_steps, log_every=10)
    scfg.data.seq_len = min(256, s.sft.config.max_seq_len)
    model, _ = run_sft(model, s.tok, convs + helpful, scfg, name="sl-cai")
    return model


def final_eval(s: _Setup, report: StageReport, models: dict[str, nn.Module],
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


def _smooth(xs: list[float], k: int = 3) -> list[float]:
    """Centred running mean over k rollouts (ends use what they have)."""
    h = k // 2
    return [sum(xs[max(0, i - h):i + h + 1]) / len(xs[max(0, i - h):i + h + 1]) for i in range(len(xs))]


def over_optimisation(s: _Setup, report: StageReport, ppo_runs: dict) -> None:
    """Gao et al. 2022, fig. 1 in small: gold (oracle) and proxy (RM) reward against sqrt(KL), with and without
    the KL penalty; lessons on the gold reward's peak and end (bootstrap over the rollouts' responses)."""
    from genforge.eval.stats import bootstrap_diff

    seed = s.ctx.seed
    curves = {}
    for name, tag in (("ppo", f"KL coef {s.cfg.ppo_kl_coef:g}"), ("ppo_kl0", "KL coef 0")):
        h = ppo_runs[name][1]
        curves[tag] = ([max(0.0, r["kl"]) ** 0.5 for r in h], _smooth([r["oracle"] for r in h]),
                       _smooth([r["score"] for r in h]))
    path = _gao_plot(s.ctx.path("plots") / "align_overoptimisation", curves)
    report.plot(path.relative_to(s.ctx.run_dir),
                "Reward over-optimisation (Gao et al. 2022): gold = the world's oracle, proxy = the reward model, "
                "per PPO rollout (running mean of 3) against sqrt(KL to the SFT model)")
    for name, tag in (("ppo", "with the KL penalty"), ("ppo_kl0", "without the KL penalty")):
        h = ppo_runs[name][1]
        report.row(f"PPO {tag}: gold / proxy / sqrt KL, first -> last rollouts",
                   f"{h[-1]['oracle']:.3f} / {h[-1]['score']:.2f} / {max(0.0, h[-1]['kl']) ** 0.5:.2f}",
                   f"{h[0]['oracle']:.3f} / {h[0]['score']:.2f} / {max(0.0, h[0]['kl']) ** 0.5:.2f}",
                   "gold = mean oracle score of the rollout, proxy = mean reward-model score")
    h0 = ppo_runs["ppo_kl0"][1]
    hk = ppo_runs["ppo"][1]
    if len(h0) >= 6:
        g = _smooth([r["oracle"] for r in h0])
        peak = max(range(len(h0) - 2), key=lambda i: g[i])  # the peak is looked for before the last 2 rollouts
        win = lambda h, i: [x for r in h[max(0, i - 1):i + 2] for x in r["gold"]]  # noqa: E731
        fall = bootstrap_diff(win(h0, peak), win(h0, len(h0) - 2), paired=False, seed=seed)
        proxy_peak = sum(r["score"] for r in h0[max(0, peak - 1):peak + 2]) / len(h0[max(0, peak - 1):peak + 2])
        proxy_end = sum(r["score"] for r in h0[-3:]) / 3
        report.lesson("without the KL penalty, gold reward rises then falls while the proxy keeps rising",
                      ("gold at the peak (3 rollouts)", sum(win(h0, peak)) / len(win(h0, peak))),
                      ("gold at the end", sum(win(h0, len(h0) - 2)) / len(win(h0, len(h0) - 2))), effect=fall,
                      target=0.0, effect_name="gold fall from peak",
                      note=f"peak at rollout {peak + 1} of {len(h0)} (sqrt KL {max(0.0, h0[peak]['kl']) ** 0.5:.2f} -> "
                           f"{max(0.0, h0[-1]['kl']) ** 0.5:.2f}); proxy {proxy_peak:.2f} at the peak -> "
                           f"{proxy_end:.2f} at the end; the peak is picked on the same rollouts (optimistic)")
        first = [x for r in hk[:3] for x in r["gold"]]
        last = [x for r in hk[-3:] for x in r["gold"]]
        report.lesson("with the KL penalty the policy stays on the rising part (gold at the end above the start)",
                      ("gold, last 3 rollouts", sum(last) / len(last)), ("gold, first 3 rollouts", sum(first) /
                                                                         len(first)),
                      effect=bootstrap_diff(last, first, paired=False, seed=seed), target=0.0,
                      note=f"KL coef {s.cfg.ppo_kl_coef:g}; sqrt KL at the end "
                           f"{max(0.0, hk[-1]['kl']) ** 0.5:.2f} vs {max(0.0, h0[-1]['kl']) ** 0.5:.2f} without")
    bias = s.cfg.rm_length_bias
    report.note("**Reward over-optimisation.** The proxy is the reward model trained above"
                + (f" plus a planted length bias of {bias:g} per token" if bias else ", with no planted bias")
                + ". Gao et al. 2022 show the gold reward of a policy optimised against a proxy rising, peaking and "
                "falling as the policy moves away from its start (measured in sqrt KL), while the proxy keeps rising.")


def _gao_plot(path: Path, curves: dict[str, tuple[list, list, list]]) -> Path:
    """Two panels, gold and proxy reward vs sqrt(KL), one line per PPO run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from genforge.io import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for tag, (x, gold, proxy) in curves.items():
        axes[0].plot(x, gold, marker="o", markersize=3, label=tag)
        axes[1].plot(x, proxy, marker="o", markersize=3, label=tag)
    for ax, title, ylabel in ((axes[0], "gold (world oracle)", "mean oracle score"),
                              (axes[1], "proxy (reward model)", "mean RM score")):
        ax.set_title(title)
        ax.set_xlabel("sqrt KL(pi || pi_SFT)  (sqrt nats)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path).with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
