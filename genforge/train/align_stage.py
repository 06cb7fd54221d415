"""Speedrun stage "align": reward model, PPO (with and without a KL leash), DPO, GRPO and RLAIF on the tiny world.

Every aligned model starts from the SFT model (or the pretrained one when SFT has not run) and is judged
by the world's oracle (`genforge.world.preferences.oracle_score`, the simulated human whose rankings the
reward model learned from) on held-out test prompts:

* reward model: held-out pairwise accuracy (chance = 0.5);
* win rate vs the SFT model (greedy answers, oracle scores; a tie counts half);
* KL to the SFT reference: mean over sampled answers of sum_t log pi/pi_ref (nats per answer);
* GRPO: arithmetic accuracy before/after, with the world's answer check as the reward;
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
from pathlib import Path

import torch
import torch.nn as nn

from genforge.checkpoint import load_checkpoint
from genforge.errors import CheckpointError
from genforge.io import read_jsonl, write_json
from genforge.report import StageReport, bar_plot, line_plot
from genforge.tokenizer import Tokenizer
from genforge.train.trainer import TrainConfig

# ---------------------------------------------------------------------------- evaluation helpers


def answer(model: nn.Module, tok: Tokenizer, rows: list[dict], max_new_tokens: int, temperature: float = 0.0,
           seed: int = 0) -> list[str]:
    """The model's replies to each row's prompt (greedy by default)."""
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


@torch.no_grad()
def kl_to_reference(model: nn.Module, ref: nn.Module, tok: Tokenizer, rows: list[dict], max_new_tokens: int,
                    seed: int = 0) -> float:
    """KL(pi || pi_ref) per answer (nats), on answers sampled from pi: per-token k3 estimates summed over the answer
    (unbiased like log pi/pi_ref, but never negative and with lower variance; Schulman 2020)."""
    from genforge.infer.sampling import SamplingParams
    from genforge.train.rl_losses import k3_kl
    from genforge.train.rollout import batched_logprobs, encode_prompt, make_batch, sample_responses

    prompts = [encode_prompt(tok, r["prompt"]) for r in rows]
    responses = sample_responses(model, prompts, SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0,
                                                                seed=seed), stop_id=tok.end_id)
    batch = make_batch(prompts, responses, tok.pad_id, model.config.max_seq_len)
    model.eval()
    k3 = k3_kl(batched_logprobs(model, batch), batched_logprobs(ref.eval(), batch)) * batch["response_mask"]
    return float(k3.sum(1).mean())


def task_accuracy(model: nn.Module, tok: Tokenizer, rows: list[dict], max_new_tokens: int) -> float:
    """Exact-match accuracy of greedy answers under the world's answer check."""
    from genforge.world.tasks import is_correct

    texts = answer(model, tok, rows, max_new_tokens)
    return sum(is_correct(r["task"], t, r["answer"]) for r, t in zip(rows, texts)) / max(len(rows), 1)


def cai_refuses(text: str) -> bool:
    from genforge.world.tasks import extract_answer

    return extract_answer("refusal", text) == "refuse"


def refusal_rate(model: nn.Module, tok: Tokenizer, rows: list[dict], max_new_tokens: int) -> float:
    return sum(map(cai_refuses, answer(model, tok, rows, max_new_tokens))) / max(len(rows), 1)


def _rows(path: Path) -> list[dict]:
    return [obj for _, obj in read_jsonl(path, required=("prompt",))] if path.exists() else []


def fits(tok: Tokenizer, rows: list[dict], limit: int) -> list[dict]:
    """Rows whose chat-formatted prompt has at most `limit` tokens (the rest would not fit the context)."""
    from genforge.train.rollout import encode_prompt

    return [r for r in rows if len(encode_prompt(tok, r["prompt"])) <= limit]


def _per_task(rows: list[dict], k: int, rng: random.Random, skip: tuple[str, ...] = ()) -> list[dict]:
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


# ---------------------------------------------------------------------------- the stage


def align_stage(ctx, report: StageReport) -> dict:
    """Train and compare RM, PPO (KL and no KL), DPO, GRPO and RLAIF; write rows, plots and checkpoints."""
    from genforge.model.heads import RewardModel
    from genforge.train import constitutional as cai
    from genforge.train.dpo import train_dpo
    from genforge.train.grpo import GRPOConfig, train_grpo
    from genforge.train.ppo import PPOConfig, rm_reward, train_ppo, verifiable_reward
    from genforge.train.reward import read_preferences, split_holdout, train_reward_model
    from genforge.train.rollout import make_policy
    from genforge.world.preferences import oracle_score

    t_stage = time.perf_counter()
    world = Path(ctx.need("world")["dir"])
    # alignment starts from the same-budget full-FT model of the SFT comparison: measured, PPO's reward
    # hacking and the KL leash show cleanly from it, while from the longer-trained chat model a PPO run this
    # short moved the proxy reward within rollout noise (tried at lr 2e-4, 5e-4 and 1e-3)
    sft_out = ctx.outputs.get("sft") or {}
    start = sft_out.get("align_base") or sft_out.get("checkpoint") or ctx.need("pretrain")["checkpoint"]
    start_name = "SFT" if ctx.outputs.get("sft") else "pretrained"
    sft, tok, _ = load_checkpoint(start)
    if tok is None:
        raise CheckpointError(f"{start}: checkpoint has no tokenizer.json; alignment needs one")
    out = ctx.path("align")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    seed, rng = ctx.seed, random.Random(ctx.seed)
    torch.manual_seed(seed)
    progress = ctx.cfg.progress

    def train_cfg(micro: int, lr: float, **kw) -> TrainConfig:
        base = dict(micro_batch=micro, warmup_steps=0, lr=lr, min_lr_ratio=1.0, weight_decay=0.0, eval_every=0,
                    ckpt_every=0, log_every=1, seed=seed, threads=ctx.cfg.threads, progress=progress, resume=False)
        return TrainConfig(**{**base, **kw})

    tasks_dir = world / "tasks"
    max_new = ctx.knob("align.max_new_tokens", ctx.pick(24, 64))
    arith_new = ctx.knob("align.grpo_max_new_tokens", ctx.pick(32, 96))
    room = sft.config.max_seq_len - max(max_new, arith_new)  # prompts longer than this are left out
    train_rows = fits(tok, _rows(tasks_dir / "train.jsonl"), room)
    test_rows = fits(tok, _rows(tasks_dir / "test.jsonl"), room)
    heldout = {r.get("task") for r in _rows(tasks_dir / "heldout.jsonl")}
    n_eval = ctx.knob("align.eval_per_task", ctx.pick(2, 6))
    eval_rows = _per_task(test_rows, n_eval, rng, skip=tuple(heldout))
    timings: dict[str, float] = {}

    def tick(name: str, t0: float) -> None:
        timings[name] = time.perf_counter() - t0

    # ---- the SFT baseline ------------------------------------------------------------------------
    t0 = time.perf_counter()
    sft_texts = answer(sft, tok, eval_rows, max_new)
    sft_scores = oracle(eval_rows, sft_texts)
    tick("baseline eval", t0)

    # ---- 1. reward model -------------------------------------------------------------------------
    t0 = time.perf_counter()
    prefs = read_preferences(world / "preferences.jsonl")
    pref_train, pref_val = split_holdout(prefs, 0.15, seed)
    pref_val = pref_val[:ctx.pick(4, 30)]  # held-out prompts (each gives up to 15 pairs)
    rm = RewardModel(copy.deepcopy(sft).train())
    rm_res = train_reward_model(rm, tok, pref_train, pref_val,
                                train_cfg(2, 1e-3, max_steps=ctx.knob("align.rm_steps", ctx.pick(6, 40)), log_every=5),
                                out / "reward", max_len=sft.config.max_seq_len)
    rm.eval().requires_grad_(False)
    report.row("reward model: held-out pairwise accuracy", rm_res.get("val_pair_acc"), 0.5,
               f"{rm_res.get('val_pairs')} held-out pairs from {len(pref_val)} ranked prompts; baseline = chance")
    tick("reward model", t0)

    # ---- 2. PPO against the reward model, with and without the KL leash (reward hacking) ------------
    ppo_prompts = [r for r in train_rows if r.get("task") not in heldout]
    bias = ctx.knob("align.rm_length_bias", 0.05)
    proxy = length_bias(rm_reward(rm, tok.pad_id), bias)

    from genforge.text import detokenize

    def monitor(prompts, responses, rows):
        return {"oracle": sum(oracle_score(r["prompt"], detokenize(tok, x), r) for r, x in zip(rows, responses))
                / max(len(rows), 1)}

    ppo_runs: dict[str, tuple[nn.Module, list[dict]]] = {}
    kl_coef = ctx.knob("align.ppo_kl_coef", 0.5)
    for name, beta in (("ppo", kl_coef), ("ppo_kl0", 0.0)):
        t0 = time.perf_counter()
        policy = make_policy(copy.deepcopy(sft))
        pcfg = PPOConfig(rollouts=ctx.knob("align.ppo_rollouts", ctx.pick(2, 16)),
                         rollout_prompts=ctx.pick(8, 16), epochs=2, max_new_tokens=max_new, kl_coef=beta,
                         train=train_cfg(ctx.pick(4, 8), ctx.knob("align.ppo_lr", 2e-4)))
        _, history = train_ppo(policy, tok, ppo_prompts, proxy, pcfg, out / name, monitor_fn=monitor)
        ppo_runs[name] = (policy.eval(), history)
        tick(name, t0)

    # ---- 3. DPO on the same preferences ----------------------------------------------------------------
    t0 = time.perf_counter()
    dpo_policy = make_policy(copy.deepcopy(sft))
    dpo_res = train_dpo(dpo_policy, tok, pref_train, pref_val[:ctx.pick(2, 12)],
                        train_cfg(4, ctx.knob("align.dpo_lr", 5e-5),
                                  max_steps=ctx.knob("align.dpo_steps", ctx.pick(6, 40)), log_every=5),
                        out / "dpo", beta=ctx.knob("align.dpo_beta", 0.1), max_len=sft.config.max_seq_len)
    dpo_policy.eval()
    report.row("DPO: held-out preference accuracy", dpo_res.get("val_pref_acc"), 0.5,
               f"implicit reward beta*log(pi/pi_ref) orders held-out pairs; margin {dpo_res.get('val_margin', 0):.2f}")
    tick("dpo", t0)

    # ---- 4. GRPO with the verifiable reward (the world's answer check) --------------------------------
    # Arithmetic is the task the issue names, but the tiny SFT model gets ~0 % of the multi-step problems
    # right, so a group of G answers almost never holds a correct one and GRPO has no signal there. The
    # rollouts therefore mix in the other tasks with checkable answers; accuracy is reported for both.
    t0 = time.perf_counter()
    grpo_tasks = [t.strip() for t in ctx.knob("align.grpo_tasks", "arithmetic,coin_flip,multiple_choice").split(",")]
    grpo_train = [r for r in train_rows if r.get("task") in grpo_tasks]
    n_acc = ctx.pick(4, 20)
    grpo_test = {t: [r for r in test_rows if r.get("task") == t][:n_acc] for t in grpo_tasks}
    grpo_policy = make_policy(copy.deepcopy(sft))
    gcfg = GRPOConfig(rollouts=ctx.knob("align.grpo_rollouts", ctx.pick(2, 8)), rollout_prompts=ctx.pick(2, 6),
                      group_size=ctx.pick(4, 8), max_new_tokens=arith_new, beta=0.04,
                      train=train_cfg(ctx.pick(8, 16), ctx.knob("align.grpo_lr", 2e-4)))
    _, grpo_hist = train_grpo(grpo_policy, tok, grpo_train, verifiable_reward(tok), gcfg, out / "grpo")
    grpo_policy.eval()
    acc_before = {t: task_accuracy(sft, tok, rows, arith_new) for t, rows in grpo_test.items() if rows}
    acc_after = {t: task_accuracy(grpo_policy, tok, rows, arith_new) for t, rows in grpo_test.items() if rows}
    mean = lambda d: sum(d.values()) / max(1, len(d))  # noqa: E731
    zero = sum(h["zero_std_groups"] for h in grpo_hist) / len(grpo_hist)
    report.row("GRPO: arithmetic accuracy (test, greedy)", acc_after.get("arithmetic"), acc_before.get("arithmetic"),
               f"{len(grpo_test.get('arithmetic', []))} held-out problems; baseline = {start_name} model")
    report.row(f"GRPO: accuracy on verifiable tasks ({', '.join(acc_after)})", mean(acc_after), mean(acc_before),
               "mean over tasks, greedy; " + ", ".join(f"{t} {acc_before[t]:.2f} -> {acc_after[t]:.2f}"
                                                       for t in acc_after)
               + f"; reward = world answer check; {zero:.0%} of groups had no reward spread (no signal)")
    tick("grpo", t0)

    # ---- 5. constitutional AI: SL-CAI (critique -> revision -> SFT), then RLAIF (AI labels -> DPO) ------
    t0 = time.perf_counter()
    harmful_train = [r for r in train_rows if r.get("task") == "refusal"][:ctx.pick(8, 24)]
    harmful_test = [r for r in test_rows if r.get("task") == "refusal"][:ctx.pick(6, 20)]
    benign_test = [r for r in eval_rows if r.get("task") != "refusal"]
    benign_train = [r for r in ppo_prompts if r.get("task") != "refusal"]
    cai_model = copy.deepcopy(sft)
    revisions = cai.critique_and_revise(cai_model, tok, [r["prompt"] for r in harmful_train],
                                        max_new_tokens=max_new, seed=seed)
    write_json(out / "cai_revisions.json", revisions)
    convs = cai.revision_conversations(revisions)
    if convs:
        from genforge.train.sft import SFTConfig, run_sft

        # as in the paper, the revisions are mixed with helpfulness data so the model keeps its other skills
        helpful = [[{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]
                   for r in rng.sample(benign_train, min(len(benign_train), len(convs)))]
        scfg = SFTConfig(out_dir=str(out / "sl_cai"))
        scfg.train = train_cfg(ctx.pick(4, 8), 1e-4, max_steps=ctx.pick(4, 20), log_every=5)
        scfg.data.seq_len = min(256, sft.config.max_seq_len)
        cai_model, _ = run_sft(cai_model, tok, convs + helpful, scfg, name="sl-cai")
    # RLAIF: two sampled answers per prompt (harmful + benign training prompts), labelled by the model
    fb_rows = harmful_train[:ctx.pick(4, 16)] + rng.sample(benign_train, min(len(benign_train), ctx.pick(4, 16)))
    a_texts = answer(cai_model, tok, fb_rows, max_new, temperature=1.0, seed=seed + 11)
    b_texts = answer(cai_model, tok, fb_rows, max_new, temperature=1.0, seed=seed + 12)
    items = [(r["prompt"], a, b) for r, a, b in zip(fb_rows, a_texts, b_texts)]
    p_first = cai.ai_preferences(cai_model, tok, items, cai.PRINCIPLES[:2])
    row_of = {r["prompt"]: r for r in fb_rows}
    agreement = cai.label_agreement(items, p_first, lambda p, x: oracle_score(p, x, row_of[p]))
    ai_rows = cai.label_pairs(items, p_first)
    rlaif = make_policy(cai_model)
    if ai_rows:
        train_dpo(rlaif, tok, ai_rows, [], train_cfg(4, 5e-5, max_steps=ctx.pick(4, 20), log_every=5),
                  out / "rlaif", beta=0.1, max_len=sft.config.max_seq_len)
    rlaif.eval()
    refuse_mid = refusal_rate(cai_model, tok, harmful_test, max_new) if convs else None
    refuse_before = refusal_rate(sft, tok, harmful_test, max_new)
    refuse_after = refusal_rate(rlaif, tok, harmful_test, max_new)
    benign_before = [s for r, s in zip(eval_rows, sft_scores) if r.get("task") != "refusal"]
    help_before = sum(benign_before) / max(1, len(benign_before))
    help_after = sum(oracle(benign_test, answer(rlaif, tok, benign_test, max_new))) / max(1, len(benign_test))
    n_refusing = sum(cai_refuses(r["revision"]) for r in revisions)
    report.row("constitutional AI: refusal rate on held-out harmful requests", refuse_after, refuse_before,
               f"{len(harmful_test)} requests; after SL-CAI ({len(convs)} self-revisions, {n_refusing} of them "
               f"refusals; {refuse_mid if refuse_mid is None else round(refuse_mid, 2)} after SL-CAI alone) + RLAIF "
               f"({len(ai_rows)} AI-labelled pairs); baseline = {start_name} model")
    report.row("constitutional AI: helpfulness on benign prompts (oracle)", help_after, help_before,
               f"{len(benign_test)} prompts, mean oracle score in [0, 1]; baseline = {start_name} model")
    report.row("constitutional AI: AI labels agreeing with the oracle", agreement, 0.5,
               "share of answer pairs where the model's own principle-based choice matches the simulated human")
    report.note(f"**Constitutional AI.** {n_refusing} of {len(revisions)} self-revisions of answers to harmful "
                "requests were refusals (all of them are in `align/cai_revisions.json`). Critiquing and revising on "
                "request is an ability of large models (Bai et al. used a 52B one, with few-shot examples, as here); "
                "a model of this size cannot follow the request, so SL-CAI trains on what it wrote instead, and the "
                f"AI preference labels agree with the oracle on {agreement:.0%} of pairs (50 % is chance). Read "
                "the rows above as the measurement of that gap, not as what the method does at scale.")
    tick("constitutional", t0)

    # ---- win rates and KL for every aligned model ------------------------------------------------------
    t0 = time.perf_counter()
    models = {"PPO (RM, KL)": ppo_runs["ppo"][0], "PPO (RM, no KL)": ppo_runs["ppo_kl0"][0], "DPO": dpo_policy,
              "GRPO": grpo_policy, "RLAIF (CAI)": rlaif}
    kl_rows = eval_rows[:ctx.pick(8, 32)]
    wins, kls = {}, {}
    for label, m in models.items():
        scores = oracle(eval_rows, answer(m, tok, eval_rows, max_new))
        wins[label] = win_rate(scores, sft_scores)
        kls[label] = kl_to_reference(m, sft, tok, kl_rows, max_new, seed=seed + 5)
        report.row(f"{label}: win rate vs {start_name} (oracle)", wins[label], 0.5,
                   f"{len(eval_rows)} held-out prompts, greedy; mean oracle {sum(scores) / len(scores):.3f} vs "
                   f"{sum(sft_scores) / len(sft_scores):.3f}; KL to reference {kls[label]:.2f} nats/answer")
    tick("final eval", t0)

    # ---- plots --------------------------------------------------------------------------------------
    plots = ctx.path("plots")
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
        report.plot(path.relative_to(ctx.run_dir), caption)
    p3 = bar_plot(plots / "align_winrate", list(wins), list(wins.values()), f"Win rate vs {start_name} (oracle)",
                  "win rate")
    report.plot(p3.relative_to(ctx.run_dir), f"Win rate of each aligned model against the {start_name} model")

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
    report.note("Stage timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
                + f"; total {time.perf_counter() - t_stage:.0f}.")
    return {"reward_model": str(out / "reward" / "checkpoint"), "ppo": str(out / "ppo" / "checkpoint"),
            "ppo_kl0": str(out / "ppo_kl0" / "checkpoint"), "dpo": str(out / "dpo" / "checkpoint"),
            "grpo": str(out / "grpo" / "checkpoint"), "rlaif": str(out / "rlaif" / "checkpoint"),
            "rm_pair_acc": rm_res.get("val_pair_acc"), "win_rates": wins, "kl": kls,
            "grpo_accuracy": {"before": acc_before, "after": acc_after},
            "refusal_rate": {"before": refuse_before, "after": refuse_after},
            "helpfulness": {"before": help_before, "after": help_after}, "ai_label_agreement": agreement,
            "timings": timings}
