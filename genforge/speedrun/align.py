"""Stage "align": reward model, PPO (with and without a KL leash), DPO, GRPO and RLAIF on the tiny world.

Every aligned model starts from the SFT comparison's same-budget full fine-tune and is judged by the world's
oracle (`genforge.world.preferences.oracle_score`, the simulated human whose rankings the reward model learned
from) on held-out test prompts:

* reward model: held-out pairwise accuracy (chance = 0.5);
* win rate vs the SFT model (greedy answers, oracle scores; a tie counts half);
* KL to the SFT reference: mean over sampled answers of sum_t log pi/pi_ref (nats per answer);
* GRPO: task accuracy before/after (through `genforge.eval.score`, as the SFT and eval sections), with the
  world's answer check as the reward;
* reward hacking: PPO against the learned reward model with kl_coef 0 and > 0; the plot shows proxy reward,
  true (oracle) quality and KL per rollout for both;
* constitutional AI: refusal rate on held-out harmful requests and oracle helpfulness on benign prompts,
  before and after SL-CAI + RLAIF, and how often the AI feedback agrees with the oracle.
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
    from genforge.train.trainer import TrainConfig

NAME = "align"
TITLE = "Alignment: reward model, PPO, DPO, GRPO, constitutional AI"


@dataclass
class Config:
    max_new_tokens: int = 64  # answer budget of the policies (PPO rollouts, win rates, constitutional AI)
    grpo_max_new_tokens: int = 96  # answer budget of GRPO rollouts
    eval_per_task: int = 6  # held-out test prompts per task for win rates
    kl_items: int = 32  # of those, prompts for the KL estimate
    rm_steps: int = 40  # reward-model steps
    rm_val_prompts: int = 30  # held-out ranked prompts (each gives up to 15 pairs)
    rm_length_bias: float = 0.05  # PPO optimises RM score + this x answer length (a deliberate, measurable flaw)
    ppo_kl_coef: float = 0.5  # the leashed PPO run's KL coefficient (the other run uses 0)
    ppo_rollouts: int = 16
    ppo_rollout_prompts: int = 16
    ppo_micro_batch: int = 8
    ppo_lr: float = 2e-4
    dpo_steps: int = 40
    dpo_val_prompts: int = 12
    dpo_lr: float = 5e-5
    dpo_beta: float = 0.1
    grpo_tasks: list[str] = field(default_factory=lambda: ["arithmetic", "coin_flip", "multiple_choice"])
    grpo_test_items: int = 20  # test problems per GRPO task for accuracy before/after
    grpo_rollouts: int = 8
    grpo_rollout_prompts: int = 6
    grpo_group_size: int = 8
    grpo_micro_batch: int = 16
    grpo_lr: float = 2e-4
    cai_train_prompts: int = 24  # harmful training prompts critiqued and revised
    cai_test_prompts: int = 20  # held-out harmful requests for the refusal rate
    cai_sft_steps: int = 20
    cai_micro_batch: int = 8
    rlaif_prompts: int = 16  # harmful and (as many) benign prompts labelled by the model itself
    rlaif_steps: int = 20


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
    """Train and compare RM, PPO (KL and no KL), DPO, GRPO and RLAIF; write rows, plots and checkpoints."""
    t_stage = time.perf_counter()
    s = setup(ctx, cfg, world, sft)
    t0 = time.perf_counter()
    sft_scores = oracle(s.eval_rows, answer(s.sft, s.tok, s.eval_rows, cfg.max_new_tokens))
    s.tick("baseline eval", t0)
    rm, rm_res, pref_train, pref_val = reward_model_step(s, report, Path(world.dir))
    ppo_runs = ppo_step(s, rm)
    dpo_policy = dpo_step(s, report, pref_train, pref_val)
    grpo_policy, acc = grpo_step(s, report)
    rlaif, cai_res = constitutional_step(s, report, sft_scores)
    models = {"PPO (RM, KL)": ppo_runs["ppo"][0], "PPO (RM, no KL)": ppo_runs["ppo_kl0"][0], "DPO": dpo_policy,
              "GRPO": grpo_policy, "RLAIF (CAI)": rlaif}
    wins, kls = final_eval(s, report, models, sft_scores)
    _plots(s, report, ppo_runs, wins)
    report.note("Stage timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in s.timings.items())
                + f"; total {time.perf_counter() - t_stage:.0f}.")
    out = s.out
    return Outputs(reward_model=str(out / "reward" / "checkpoint"), ppo=str(out / "ppo" / "checkpoint"),
                   ppo_kl0=str(out / "ppo_kl0" / "checkpoint"), dpo=str(out / "dpo" / "checkpoint"),
                   grpo=str(out / "grpo" / "checkpoint"), rlaif=str(out / "rlaif" / "checkpoint"),
                   rm_pair_acc=rm_res.get("val_pair_acc"), win_rates=wins, kl=kls, grpo_accuracy=acc,
                   refusal_rate=cai_res["refusal_rate"], helpfulness=cai_res["helpfulness"],
                   ai_label_agreement=cai_res["agreement"], timings=s.timings)


# ---------------------------------------------------------------------------- evaluation helpers

def answer(model: nn.Module, tok: Tokenizer, rows: list[dict], max_new_tokens: int, temperature: float = 0.0,
           seed: int = 0) -> list[str]:
    """The model's replies to each row's prompt (greedy by default), for the oracle to score."""
    from genforge.chat import respond
    from genforge.infer.sampling import SamplingParams

    return respond(model, tok, [r["prompt"] for r in rows],
                   SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed))


def oracle(rows: list[dict], texts: list[str]) -> list[float]:
    from genforge.world.preferences import oracle_score

    return [oracle_score(r["prompt"], t, r) for r, t in zip(rows, texts)]


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
    from genforge.eval.score import score_task_rows

    return score_task_rows(model, tok, task, rows).score


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


def length_bias(reward_fn, weight: float):
    """A documented exploit: reward + weight * (answer length in tokens). Real reward models drift toward
    rewarding length (Singhal et al. 2023); this makes that flaw explicit and measurable."""
    if weight == 0:
        return reward_fn

    def fn(prompts, responses, rows):
        return [s + weight * len(r) for s, r in zip(reward_fn(prompts, responses, rows), responses)]

    return fn


def _rows(path: Path) -> list[dict]:
    from genforge.io import read_jsonl

    return [obj for _, obj in read_jsonl(path, required=("prompt",))] if path.exists() else []


# ---------------------------------------------------------------------------- the steps

def setup(ctx: StageContext, cfg: Config, world: world.Outputs, sft: sft.Outputs) -> _Setup:
    """Load the starting model (the same-budget full fine-tune: measured, PPO's reward hacking and the KL leash
    show cleanly from it, while from the longer-trained chat model a PPO run this short moved the proxy reward
    within rollout noise, tried at lr 2e-4, 5e-4 and 1e-3) and pick the prompts."""
    import torch

    from genforge.checkpoint import load_checkpoint
    from genforge.errors import CheckpointError

    model, tok, _ = load_checkpoint(sft.align_base)
    if tok is None:
        raise CheckpointError(f"{sft.align_base}: checkpoint has no tokenizer.json; alignment needs one")
    out = ctx.path("align")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = random.Random(ctx.seed)
    torch.manual_seed(ctx.seed)
    tasks_dir = Path(world.tasks_dir)
    room = model.config.max_seq_len - max(cfg.max_new_tokens, cfg.grpo_max_new_tokens)  # longer prompts left out
    train_rows = fits(tok, _rows(tasks_dir / "train.jsonl"), room)
    test_rows = fits(tok, _rows(tasks_dir / "test.jsonl"), room)
    heldout = {r.get("task") for r in _rows(tasks_dir / "heldout.jsonl")}
    eval_rows = per_task(test_rows, cfg.eval_per_task, rng, skip=tuple(heldout))
    return _Setup(ctx, cfg, model, tok, out, train_rows, test_rows, eval_rows, heldout, rng)


def reward_model_step(s: _Setup, report: StageReport, world_dir: Path):
    """A reward model on the world's ranked preferences; its held-out pairwise accuracy."""
    from genforge.model.heads import RewardModel
    from genforge.train.reward import read_preferences, split_holdout, train_reward_model

    t0 = time.perf_counter()
    prefs = read_preferences(world_dir / "preferences.jsonl")
    pref_train, pref_val = split_holdout(prefs, 0.15, s.ctx.seed)
    pref_val = pref_val[:s.cfg.rm_val_prompts]
    rm = RewardModel(copy.deepcopy(s.sft).train())
    rm_res = train_reward_model(rm, s.tok, pref_train, pref_val,
                                s.train_cfg(2, 1e-3, max_steps=s.cfg.rm_steps, log_every=5), s.out / "reward",
                                max_len=s.sft.config.max_seq_len)
    rm.eval().requires_grad_(False)
    report.row("reward model: held-out pairwise accuracy", rm_res.get("val_pair_acc"), 0.5,
               f"{rm_res.get('val_pairs')} held-out pairs from {len(pref_val)} ranked prompts; baseline = chance")
    s.tick("reward model", t0)
    return rm, rm_res, pref_train, pref_val


def ppo_step(s: _Setup, rm: nn.Module) -> dict[str, tuple[nn.Module, list[dict]]]:
    """PPO against the (length-biased) reward model, with and without the KL leash: reward hacking."""
    from genforge.text import detokenize
    from genforge.train.ppo import PPOConfig, rm_reward, train_ppo
    from genforge.train.rollout import make_policy
    from genforge.world.preferences import oracle_score

    ppo_prompts = [r for r in s.train_rows if r.get("task") not in s.heldout]
    proxy = length_bias(rm_reward(rm, s.tok.pad_id), s.cfg.rm_length_bias)

    def monitor(prompts, responses, rows):
        return {"oracle": sum(oracle_score(r["prompt"], detokenize(s.tok, x), r) for r, x in zip(rows, responses))
                / max(len(rows), 1)}

    runs: dict[str, tuple[nn.Module, list[dict]]] = {}
    for name, beta in (("ppo", s.cfg.ppo_kl_coef), ("ppo_kl0", 0.0)):
        t0 = time.perf_counter()
        policy = make_policy(copy.deepcopy(s.sft))
        pcfg = PPOConfig(rollouts=s.cfg.ppo_rollouts, rollout_prompts=s.cfg.ppo_rollout_prompts, epochs=2,
                         max_new_tokens=s.cfg.max_new_tokens, kl_coef=beta,
                         train=s.train_cfg(s.cfg.ppo_micro_batch, s.cfg.ppo_lr))
        _, history = train_ppo(policy, s.tok, ppo_prompts, proxy, pcfg, s.out / name, monitor_fn=monitor)
        runs[name] = (policy.eval(), history)
        s.tick(name, t0)
    return runs


def dpo_step(s: _Setup, report: StageReport, pref_train: list, pref_val: list) -> nn.Module:
    """DPO on the same preferences; its held-out preference accuracy."""
    from genforge.train.dpo import train_dpo
    from genforge.train.rollout import make_policy

    t0 = time.perf_counter()
    policy = make_policy(copy.deepcopy(s.sft))
    res = train_dpo(policy, s.tok, pref_train, pref_val[:s.cfg.dpo_val_prompts],
                    s.train_cfg(4, s.cfg.dpo_lr, max_steps=s.cfg.dpo_steps, log_every=5), s.out / "dpo",
                    beta=s.cfg.dpo_beta, max_len=s.sft.config.max_seq_len)
    policy.eval()
    report.row("DPO: held-out preference accuracy", res.get("val_pref_acc"), 0.5,
               f"implicit reward beta*log(pi/pi_ref) orders held-out pairs; margin {res.get('val_margin', 0):.2f}")
    s.tick("dpo", t0)
    return policy


def grpo_step(s: _Setup, report: StageReport) -> tuple[nn.Module, dict[str, dict[str, float]]]:
    """GRPO with the verifiable reward (the world's answer check); accuracy before/after.

    Arithmetic is the task the issue names, but the tiny SFT model gets ~0 % of the multi-step problems right,
    so a group of G answers almost never holds a correct one and GRPO has no signal there. The rollouts
    therefore mix in the other tasks with checkable answers; accuracy is reported for both."""
    from genforge.train.grpo import GRPOConfig, train_grpo
    from genforge.train.ppo import verifiable_reward
    from genforge.train.rollout import make_policy

    t0 = time.perf_counter()
    tasks = s.cfg.grpo_tasks
    train = [r for r in s.train_rows if r.get("task") in tasks]
    test = {t: [r for r in s.test_rows if r.get("task") == t][:s.cfg.grpo_test_items] for t in tasks}
    policy = make_policy(copy.deepcopy(s.sft))
    gcfg = GRPOConfig(rollouts=s.cfg.grpo_rollouts, rollout_prompts=s.cfg.grpo_rollout_prompts,
                      group_size=s.cfg.grpo_group_size, max_new_tokens=s.cfg.grpo_max_new_tokens, beta=0.04,
                      train=s.train_cfg(s.cfg.grpo_micro_batch, s.cfg.grpo_lr))
    _, hist = train_grpo(policy, s.tok, train, verifiable_reward(s.tok), gcfg, s.out / "grpo")
    policy.eval()
    before = {t: task_accuracy(s.sft, s.tok, t, rows) for t, rows in test.items() if rows}
    after = {t: task_accuracy(policy, s.tok, t, rows) for t, rows in test.items() if rows}
    zero = sum(h["zero_std_groups"] for h in hist) / len(hist)
    report.row("GRPO: arithmetic accuracy (test, greedy)", after.get("arithmetic"), before.get("arithmetic"),
               f"{len(test.get('arithmetic', []))} held-out problems; baseline = {START} model")
    report.row(f"GRPO: accuracy on verifiable tasks ({', '.join(after)})", _mean(after), _mean(before),
               "mean over tasks, greedy; " + ", ".join(f"{t} {before[t]:.2f} -> {after[t]:.2f}" for t in after)
               + f"; reward = world answer check; {zero:.0%} of groups had no reward spread (no signal)")
    s.tick("grpo", t0)
    return policy, {"before": before, "after": after}


def _mean(d: dict[str, float]) -> float:
    return sum(d.values()) / max(1, len(d))


def constitutional_step(s: _Setup, report: StageReport, sft_scores: list[float]) -> tuple[nn.Module, dict]:
    """SL-CAI (critique -> revision -> SFT), then RLAIF (the model's own principle-based labels -> DPO)."""
    from genforge.train import constitutional as cai
    from genforge.train.dpo import train_dpo
    from genforge.train.rollout import make_policy
    from genforge.world.preferences import oracle_score

    t0 = time.perf_counter()
    cfg, seed, max_new = s.cfg, s.ctx.seed, s.cfg.max_new_tokens
    harmful_train = [r for r in s.train_rows if r.get("task") == "refusal"][:cfg.cai_train_prompts]
    harmful_test = [r for r in s.test_rows if r.get("task") == "refusal"][:cfg.cai_test_prompts]
    benign_test = [r for r in s.eval_rows if r.get("task") != "refusal"]
    benign_train = [r for r in s.train_rows if r.get("task") not in s.heldout and r.get("task") != "refusal"]
    cai_model = copy.deepcopy(s.sft)
    revisions = cai.critique_and_revise(cai_model, s.tok, [r["prompt"] for r in harmful_train],
                                        max_new_tokens=max_new, seed=seed)
    from genforge.io import write_json

    write_json(s.out / "cai_revisions.json", revisions)
    convs = cai.revision_conversations(revisions)
    if convs:
        cai_model = _sl_cai(s, cai_model, convs, benign_train)
    # RLAIF: two sampled answers per prompt (harmful + benign training prompts), labelled by the model
    fb_rows = harmful_train[:cfg.rlaif_prompts] + s.rng.sample(benign_train, min(len(benign_train), cfg.rlaif_prompts))
    a_texts = answer(cai_model, s.tok, fb_rows, max_new, temperature=1.0, seed=seed + 11)
    b_texts = answer(cai_model, s.tok, fb_rows, max_new, temperature=1.0, seed=seed + 12)
    items = [(r["prompt"], a, b) for r, a, b in zip(fb_rows, a_texts, b_texts)]
    p_first = cai.ai_preferences(cai_model, s.tok, items, cai.PRINCIPLES[:2])
    row_of = {r["prompt"]: r for r in fb_rows}
    agreement = cai.label_agreement(items, p_first, lambda p, x: oracle_score(p, x, row_of[p]))
    ai_rows = cai.label_pairs(items, p_first)
    rlaif = make_policy(cai_model)
    if ai_rows:
        train_dpo(rlaif, s.tok, ai_rows, [], s.train_cfg(4, 5e-5, max_steps=cfg.rlaif_steps, log_every=5),
                  s.out / "rlaif", beta=0.1, max_len=s.sft.config.max_seq_len)
    rlaif.eval()
    refuse_mid = refusal_rate(cai_model, s.tok, harmful_test) if convs else None
    refuse_before = refusal_rate(s.sft, s.tok, harmful_test)
    refuse_after = refusal_rate(rlaif, s.tok, harmful_test)
    benign_before = [x for r, x in zip(s.eval_rows, sft_scores) if r.get("task") != "refusal"]
    help_before = sum(benign_before) / max(1, len(benign_before))
    help_after = sum(oracle(benign_test, answer(rlaif, s.tok, benign_test, max_new))) / max(1, len(benign_test))
    n_refusing = sum(cai_refuses(r["revision"]) for r in revisions)
    report.row("constitutional AI: refusal rate on held-out harmful requests", refuse_after, refuse_before,
               f"{len(harmful_test)} requests; after SL-CAI ({len(convs)} self-revisions, {n_refusing} of them "
               f"refusals; {refuse_mid if refuse_mid is None else round(refuse_mid, 2)} after SL-CAI alone) + RLAIF "
               f"({len(ai_rows)} AI-labelled pairs); baseline = {START} model")
    report.row("constitutional AI: helpfulness on benign prompts (oracle)", help_after, help_before,
               f"{len(benign_test)} prompts, mean oracle score in [0, 1]; baseline = {START} model")
    report.row("constitutional AI: AI labels agreeing with the oracle", agreement, 0.5,
               "share of answer pairs where the model's own principle-based choice matches the simulated human")
    report.note(f"**Constitutional AI.** {n_refusing} of {len(revisions)} self-revisions of answers to harmful "
                "requests were refusals (all of them are in `align/cai_revisions.json`). Critiquing and revising on "
                "request is an ability of large models (Bai et al. used a 52B one, with few-shot examples, as here); "
                "a model of this size cannot follow the request, so SL-CAI trains on what it wrote instead, and the "
                f"AI preference labels agree with the oracle on {agreement:.0%} of pairs (50 % is chance). Read "
                "the rows above as the measurement of that gap, not as what the method does at scale.")
    s.tick("constitutional", t0)
    return rlaif, {"refusal_rate": {"before": refuse_before, "after": refuse_after},
                   "helpfulness": {"before": help_before, "after": help_after}, "agreement": agreement}


def _sl_cai(s: _Setup, model: nn.Module, convs: list, benign_train: list[dict]) -> nn.Module:
    """SFT on the self-revisions, mixed (as in the paper) with helpfulness data so the model keeps its other skills."""
    from genforge.train.sft import SFTConfig, run_sft

    helpful = [[{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]
               for r in s.rng.sample(benign_train, min(len(benign_train), len(convs)))]
    scfg = SFTConfig(out_dir=str(s.out / "sl_cai"))
    scfg.train = s.train_cfg(s.cfg.cai_micro_batch, 1e-4, max_steps=s.cfg.cai_sft_steps, log_every=5)
    scfg.data.seq_len = min(256, s.sft.config.max_seq_len)
    model, _ = run_sft(model, s.tok, convs + helpful, scfg, name="sl-cai")
    return model


def final_eval(s: _Setup, report: StageReport, models: dict[str, nn.Module],
               sft_scores: list[float]) -> tuple[dict[str, float], dict[str, float]]:
    """Win rate against the starting model (oracle) and KL to it, for every aligned model."""
    t0 = time.perf_counter()
    kl_rows = s.eval_rows[:s.cfg.kl_items]
    wins, kls = {}, {}
    for label, m in models.items():
        scores = oracle(s.eval_rows, answer(m, s.tok, s.eval_rows, s.cfg.max_new_tokens))
        wins[label] = win_rate(scores, sft_scores)
        kls[label] = kl_to_reference(m, s.sft, s.tok, kl_rows, s.cfg.max_new_tokens, seed=s.ctx.seed + 5)
        report.row(f"{label}: win rate vs {START} (oracle)", wins[label], 0.5,
                   f"{len(s.eval_rows)} held-out prompts, greedy; mean oracle {sum(scores) / len(scores):.3f} vs "
                   f"{sum(sft_scores) / len(sft_scores):.3f}; KL to reference {kls[label]:.2f} nats/answer")
    s.tick("final eval", t0)
    return wins, kls


def _plots(s: _Setup, report: StageReport, ppo_runs: dict, wins: dict[str, float]) -> None:
    from genforge.report import bar_plot, line_plot

    plots = s.ctx.path("plots")
    kl_coef, bias = s.cfg.ppo_kl_coef, s.cfg.rm_length_bias
    hist_kl, hist_0 = ppo_runs["ppo"][1], ppo_runs["ppo_kl0"][1]
    x = lambda h: list(range(1, len(h) + 1))  # noqa: E731 - rollout index
    runs = ((f"KL coef {kl_coef:g}", hist_kl), ("KL coef 0", hist_0))
    proxy_name = "RM + length bias" if bias else "RM"
    for key, fname, title, ylabel, caption in (
            ("score", "align_hacking_proxy", f"PPO: proxy reward ({proxy_name})", "mean proxy reward",
             f"Proxy reward ({proxy_name}) of each PPO rollout, with and without the KL penalty"),
            ("oracle", "align_hacking_oracle", "PPO: true quality (world oracle)", "mean oracle score (0-1)",
             "True quality (the world's oracle) of the same rollouts: where the proxy rises and this does not, "
             "the policy is hacking the reward model"),
            ("kl", "align_hacking_kl", "PPO: KL to the reference", "KL (nats per answer)",
             "KL(pi || pi_ref) per answer during PPO, with and without the penalty")):
        path = line_plot(plots / fname, {tag: (x(h), [r[key] for r in h]) for tag, h in runs}, title, "rollout",
                         ylabel)
        report.plot(path.relative_to(s.ctx.run_dir), caption)
    p3 = bar_plot(plots / "align_winrate", list(wins), list(wins.values()), f"Win rate vs {START} (oracle)",
                  "win rate")
    report.plot(p3.relative_to(s.ctx.run_dir), f"Win rate of each aligned model against the {START} model")

    def drift(h: list[dict]) -> str:
        k = max(1, min(3, len(h) // 3))
        avg = lambda key, part: sum(r[key] for r in part) / len(part)  # noqa: E731
        return (f"proxy {avg('score', h[:k]):.2f} -> {avg('score', h[-k:]):.2f}, oracle {avg('oracle', h[:k]):.3f} "
                f"-> {avg('oracle', h[-k:]):.3f}, KL {avg('kl', h[-k:]):.1f} nats (means of the first and last {k} "
                "rollouts)")

    bias_note = (f" The reward model was made exploitable on purpose: PPO optimised RM score + {bias:g} x answer "
                 "length in tokens (a length bias, the best-documented flaw of learned reward models), because "
                 "without it the drift of a run this short is hard to tell from the rollout-to-rollout noise "
                 "(`align.rm_length_bias=0` runs it that way)." if bias else "")
    report.note(f"**Reward hacking.** PPO with KL coef {kl_coef:g}: {drift(hist_kl)}. Without the penalty: "
                f"{drift(hist_0)}.{bias_note} Hacking shows as the proxy rising while the oracle does not "
                "(or falls), and more so, with more KL, when the leash is off.")
