"""The speedrun's evaluation stage: how good is the tuned model, and how much does prompting buy?

Scores the SFT model (or, if SFT did not run, the pretrained one) on the world's test split:
every task directly; the reasoning tasks under chain of thought and self-consistency (and, at the
larger sizes, least-to-most, self-verification and tree of thoughts); multiple choice by
log-likelihood with the option-order test; the needle grid; contamination of the eval items
against the training corpus.
"""

from __future__ import annotations

from pathlib import Path

from genforge.report import StageReport, bar_plot


def eval_stage(ctx, report: StageReport) -> dict:
    from genforge.checkpoint import load_checkpoint
    from genforge.eval.harness import EvalConfig, evaluate, report_rows, run_contamination, run_needle
    from genforge.eval.lm import GenforgeLM
    from genforge.eval.tasks import resolve_tasks

    sft = ctx.outputs.get("sft", {})
    ckpt = sft.get("checkpoint") or ctx.need("pretrain")["checkpoint"]
    chat = "checkpoint" in sft
    model, tok, _ = load_checkpoint(ckpt)
    lm = GenforgeLM(model, tok, chat=chat)
    limit = ctx.knob("eval.limit", ctx.pick(6, 30, 100))
    out = ctx.path("eval")
    world = ctx.need("world")["dir"]
    cfg = EvalConfig(checkpoint=ckpt, tasks_dir=world, chat=chat, max_new_tokens=ctx.pick(48, 96, 128),
                     samples=ctx.pick(3, 5, 8), seed=ctx.seed, needle_lengths=ctx.pick([64], [64, 128, 256]),
                     needle_depths=ctx.pick([0.0, 1.0], [0.0, 0.25, 0.5, 0.75, 1.0]), needle_trials=ctx.pick(1, 2),
                     contamination=[ctx.need("clean")["clean"]], ngram=8)
    report.note(f"Model under test: `{ckpt}` ({'chat template' if chat else 'plain prompts'}); "
                f"{limit} test items per task, greedy unless the strategy samples.")

    direct = evaluate(lm, "all", strategy="direct", limit=limit, out_dir=out / "direct", cfg=cfg)
    for r in report_rows(direct):
        report.row(**r)

    reasoning = "arithmetic,coin_flip,last_letter"
    strategies = ["cot", "self_consistency"] + ctx.pick([], ["least_to_most", "self_verify", "tot"])
    by_strategy = {"direct": direct}
    for s in strategies:
        by_strategy[s] = evaluate(lm, reasoning, strategy=s, limit=ctx.pick(4, 15, 40) if s in (
            "least_to_most", "self_verify", "tot") else limit, out_dir=out / s, cfg=cfg)
        for r in report_rows(by_strategy[s], baseline=direct):
            report.row(**{**r, "note": r["note"] + "; baseline = direct"})
    names = list(by_strategy)
    mean = [sum(by_strategy[s]["tasks"][t]["score"] for t in reasoning.split(",")) / 3 for s in names]
    bar_plot(ctx.path("plots", "prompting_strategies.png"), names, mean,
             "Reasoning accuracy by prompting strategy", "mean exact match (arithmetic, coin flip, last letter)")
    report.plot("plots/prompting_strategies.png", "Mean exact match on the reasoning tasks per prompting strategy")

    needle = run_needle(lm, cfg, out)
    report.row("needle-in-a-haystack accuracy", needle["mean_accuracy"],
               note=f"lengths {needle['context_lengths']} x depths {needle['depths']}")
    if needle.get("plot"):
        rel = Path(needle["plot"]).relative_to(ctx.run_dir)
        report.plot(str(rel), "Needle in a haystack: accuracy by context length and needle depth")
    contam = run_contamination(resolve_tasks("all", world, "test"), cfg, out)
    report.row(f"eval items contaminated ({contam['n']}-gram overlap with the corpus)", contam["rate"],
               note=f"{contam['n_flagged']} of {contam['n_items']} items flagged; list in eval/contamination.json")
    return {"checkpoint": ckpt, "direct": {t: v["score"] for t, v in direct["tasks"].items()},
            "strategies": dict(zip(names, mean)), "needle": needle["mean_accuracy"]}
