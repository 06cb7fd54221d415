"""Stage "sft": full fine-tuning vs LoRA vs prompt tuning vs bottleneck adapters on the tiny world; SFT from the
pretrained model vs from random init; forgetting (pretraining perplexity after SFT); generalisation to a task
family never trained on. Every task score goes through `genforge.eval.score` (the one scoring path)."""

from __future__ import annotations

import copy
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from genforge.errors import ConfigError
from genforge.report import StageReport
from genforge.speedrun import pretrain, tokenizer, world
from genforge.speedrun.stage import StageContext

if TYPE_CHECKING:
    import torch.nn as nn

    from genforge.eval.score import TaskScore
    from genforge.tokenizer import Tokenizer

NAME = "sft"
TITLE = "Instruction tuning and PEFT"


@dataclass
class Config:
    steps: int = 120  # optimizer steps of each same-budget comparison run
    chat_steps: int = 400  # steps of the longer full fine-tune that later stages use (<= steps: none)
    eval_items: int = 16  # test items per task (greedy answers)
    train_items: int = 0  # at most this many training rows (0 = all)
    micro_batch: int = 16  # conversations per step
    seq_len: int = 256  # longest conversation in tokens (capped at the model's context minus 16)
    single_task: str = ""  # the single-task run's task ("" = the one with the shortest examples)
    selective: bool = False  # also compare selective fine-tuning (norms + last layer)
    ppl_batches: int = 6  # pretraining val batches for the forgetting measurement


@dataclass
class Outputs:
    checkpoint: str  # the model later stages use (the longer full fine-tune, else the same-budget one)
    align_base: str  # the same-budget full fine-tune (alignment starts here)
    lora_adapter: str
    prompt_adapter: str
    bottleneck_adapter: str
    base: str  # the pretrained checkpoint
    scores: dict[str, float]  # variant -> mean task score
    per_task: dict[str, dict[str, float]]  # variant -> task -> score
    heldout: dict[str, float]  # variant -> held-out family score
    heldout_format: dict[str, float]  # variant -> share of held-out answers in the task's format
    val_ppl: dict[str, float | None]  # variant -> pretraining val perplexity
    eval_seconds: float
    trainable_percent: dict[str, float]


@dataclass
class _Variant:
    key: str  # folder under sft/ and the key in the outputs
    label: str
    method: str  # peft method
    data: list  # conversations
    steps: int


@dataclass
class _Items:
    """The rows the stage trains on and scores on."""

    train: list[dict]  # training rows (held-out family removed)
    eval: dict[str, list[dict]]  # task -> test rows
    heldout: dict[str, list[dict]]  # held-out task -> rows


@dataclass
class _Scores:
    """Everything measured per variant."""

    tasks: dict[str, dict[str, float]] = field(default_factory=dict)  # variant -> task -> score
    held: dict[str, float] = field(default_factory=dict)
    held_format: dict[str, float] = field(default_factory=dict)
    held_preds: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    ppl: dict[str, float | None] = field(default_factory=dict)
    seconds: float = 0.0


def run(ctx: StageContext, cfg: Config, report: StageReport, *, world: world.Outputs,
        tokenizer: tokenizer.Outputs, pretrain: pretrain.Outputs) -> Outputs:
    """Train every variant from the pretrained checkpoint, score them all the same way, report."""
    from genforge.checkpoint import load_checkpoint

    base, tok, _ = load_checkpoint(pretrain.checkpoint)
    if tok is None:
        raise ConfigError(f"{pretrain.checkpoint}: the pretrained checkpoint has no tokenizer")
    items = load_items(Path(world.tasks_dir), cfg)
    train = conversations(items.train)
    single_task = cfg.single_task or shortest_task(items)
    single = [c for c, r in zip(train, items.train) if r.get("task") == single_task]
    if not single:
        raise ConfigError(f"sft.single_task={single_task!r} has no training rows; tasks: {sorted(items.eval)}")
    variants = make_variants(cfg, train, single, single_task)
    ppl = perplexity_fn(ctx, cfg, tokenizer.shards, base, tok)
    scores = _Scores()
    t0 = time.perf_counter()
    _measure(scores, "base", base, tok, items, ppl, heldout=True, forgetting=True)
    scores.seconds = time.perf_counter() - t0
    results = {v.key: train_variant(ctx, cfg, v, base, tok, pretrain.checkpoint, items, scores, ppl)
               for v in variants}
    labels = {"base": "pretrained (no SFT)", **{v.key: v.label for v in variants}}
    _report_methods(report, cfg, variants, scores, results)
    _report_forgetting(report, scores, single_task)
    _report_heldout(report, items, scores, labels)
    report.row(f"single-task FT: score on its task ({single_task})", scores.tasks["single"].get(single_task),
               scores.tasks["full"].get(single_task), "baseline = multi-task full FT on the same task")
    _report_task_table(report, cfg, items, scores, results, labels)
    _plots(ctx, report, variants, scores, results, labels)
    final = "chat" if "chat" in results else "full"
    return Outputs(checkpoint=results[final]["checkpoint"], align_base=results["full"]["checkpoint"],
                   lora_adapter=results["lora"]["checkpoint"], prompt_adapter=results["prompt"]["checkpoint"],
                   bottleneck_adapter=results["adapter"]["checkpoint"], base=str(pretrain.checkpoint),
                   scores={k: _macro(v) for k, v in scores.tasks.items()}, per_task=scores.tasks,
                   heldout=scores.held, heldout_format=scores.held_format, val_ppl=scores.ppl,
                   eval_seconds=scores.seconds,
                   trainable_percent={k: r["trainable_percent"] for k, r in results.items()})


# ---- data --------------------------------------------------------------------------------------------------------

def load_items(tasks_dir: Path, cfg: Config) -> _Items:
    """Training rows (without the held-out family), `eval_items` test rows per task, and the held-out rows."""
    from genforge.world import HELDOUT_TASKS

    held_tasks = set(HELDOUT_TASKS)
    train = [r for r in _read_rows(tasks_dir / "train.jsonl") if r.get("task") not in held_tasks]
    test = [r for r in _read_rows(tasks_dir / "test.jsonl") if r.get("task") not in held_tasks]
    eval_items = by_task(test, cfg.eval_items)
    if not train or not eval_items:
        raise ConfigError(f"{tasks_dir}: no training or test tasks to fine-tune on (train.jsonl, test.jsonl)")
    if cfg.train_items:
        train = train[:cfg.train_items]
    train = [r for r in train if str(r["response"]).strip()]
    return _Items(train, eval_items, by_task(_read_rows(tasks_dir / "heldout.jsonl"), cfg.eval_items))


def _read_rows(path: Path) -> list[dict]:
    from genforge.io import read_jsonl

    return [obj for _, obj in read_jsonl(path, required=("prompt", "response"))] if path.exists() else []


def by_task(rows: list[dict], k: int) -> dict[str, list[dict]]:
    """{task: its first k rows}, tasks in order of first appearance."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        t = r.get("task", "task")
        if len(out.setdefault(t, [])) < k:
            out[t].append(r)
    return {t: v for t, v in out.items() if v}


def conversations(rows: list[dict]) -> list[list[dict]]:
    return [[{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}] for r in rows]


def shortest_task(items: _Items) -> str:
    """The task with the shortest examples: the forgetting lesson does not depend on which task the single-task
    run uses, and the short one keeps the stage inside its time budget."""
    def mean_len(t: str) -> float:
        rows = [r for r in items.train if r.get("task") == t]
        return sum(len(r["prompt"]) + len(r["response"]) for r in rows) / len(rows) if rows else float("inf")

    return min(items.eval, key=mean_len)


def make_variants(cfg: Config, train: list, single: list, single_task: str) -> list[_Variant]:
    """The runs to compare, all from the pretrained model except 'scratch'."""
    s = cfg.steps
    variants = [_Variant("full", "full FT", "full", train, s), _Variant("lora", "LoRA", "lora", train, s),
                _Variant("prompt", "prompt tuning", "prompt", train, s),
                _Variant("adapter", "adapters", "adapter", train, s),
                _Variant("scratch", "full FT from random init", "full", train, s),
                _Variant("single", f"single-task full FT ({single_task})", "full", single, s)]
    if cfg.selective:
        variants.insert(4, _Variant("selective", "selective (norms + last layer)", "selective", train, s))
    if cfg.chat_steps > s:  # the model later stages (eval, alignment, engine, serving) use trains longer
        variants.append(_Variant("chat", f"full FT, {cfg.chat_steps} steps (the model later stages use)", "full",
                                 train, cfg.chat_steps))
    return variants


# ---- training and measuring --------------------------------------------------------------------------------------

def sft_config(ctx: StageContext, cfg: Config, v: _Variant, init_from: str, seq_len: int):
    """The `genforge sft` config of one variant."""
    from genforge.train.sft import SFTConfig
    from genforge.train.trainer import TrainConfig

    c = SFTConfig(init_from=init_from, out_dir=str(ctx.path("sft", v.key)))
    c.train = TrainConfig(max_steps=v.steps, micro_batch=cfg.micro_batch, warmup_steps=max(1, v.steps // 10),
                          eval_every=0, ckpt_every=0, log_every=max(1, v.steps // 30), seed=ctx.seed,
                          threads=ctx.threads, progress=ctx.progress, resume=False,
                          weight_decay=0.1 if v.method in ("full", "selective") else 0.0)
    c.data.seq_len = seq_len
    c.peft.method = v.method
    return c


def perplexity_fn(ctx: StageContext, cfg: Config, shards: str, base: nn.Module, tok: Tokenizer):
    """model -> perplexity on the pretraining corpus's held-out split (how forgetting is measured)."""
    import torch

    from genforge.data.shards import TokenShards
    from genforge.train.pretrain import make_eval_fn, token_byte_lengths

    val = TokenShards(shards, "val", min(128, base.config.max_seq_len), 8, ctx.seed)
    fn = make_eval_fn(val, cfg.ppl_batches, token_byte_lengths(tok))

    def ppl(model: nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            return fn(model)["val_ppl"]

    return ppl


def train_variant(ctx: StageContext, cfg: Config, v: _Variant, base: nn.Module, tok: Tokenizer, ckpt: str,
                  items: _Items, scores: _Scores, ppl) -> dict:
    """Fine-tune one variant, score it into `scores`, return its training result (with a smoothed loss curve)."""
    import torch

    from genforge.model.gpt import GPT
    from genforge.train.sft import run_sft
    from genforge.train.trainer import read_metrics

    shutil.rmtree(ctx.run_dir / "sft" / v.key, ignore_errors=True)
    if v.key == "scratch":
        torch.manual_seed(ctx.seed)
        model = GPT(base.config)
    else:
        model = copy.deepcopy(base)
    sc = sft_config(ctx, cfg, v, ckpt, min(cfg.seq_len, base.config.max_seq_len - 16))
    base_path = "" if v.key == "scratch" else str(Path(ckpt).resolve())
    module, res = run_sft(model, tok, v.data, sc, base_path=base_path, name=f"sft-{v.key}")
    t0 = time.perf_counter()
    _measure(scores, v.key, module, tok, items, ppl, heldout=v.key not in ("single", "scratch"),
             forgetting=v.key in ("full", "lora", "single"))
    scores.seconds += time.perf_counter() - t0
    res["curve"] = _smooth([(r["step"], r["loss"]) for r in read_metrics(sc.out_dir)])
    return res


def _measure(scores: _Scores, key: str, model: nn.Module, tok: Tokenizer, items: _Items, ppl, *, heldout: bool,
             forgetting: bool) -> None:
    from genforge.eval.score import score_tasks

    model.eval()
    scores.tasks[key] = {t: s.score for t, s in score_tasks(model, tok, items.eval).items()}
    if heldout and items.heldout:
        held = score_tasks(model, tok, items.heldout)
        scores.held_preds[key] = {t: s.predictions for t, s in held.items()}
        scores.held[key] = _macro({t: s.score for t, s in held.items()})
        scores.held_format[key] = _macro({t: answer_format_rate(s) for t, s in held.items()})
    if forgetting:
        scores.ppl[key] = ppl(model)


def answer_format_rate(score: TaskScore) -> float:
    """Share of answers from which the world's extractor reads an answer of the task's kind (e.g. a date)."""
    from genforge.world import extract_answer

    return sum(bool(extract_answer(score.task, p)) for p in score.predictions) / max(len(score.predictions), 1)


def _smooth(curve: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Trailing mean over ~a tenth of the points."""
    w = max(1, len(curve) // 10)
    return [(s, sum(v for _, v in curve[max(0, i - w + 1):i + 1]) / len(curve[max(0, i - w + 1):i + 1]))
            for i, (s, _) in enumerate(curve)]


def _macro(scores: dict[str, float]) -> float:
    return sum(scores.values()) / max(len(scores), 1)


# ---- report ------------------------------------------------------------------------------------------------------

def _report_methods(report: StageReport, cfg: Config, variants: list[_Variant], scores: _Scores,
                    results: dict[str, dict]) -> None:
    """Quality beside the trainable share, per method; pretrained vs random init."""
    base_macro = _macro(scores.tasks["base"])
    for v in variants:
        if v.key in ("scratch", "single"):
            continue
        r = results[v.key]
        if v.key == "chat":  # not part of the same-budget comparison
            report.row(f"{v.label}: mean task score", _macro(scores.tasks[v.key]), _macro(scores.tasks["full"]),
                       f"baseline = full FT with {cfg.steps} steps; {r['elapsed_s']:.0f} s")
            continue
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


def _report_heldout(report: StageReport, items: _Items, scores: _Scores, labels: dict[str, str]) -> None:
    if not items.heldout:
        return
    fam = ", ".join(items.heldout)
    for key in ("full", "lora", "prompt", "adapter"):
        report.row(f"held-out task family ({fam}): score after {labels[key]}", scores.held[key], scores.held["base"],
                   "a task never seen in SFT; baseline = pretrained model")
        report.row(f"held-out task family ({fam}): answers in the task's format after {labels[key]}",
                   scores.held_format[key], scores.held_format["base"],
                   "share of answers the task's extractor can read (a date after 'The answer is'): "
                   "does the answer format carry over to an unseen task, right or wrong?")
    task = next(iter(items.heldout))
    row = items.heldout[task][0]
    report.note(f"Held-out example ({task}, never trained on):\n\n- prompt: {row['prompt']!r}\n"
                f"- reference: {row['response']!r}\n"
                + "".join(f"- {labels[k]}: {scores.held_preds[k][task][0]!r}\n" for k in ("base", "full", "lora")))


def _report_task_table(report: StageReport, cfg: Config, items: _Items, scores: _Scores, results: dict[str, dict],
                       labels: dict[str, str]) -> None:
    from genforge.eval.score import generative_metric

    tasks = list(items.eval)
    head = ("| variant | trainable % | " + " | ".join(f"{t} ({generative_metric(t, items.eval[t][0])})" for t in tasks)
            + " | mean |")
    lines = [head, "|" + "---|" * (len(tasks) + 3)]
    for key, per in scores.tasks.items():
        pct = "100" if key in ("base", "scratch", "single") else f"{results[key]['trainable_percent']:.2f}"
        cells = " | ".join(f"{per[t]:.2f}" for t in tasks)
        lines.append(f"| {labels[key]} | {pct} | {cells} | {_macro(per):.3f} |")
    report.note("Prompt tuning needs scale: Lester et al. 2021 found it matches fine-tuning only near 10B "
                "parameters, so on a ~1M-parameter model expect it to trail the other methods by far. LoRA here "
                "targets every linear layer of the blocks (attention-only LoRA did markedly worse in our sweeps, "
                "as Dettmers et al. 2023 report). Training memory counts weights, gradients, AdamW moments and "
                "saved activations.")
    report.note(f"Per-task scores on {cfg.eval_items} test items per task (greedy; exact match, ROUGE-L F1, BLEU/100, "
                "all through `genforge.eval.score`, as the eval and align sections). The pretrained model is prompted "
                "with the same chat template it has never seen, so its low score is the point: SFT teaches the "
                "format and the tasks.\n\n" + "\n".join(lines))


def _plots(ctx: StageContext, report: StageReport, variants: list[_Variant], scores: _Scores,
           results: dict[str, dict], labels: dict[str, str]) -> None:
    from genforge.report import bar_plot, line_plot

    order = ["base"] + [v.key for v in variants]
    p1 = bar_plot(ctx.path("sft", "quality.png"), [labels[k].split(" (")[0] for k in order],
                  [_macro(scores.tasks[k]) for k in order], "Mean task score by fine-tuning method", "score (0-1)")
    report.plot(p1.relative_to(ctx.run_dir), "Mean task score: base vs each SFT/PEFT method")
    p2 = line_plot(ctx.path("sft", "loss.png"),
                   {labels[k].split(" (")[0]: ([s for s, _ in r["curve"]], [v for _, v in r["curve"]])
                    for k, r in results.items() if r["curve"]}, "SFT training loss (assistant tokens)", "step", "loss")
    report.plot(p2.relative_to(ctx.run_dir), "Training loss per method (trailing mean over ~1/10 of the run: "
                "batches grouped by length are mostly one task each, so raw step losses jump between tasks)")
    keys = ["base", "single", "full", "lora"]
    p3 = bar_plot(ctx.path("sft", "forgetting.png"), ["pretrained", "single-task FT", "multi-task FT", "LoRA"],
                  [scores.ppl[k] for k in keys], "Forgetting: pretraining val perplexity", "perplexity")
    report.plot(p3.relative_to(ctx.run_dir), "Perplexity on the pretraining corpus before/after fine-tuning")
