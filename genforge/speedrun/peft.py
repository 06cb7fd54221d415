"""Stage "peft": fine-tuning methods compared on the same data and budget. Full fine-tuning vs LoRA vs prompt
tuning vs bottleneck adapters from the pretrained model; full fine-tuning from random init (what pretraining
transfers); single-task vs multi-task fine-tuning (forgetting, as pretraining perplexity after SFT).

It reads only the pretrained model and the world's tasks, so it runs beside the `sft` stage (which trains the
chat model later stages use); rows, items and measuring are `speedrun.sft`'s, so both stages score alike.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from genforge.errors import ConfigError
from genforge.report import StageReport
from genforge.speedrun import pretrain, tokenizer, world
from genforge.speedrun.sft import (
    _Items,
    _macro,
    _mean,
    _measure,
    _pooled,
    _Scores,
    _Variant,
    conversations,
    load_base_and_items,
    loss_plot,
    nll_fn,
    report_task_table,
    train_variant,
)
from genforge.speedrun.stage import StageContext

NAME = "peft"
TITLE = "Fine-tuning methods: full vs LoRA vs prompt tuning vs adapters"

LORA_SHARE_TARGET = 0.8  # issue 22: LoRA at <= 10 % trainable parameters reaches >= 80 % of full FT's score


@dataclass
class Config:
    steps: int = 100  # optimizer steps of every run (the same budget for each method)
    eval_items: int = 50  # test items per task (greedy answers)
    chat_train_items: int = 0  # benign chat rows mixed into multi-task training (0 = all of tasks/chat_train.jsonl)
    train_items: int = 0  # at most this many training rows (0 = all)
    micro_batch: int = 16  # conversations per step
    seq_len: int = 256  # longest conversation in tokens (capped at the model's context minus 16)
    single_task: str = ""  # the single-task run's task ("" = the one with the shortest examples)
    selective: bool = False  # also compare selective fine-tuning (norms + last layer)
    ppl_batches: int = 6  # pretraining val batches for the forgetting measurement
    # LoRA also trains the embedding rows of tokens the fine-tuning data uses >= this many times more often (per
    # token) than pretraining did (peft's trainable_token_indices; 0 = none). On the tiny world these are the
    # apostrophe of "can't" and two word pieces the corpus never has, plus the chat template's tokens: without
    # them LoRA wrote "I cann help" (refusals 0.34 vs full FT's 0.98); with them 0.86 (measured, seed 0)
    lora_new_token_ratio: float = 100.0
    # LoRA rank (alpha 16, every linear layer of the blocks): 9 is the largest whose trainable parameters (with the
    # token rows) stay <= 10 % of the model's; at tiny, seed 0, LoRA / full 0.87 [0.75, 0.99] at rank 8, 0.95 [0.87,
    # 1.03] at rank 9 (both with the token rows)
    lora_r: int = 9
    lora_max_token_rows: int = 32  # at most this many rows (C parameters each), the rarest in pretraining first


@dataclass
class Outputs:
    full: str  # the same-budget multi-task full fine-tune
    lora_adapter: str  # PEFT adapter folders (they load in `peft`)
    prompt_adapter: str
    bottleneck_adapter: str
    scores: dict[str, float]  # variant -> mean task score
    per_task: dict[str, dict[str, float]]  # variant -> task -> score
    val_ppl: dict[str, float | None]  # variant -> pretraining val perplexity
    trainable_percent: dict[str, float]


def run(ctx: StageContext, cfg: Config, report: StageReport, *, world: world.Outputs,
        tokenizer: tokenizer.Outputs, pretrain: pretrain.Outputs) -> Outputs:
    """Train every method from the pretrained checkpoint (and one from random init), score all alike, report."""
    base, tok, items = load_base_and_items(ctx, cfg, report, world.tasks_dir, pretrain.checkpoint)
    train = conversations(items.train)
    single_task = cfg.single_task or shortest_task(items)
    single = [c for c, r in zip(train, items.train) if r.get("task") == single_task]
    if not single:
        raise ConfigError(f"peft.single_task={single_task!r} has no training rows; tasks: {sorted(items.eval)}")
    rows = new_token_rows(tok, train, tokenizer.shards, cfg.lora_new_token_ratio, cfg.lora_max_token_rows)
    variants = make_variants(cfg, train, single, single_task, rows)
    encoded: dict[int, dict] = {}  # id(variant data) -> run_sft's cache of its encoding (variants share lists)
    nll = nll_fn(ctx, cfg, tokenizer.shards, base)
    scores = _Scores()
    t0 = time.perf_counter()
    _measure(scores, "base", base, tok, items, nll, extra=False, forgetting=True)
    scores.seconds = time.perf_counter() - t0
    results = {v.key: train_variant(ctx, cfg, v, base, tok, pretrain.checkpoint, items, scores, nll,
                                    encoded.setdefault(id(v.data), {}), stage=NAME)
               for v in variants}
    labels = {"base": "pretrained (no SFT)", **{v.key: v.label for v in variants}}
    report_lessons(report, scores, results, single_task, [tok.decode([i]) for i in rows], cfg.lora_r)
    _report_methods(report, cfg, variants, scores, results)
    _report_forgetting(report, scores, single_task)
    report.row(f"single-task FT: score on its task ({single_task})", scores.tasks["single"].get(single_task),
               scores.tasks["full"].get(single_task), "baseline = multi-task full FT on the same task")
    report_task_table(report, cfg.eval_items, items, scores, results, labels, note=(
        "Prompt tuning needs scale: Lester et al. 2021 found it matches fine-tuning only near 10B parameters, so on a "
        "~1M-parameter model expect it to trail the other methods by far. LoRA here targets every linear layer of "
        "the blocks (attention-only LoRA did markedly worse in our sweeps, as Dettmers et al. 2023 report). "
        "Training memory counts weights, gradients, AdamW moments and saved activations."))
    _plots(ctx, report, variants, scores, labels)
    loss_plot(ctx, report, NAME, results, labels)
    return Outputs(full=results["full"]["checkpoint"], lora_adapter=results["lora"]["checkpoint"],
                   prompt_adapter=results["prompt"]["checkpoint"],
                   bottleneck_adapter=results["adapter"]["checkpoint"],
                   scores={k: _macro(v) for k, v in scores.tasks.items()}, per_task=scores.tasks,
                   val_ppl=scores.ppl, trainable_percent={k: r["trainable_percent"] for k, r in results.items()})


def shortest_task(items: _Items) -> str:
    """The task with the shortest examples: the forgetting lesson does not depend on which task the single-task
    run uses, and the short one keeps the stage inside its time budget."""
    def mean_len(t: str) -> float:
        rows = [r for r in items.train if r.get("task") == t]
        return sum(len(r["prompt"]) + len(r["response"]) for r in rows) / len(rows) if rows else float("inf")

    return min(items.eval, key=mean_len)


def new_token_rows(tok, train: list, shards: str, ratio: float, max_rows: int) -> list[int]:
    """Token ids the fine-tuning conversations use >= `ratio` times more often (share of their tokens) than the
    pretraining corpus (share of its train shards), seen >= 20 times: tokens whose embedding (and tied output)
    row pretraining never trained. The `max_rows` rarest in pretraining first."""
    import numpy as np

    from genforge.data.shards import TokenShards

    if ratio <= 0 or max_rows <= 0:
        return []
    V = tok.vocab_size
    ft = np.zeros(V, dtype=np.int64)
    for conv in train:
        ft += np.bincount(np.asarray(tok.encode_chat(conv)[0], dtype=np.int64), minlength=V)[:V]
    pre = np.zeros(V, dtype=np.int64)
    for a in TokenShards(shards, "train", 1, 1).arrays:
        pre += np.bincount(np.asarray(a, dtype=np.int64), minlength=V)[:V]
    return pick_new_tokens(ft, pre, ratio, max_rows)


def pick_new_tokens(ft, pre, ratio: float, max_rows: int, min_count: int = 20) -> list[int]:
    """Ids whose share of the fine-tuning tokens `ft` (counts per id) is >= `ratio` x their share of the
    pretraining tokens `pre` (+1, so a token pretraining never saw has a finite ratio), used >= `min_count` times;
    the `max_rows` highest ratios, sorted by id."""
    import numpy as np

    ft, pre = np.asarray(ft, dtype=np.float64), np.asarray(pre, dtype=np.float64)
    score = (ft / max(1.0, ft.sum())) / ((pre + 1) / max(1.0, pre.sum()))
    picked = [int(i) for i in np.argsort(-score, kind="stable") if ft[i] >= min_count and score[i] >= ratio]
    return sorted(picked[:max_rows])


def make_variants(cfg: Config, train: list, single: list, single_task: str,
                  lora_rows: list[int] | None = None) -> list[_Variant]:
    """The runs to compare, all from the pretrained model except 'scratch', all `cfg.steps` long; the LoRA also
    trains the embedding rows `lora_rows`."""
    s = cfg.steps
    lora_peft = {"r": cfg.lora_r, **({"trainable_token_indices": list(lora_rows)} if lora_rows else {})}
    variants = [_Variant("full", "full FT", "full", train, s), _Variant("lora", "LoRA", "lora", train, s, lora_peft),
                _Variant("prompt", "prompt tuning", "prompt", train, s),
                _Variant("adapter", "adapters", "adapter", train, s),
                _Variant("scratch", "full FT from random init", "full", train, s),
                _Variant("single", f"single-task full FT ({single_task})", "full", single, s)]
    if cfg.selective:
        variants.insert(4, _Variant("selective", "selective (norms + last layer)", "selective", train, s))
    return variants


def report_lessons(report: StageReport, scores: _Scores, results: dict[str, dict], single_task: str,
                   rows: list[str] | None = None, rank: int = 8) -> None:
    """The methods' claims of issue 22, each with a paired bootstrap interval over shared test items / sequences."""
    from genforge.eval.stats import bootstrap_diff, bootstrap_mean, bootstrap_ratio

    full, scratch = _pooled(scores.items["full"]), _pooled(scores.items["scratch"])
    report.lesson("SFT from the pretrained model beats SFT from random init (same data and steps)",
                  ("mean task score, from pretrained", bootstrap_mean(full)),
                  ("from random init", bootstrap_mean(scratch)), effect=bootstrap_diff(full, scratch, paired=True),
                  target=0.0, note="paired over test items")
    lora = _pooled(scores.items["lora"])
    pct = results["lora"]["trainable_percent"]
    shown = ", ".join(repr(r) for r in rows if r.strip() and r.isprintable()) if rows else ""
    recipe = f"; LoRA rank {rank} on every linear layer of the blocks"
    if rows:
        recipe += (f", plus the embedding rows of {len(rows)} tokens pretraining never trained (the chat template's"
                   f"{', ' + shown if shown else ''}; peft's trainable_token_indices)")
    n = results["lora"]["trainable"]
    recipe += f"; {n:,} trainable = {100 * n / results['full']['trainable']:.1f} % of the model's weights"
    if _mean(full) > 0:
        report.lesson(f"LoRA ({pct:.1f} % trainable, <= 10 %) reaches >= {LORA_SHARE_TARGET:.0%} of full FT's score",
                      ("mean task score, LoRA", bootstrap_mean(lora)), ("full FT", bootstrap_mean(full)),
                      effect=bootstrap_ratio(lora, full, paired=True), target=LORA_SHARE_TARGET,
                      effect_name="LoRA / full", note="same data and steps; ratio of means, paired over items"
                      + recipe + ("" if pct <= 10 else "; NOTE: more than 10 % of weights trainable"))
    gaps = {t: _mean(scores.items["full"][t]) - _mean(scores.items["lora"][t]) for t in scores.items["lora"]}
    worst = max(gaps, key=gaps.get) if gaps else None
    rest_full = _mean([x for t in sorted(gaps) if t != worst for x in scores.items["full"][t]])
    if worst is not None and rest_full > 0:
        rest_lora = _mean([x for t in sorted(gaps) if t != worst for x in scores.items["lora"][t]])
        report.row(f"LoRA / full FT without the task where LoRA trails most ({worst}: "
                   f"{_mean(scores.items['lora'][worst]):.2f} vs {_mean(scores.items['full'][worst]):.2f})",
                   rest_lora / rest_full, note="LoRA learns less and forgets less (Biderman et al. 2024): at the same "
                   "budget it keeps up on tasks whose answers look like pretraining text and trails on a behaviour "
                   "the pretraining text never shows (on the tiny world: refusals, written with tokens pretraining "
                   "never trained). Measured at tiny, seed 0: a LoRA of the blocks alone wrote \"I cann help\" "
                   "after 100 steps (the corpus never has an apostrophe after \"can\": the tied head's row for it "
                   "was never trained), refusals 0.34 vs 0.98; training those tokens' embedding rows too took them to "
                   "0.86 (0.98 at rank 9). LoRA at 1.5x / 2.1x its learning rate, alpha 32, LoRA+ (B at 4x / 16x A's "
                   "lr) or trainable norms all scored lower (mean 0.07-0.13 vs 0.15), at 0.6x its lr the same (0.16)")
    nf, nl, ns = scores.nll.get("full"), scores.nll.get("lora"), scores.nll.get("single")
    if nf and nl:
        report.lesson("LoRA forgets less than full FT (pretraining val NLL rises less)",
                      ("pretraining val perplexity, full FT", scores.ppl["full"]),
                      ("LoRA", scores.ppl["lora"]), effect=bootstrap_diff(nf, nl, paired=True), target=0.0,
                      effect_name="NLL full - LoRA (nats/token)",
                      note=f"{len(nf)} held-out pretraining sequences; pretrained: {scores.ppl['base']:.3f}")
    if nf and ns:
        report.lesson(f"single-task FT ({single_task}) forgets more than multi-task FT",
                      ("pretraining val perplexity, single-task", scores.ppl["single"]),
                      ("multi-task", scores.ppl["full"]), effect=bootstrap_diff(ns, nf, paired=True), target=0.0,
                      effect_name="NLL single - multi (nats/token)",
                      note=f"{len(ns)} held-out pretraining sequences; same steps")


def _report_methods(report: StageReport, cfg: Config, variants: list[_Variant], scores: _Scores,
                    results: dict[str, dict]) -> None:
    """Quality beside the trainable share, per method; pretrained vs random init."""
    base_macro = _macro(scores.tasks["base"])
    for v in variants:
        if v.key in ("scratch", "single"):
            continue
        r = results[v.key]
        report.row(f"{v.label}: mean task score", _macro(scores.tasks[v.key]), base_macro,
                   f"{r['trainable_percent']:.2f}% of weights trained ({r['trainable']:,}); "
                   f"{r['train_memory_mib']:.1f} MiB training memory; {r['elapsed_s']:.0f} s for {r['step']} steps")
    report.row("SFT from pretrained vs random init: mean task score", _macro(scores.tasks["full"]),
               _macro(scores.tasks["scratch"]),
               f"same data and {cfg.steps} steps; baseline = from random init: pretraining knowledge transfers")


def _report_forgetting(report: StageReport, scores: _Scores, single_task: str) -> None:
    for key, what in (("single", f"single-task full FT ({single_task})"), ("full", "multi-task full FT"),
                      ("lora", "LoRA")):
        report.row(f"forgetting: pretraining val perplexity after {what}", scores.ppl[key], scores.ppl["base"],
                   "baseline = pretrained model; higher = more of the pretraining distribution forgotten")


def _plots(ctx: StageContext, report: StageReport, variants: list[_Variant], scores: _Scores,
           labels: dict[str, str]) -> None:
    from genforge.report import bar_plot

    order = ["base"] + [v.key for v in variants]
    p1 = bar_plot(ctx.path(NAME, "quality.png"), [labels[k].split(" (")[0] for k in order],
                  [_macro(scores.tasks[k]) for k in order], "Mean task score by fine-tuning method", "score (0-1)")
    report.plot(p1.relative_to(ctx.run_dir), "Mean task score: base vs each SFT/PEFT method")
    keys = ["base", "single", "full", "lora"]
    p3 = bar_plot(ctx.path(NAME, "forgetting.png"), ["pretrained", "single-task FT", "multi-task FT", "LoRA"],
                  [scores.ppl[k] for k in keys], "Forgetting: pretraining val perplexity", "perplexity")
    report.plot(p3.relative_to(ctx.run_dir), "Perplexity on the pretraining corpus before/after fine-tuning")
