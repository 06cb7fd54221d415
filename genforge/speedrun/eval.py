"""Stage "eval": how good is the tuned model, and how much does prompting buy?

Scores the SFT model on the world's test split: every task directly (through `genforge.eval.score`, the
scoring path the SFT and align sections use; multiple choice by log-likelihood with the option-order test);
the reasoning tasks under chain of thought and self-consistency (and, at the larger sizes, least-to-most,
self-verification and tree of thoughts); the needle grid; contamination of the eval items against the
training corpus.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from genforge.report import StageReport
from genforge.speedrun import clean, sft, world
from genforge.speedrun.stage import StageContext

if TYPE_CHECKING:
    from genforge.eval.harness import EvalConfig
    from genforge.eval.lm import GenforgeLM
    from genforge.eval.tasks import Task

NAME = "eval"
TITLE = "Evaluation and prompting strategies"
EXPENSIVE = ("least_to_most", "self_verify", "tot")  # strategies scored on `search_limit` items


@dataclass
class Config:
    limit: int = 30  # test items per task
    max_new_tokens: int = 96  # generation budget of the prompting strategies
    samples: int = 5  # self-consistency: sampled answers per item
    reasoning_tasks: list[str] = field(default_factory=lambda: ["arithmetic", "coin_flip", "last_letter"])
    strategies: list[str] = field(default_factory=lambda: ["cot", "self_consistency", *EXPENSIVE])  # besides direct
    search_limit: int = 15  # items per task for least-to-most, self-verification and tree of thoughts
    needle_lengths: list[int] = field(default_factory=lambda: [64, 128, 256])
    needle_depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    needle_trials: int = 2
    ngram: int = 8  # contamination n-gram size


@dataclass
class Outputs:
    checkpoint: str  # the model under test
    direct: dict[str, float]  # task -> direct score
    strategies: dict[str, float]  # strategy -> mean score on the reasoning tasks
    needle: float  # needle-in-a-haystack accuracy


def run(ctx: StageContext, cfg: Config, report: StageReport, *, world: world.Outputs, clean: clean.Outputs,
        sft: sft.Outputs) -> Outputs:
    """Direct scores, prompting strategies, needle grid, contamination."""
    from genforge.checkpoint import load_checkpoint
    from genforge.eval.harness import EvalConfig
    from genforge.eval.lm import GenforgeLM
    from genforge.eval.tasks import resolve_tasks

    model, tok, _ = load_checkpoint(sft.checkpoint)
    lm = GenforgeLM(model, tok, chat=True)
    out = ctx.path("eval")
    ecfg = EvalConfig(checkpoint=sft.checkpoint, tasks_dir=world.dir, chat=True, max_new_tokens=cfg.max_new_tokens,
                      samples=cfg.samples, seed=ctx.seed, needle_lengths=list(cfg.needle_lengths),
                      needle_depths=list(cfg.needle_depths), needle_trials=cfg.needle_trials,
                      contamination=[clean.clean], ngram=cfg.ngram)
    report.note(f"Model under test: `{sft.checkpoint}` (chat template); {cfg.limit} test items per task, greedy "
                "unless the strategy samples.")
    tasks = resolve_tasks("all", world.dir, "test")
    direct = direct_results(lm, tasks, cfg.limit, out / "direct", ecfg)
    _report_direct(report, direct)
    means = _strategies(ctx, report, lm, cfg, ecfg, direct, out)
    needle = _needle(ctx, report, lm, ecfg, out)
    _contamination(report, tasks, ecfg, out)
    return Outputs(checkpoint=sft.checkpoint, direct={t: v["score"] for t, v in direct["tasks"].items()},
                   strategies=means, needle=needle)


def direct_results(lm: GenforgeLM, tasks: list[Task], limit: int, out: Path | None, ecfg: EvalConfig) -> dict:
    """The direct strategy in `genforge eval`'s results format: generative tasks through
    `genforge.eval.score.score_task_rows` (the SFT and align sections' numbers), multiple choice by log-likelihood."""
    from genforge.eval.harness import MAIN_METRIC, evaluate
    from genforge.eval.score import score_task_rows
    from genforge.io import write_json, write_jsonl

    results: dict = {"run": {"strategy": "direct", "limit": limit, "checkpoint": ecfg.checkpoint, "chat": lm.chat,
                             "seed": ecfg.seed}, "tasks": {}}
    for task in tasks:
        if task.metric == "mc":
            mc = evaluate(lm, [task], strategy="direct", limit=limit, out_dir=out, cfg=ecfg)
            results["tasks"].update(mc["tasks"])
            continue
        t0 = time.time()
        rows = task.load(limit)
        s = score_task_rows(lm.model, lm.tokenizer, task.name, rows)
        results["tasks"][task.name] = {"metric": MAIN_METRIC[s.metric], "score": s.score, "n": len(rows),
                                       "strategy": "direct", "seconds": round(time.time() - t0, 2),
                                       "metrics": s.metrics}
        if out is not None:
            write_jsonl(out / "items" / f"{task.name}.jsonl",
                        [{"line": r["_line"], "prompt": r["prompt"], "output": p, "answer": a, "score": x}
                         for r, p, a, x in zip(rows, s.predictions, s.answers, s.items)])
    if out is not None:
        write_json(out / "results.json", results)
    return results


def _report_direct(report: StageReport, direct: dict) -> None:
    from genforge.eval.harness import report_rows

    for r in report_rows(direct):
        report.row(**r)


def _strategies(ctx: StageContext, report: StageReport, lm: GenforgeLM, cfg: Config, ecfg: EvalConfig, direct: dict,
                out: Path) -> dict[str, float]:
    """Each prompting strategy on the reasoning tasks against direct answers; a bar plot of the means."""
    from genforge.eval.harness import evaluate, report_rows
    from genforge.report import bar_plot

    reasoning = ",".join(cfg.reasoning_tasks)
    by_strategy = {"direct": direct}
    for s in cfg.strategies:
        limit = cfg.search_limit if s in EXPENSIVE else cfg.limit
        by_strategy[s] = evaluate(lm, reasoning, strategy=s, limit=limit, out_dir=out / s, cfg=ecfg)
        for r in report_rows(by_strategy[s], baseline=direct):
            report.row(**{**r, "note": r["note"] + "; baseline = direct"})
    names = list(by_strategy)
    mean = [sum(by_strategy[s]["tasks"][t]["score"] for t in cfg.reasoning_tasks) / len(cfg.reasoning_tasks)
            for s in names]
    bar_plot(ctx.path("plots", "prompting_strategies.png"), names, mean,
             "Reasoning accuracy by prompting strategy", f"mean exact match ({', '.join(cfg.reasoning_tasks)})")
    report.plot("plots/prompting_strategies.png", "Mean exact match on the reasoning tasks per prompting strategy")
    return dict(zip(names, mean))


def _needle(ctx: StageContext, report: StageReport, lm: GenforgeLM, ecfg: EvalConfig, out: Path) -> float:
    from genforge.eval.harness import run_needle

    needle = run_needle(lm, ecfg, out)
    report.row("needle-in-a-haystack accuracy", needle["mean_accuracy"],
               note=f"lengths {needle['context_lengths']} x depths {needle['depths']}")
    if needle.get("plot"):
        report.plot(str(Path(needle["plot"]).relative_to(ctx.run_dir)),
                    "Needle in a haystack: accuracy by context length and needle depth")
    return needle["mean_accuracy"]


def _contamination(report: StageReport, tasks: list[Task], ecfg: EvalConfig, out: Path) -> None:
    from genforge.eval.harness import run_contamination

    contam = run_contamination(tasks, ecfg, out)
    report.row(f"eval items contaminated ({contam['n']}-gram overlap with the corpus)", contam["rate"],
               note=f"{contam['n_flagged']} of {contam['n_items']} items flagged; list in eval/contamination.json")
