"""Stage "eval": how good is the tuned model, and how much does prompting buy?

Every compared arm scores the SAME test items, so each lesson is a paired bootstrap over them:
- chain of thought vs direct answering on the multi-step tasks (the world's reasoning rows carry both phrasings,
  `prompts["cot"]` and `prompts["direct"]`, and SFT trains on both, so each arm is asked in a format the model knows);
- self-consistency@k vs greedy chain of thought (Wang et al. 2023), as non-inferiority;
- least-to-most vs chain of thought on last-letter concatenation over 4-6 words (Zhou et al. 2023's setup:
  the growing prefixes solved in order, in one pass);
- self-verification and tree of thoughts, reported with their cost in model calls per item;
- in-context learning on the PRETRAINED model: k solved examples vs none (Brown et al. 2020);
- multiple choice by log-likelihood against chance, with the option-order test;
- needle in a haystack within the trained context and beyond it (the heatmap), on the chat model (SFT trains on
  the world's needle rows: the pretrained model copies nothing from its context) or, as a cloze, the pretrained one;
- contamination of the eval items against the training corpus.
Direct scores of every task go through `genforge.eval.score` (the SFT and align sections' path).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
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
OPTIONAL = ("self_consistency", "least_to_most", "self_verify", "tot")  # strategies besides direct and CoT


@dataclass
class Config:
    limit: int = 100  # test items per task; every compared arm answers the same ones
    max_new_tokens: int = 160  # generation budget of a worked answer (6-word least-to-most needs ~130 tokens)
    samples: int = 5  # self-consistency: sampled answers per item
    temperature: float = 0.7  # sampling temperature of self-consistency, retries and tree-of-thought steps
    reasoning_tasks: list[str] = field(default_factory=lambda: ["arithmetic", "coin_flip", "last_letter",
                                                                "multiple_choice"])  # CoT vs direct rows
    cot_tasks: list[str] = field(default_factory=lambda: ["arithmetic", "coin_flip"])  # the >= 20-point lessons
    cot_margin: float = 0.20  # chain of thought must beat direct by at least this (issue 22)
    sc_task: str = "arithmetic"  # self-consistency vs chain of thought
    sc_margin: float = 0.05  # non-inferiority margin: SC holds ">= CoT" when its interval stays above -margin
    l2m_task: str = "last_letter"  # the compositional task: least-to-most vs chain of thought
    icl_task: str = "coin_flip"  # in-context learning on the pretrained model
    icl_shots: int = 3
    strategies: list[str] = field(default_factory=lambda: list(OPTIONAL))  # which of OPTIONAL to run
    search_limit: int = 12  # items for self-verification and tree of thoughts (cost grows ~10x per item)
    needle_lengths: list[int] = field(default_factory=lambda: [64, 128, 192, 256, 320, 384, 448])
    needle_depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    needle_trials: int = 4  # needles per (length, depth) cell
    needle_model: str = "sft"  # "sft": the chat model asked like the world's needle rows; "base": a cloze
    trained_context: int = 0  # the needle lesson counts cells up to this length (0: that model's training seq_len)
    needle_target: float = 0.8
    ngram: int = 8  # contamination n-gram size


@dataclass
class Outputs:
    checkpoint: str  # the model under test
    direct: dict[str, float]  # task -> direct score
    strategies: dict[str, float]  # strategy -> mean score on the reasoning tasks it ran on
    needle: float  # needle-in-a-haystack accuracy within the trained context (pretrained model)


def EvalConfigStub() -> EvalConfig:  # noqa: N802  (reads like the class it builds)
    """The default `EvalConfig` (retries, tree-of-thought shape, seed) for calling the lesson helpers directly."""
    from genforge.eval.harness import EvalConfig

    return EvalConfig()


class CountingGen:
    """`LM.generate` that counts the sequences it is asked for: the cost of a strategy in model calls."""

    def __init__(self, gen: Callable[..., list[list[str]]]):
        self.gen, self.calls = gen, 0

    def __call__(self, prompts: list[str], **kw) -> list[list[str]]:
        self.calls += len(prompts) * int(kw.get("n", 1))
        return self.gen(prompts, **kw)


def run(ctx: StageContext, cfg: Config, report: StageReport, *, world: world.Outputs, clean: clean.Outputs,
        sft: sft.Outputs) -> Outputs:
    """Direct scores, prompting lessons, in-context learning, multiple choice, needle grid, contamination."""
    from genforge.checkpoint import load_checkpoint
    from genforge.eval.harness import EvalConfig
    from genforge.eval.lm import GenforgeLM
    from genforge.eval.tasks import resolve_tasks

    model, tok, sft_meta = load_checkpoint(sft.checkpoint)
    lm = GenforgeLM(model, tok, chat=True)
    out = ctx.path("eval")
    ecfg = EvalConfig(checkpoint=sft.checkpoint, tasks_dir=world.dir, chat=True, max_new_tokens=cfg.max_new_tokens,
                      samples=cfg.samples, temperature=cfg.temperature, seed=ctx.seed, contamination=[clean.clean],
                      ngram=cfg.ngram)
    report.note(f"Model under test: `{sft.checkpoint}` (chat template), {cfg.limit} test items per task, greedy "
                "unless a strategy samples. In-context learning uses the pretrained model "
                f"`{sft.base}` (no chat template). Intervals: 95 % paired bootstrap over the shared test items.")
    tasks = resolve_tasks("all", world.dir, "test")
    t0 = time.perf_counter()
    direct = direct_results(lm, tasks, cfg.limit, out / "direct", ecfg)
    _report_direct(report, direct)
    by_task = {t.name: t for t in tasks}
    means = prompting_lessons(ctx, report, lm, cfg, ecfg, by_task, out)
    _multiple_choice_lesson(report, direct)
    base, base_tok, base_meta = load_checkpoint(sft.base)
    base_lm = GenforgeLM(base, base_tok, chat=False)
    needle_lm, meta = (base_lm, base_meta) if cfg.needle_model == "base" else (lm, sft_meta)
    if not cfg.trained_context:
        cfg = dataclasses.replace(cfg, trained_context=trained_seq_len(meta, needle_lm.max_len))
    if cfg.icl_task in by_task:
        icl_lesson(report, base_lm, by_task[cfg.icl_task], cfg, out)
    needle = needle_lesson(ctx, report, needle_lm, cfg, out)
    _contamination(report, tasks, ecfg, out)
    report.row("eval stage seconds (wall)", round(time.perf_counter() - t0, 1), note="all of the above")
    return Outputs(checkpoint=sft.checkpoint, direct={t: v["score"] for t, v in direct["tasks"].items()},
                   strategies=means, needle=needle)


# ---- direct answers of every task ----------------------------------------------------------------------------

def direct_results(lm: GenforgeLM, tasks: list[Task], limit: int, out: Path | None, ecfg: EvalConfig) -> dict:
    """The direct strategy in `genforge eval`'s results format: generative tasks through
    `genforge.eval.score.score_task_rows` (the SFT and align sections' numbers), multiple choice by log-likelihood.
    Each task's per-item scores are kept under "items" (multiple choice: 1/0 per item, and "chance")."""
    from genforge.eval.harness import MAIN_METRIC, _eval_mc
    from genforge.eval.score import score_task_rows
    from genforge.io import write_json, write_jsonl

    results: dict = {"run": {"strategy": "direct", "limit": limit, "checkpoint": ecfg.checkpoint, "chat": lm.chat,
                             "seed": ecfg.seed}, "tasks": {}}
    for task in tasks:
        t0 = time.time()
        rows = task.load(limit)
        if task.metric == "mc":
            recs, agg = _eval_mc(lm, task, rows, ecfg)
            results["tasks"][task.name] = {"metric": "acc", "score": agg["acc"], "n": len(recs),
                                           "strategy": "loglikelihood", "seconds": round(time.time() - t0, 2),
                                           "metrics": agg, "items": [r["score"] for r in recs],
                                           "chance": [1 / len(r["options"]) for r in recs]}
            if out is not None:
                write_jsonl(out / "items" / f"{task.name}.jsonl", recs)
            continue
        s = score_task_rows(lm.model, lm.tokenizer, task.name, rows)
        results["tasks"][task.name] = {"metric": MAIN_METRIC[s.metric], "score": s.score, "n": len(rows),
                                       "strategy": "direct", "seconds": round(time.time() - t0, 2),
                                       "metrics": s.metrics, "items": s.items}
        if out is not None:
            write_jsonl(out / "items" / f"{task.name}.jsonl",
                        [{"line": r["_line"], "prompt": r["prompt"], "output": p, "answer": a, "score": x}
                         for r, p, a, x in zip(rows, s.predictions, s.answers, s.items)])
    if out is not None:
        write_json(out / "results.json", {**results, "tasks": {k: {x: y for x, y in v.items() if x not in
                                                                   ("items", "chance")}
                                                               for k, v in results["tasks"].items()}})
    return results


def _report_direct(report: StageReport, direct: dict) -> None:
    from genforge.eval.harness import report_rows

    for r in report_rows(direct):
        report.row(**r)


# ---- prompting lessons ---------------------------------------------------------------------------------------

def style_task(task: Task, style: str) -> Task:
    """The task with each row asked in one phrasing (`row["prompts"][style]`; rows without it keep their prompt)."""
    from genforge.eval.tasks import style_prompt

    return dataclasses.replace(task, build_prompt=lambda row: style_prompt(row, style))


def score_strategy(lm: GenforgeLM, task: Task, rows: list[dict], strategy: str, cfg: Config, ecfg: EvalConfig,
                   out: Path | None) -> dict:
    """One strategy on `rows`: {"items": per-item scores, "score", "calls_per_item", "seconds"}.

    direct / cot / l2m: the row's trained phrasing for that style, greedy. self_consistency: the CoT phrasing,
    `samples` answers at `temperature`, majority vote. self_verify / tot: `genforge.eval.prompting` on the CoT
    phrasing. Model calls are generated sequences (a self-consistency item costs `samples`).
    """
    from genforge.eval import prompting
    from genforge.eval.harness import _score_generative
    from genforge.io import write_jsonl

    t0 = time.perf_counter()
    gen = CountingGen(lm.generate)
    style = {"direct": "direct", "l2m": "l2m"}.get(strategy, "cot")
    styled = style_task(task, style)
    prompts = [styled.build_prompt(r) for r in rows]
    greedy = dict(max_new_tokens=cfg.max_new_tokens, temperature=0.0, n=1, seed=None, stop=())
    if strategy in ("direct", "cot", "l2m"):
        recs = [{"output": o[0]} for o in gen(prompts, **greedy)]
    elif strategy == "self_consistency":
        recs = prompting.self_consistency(gen, prompts, extract=task.extract, k=cfg.samples,
                                          temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                                          seed=ecfg.seed)
    elif strategy == "self_verify":
        recs = prompting.self_verify(gen, prompts, extract=task.extract, max_retries=ecfg.retries,
                                     temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=ecfg.seed)
    elif strategy == "tot":
        tcfg = prompting.ToTConfig(branching=ecfg.tot_branching, beam_width=ecfg.tot_beam, depth=ecfg.tot_depth,
                                   temperature=cfg.temperature, seed=ecfg.seed)
        recs = []
        for p in prompts:
            r = prompting.tree_of_thoughts(gen, p, extract=task.extract, cfg=tcfg)
            recs.append({"output": "\n".join(r.steps), "answer": r.answer, "value": r.value})
    else:
        raise ValueError(f"score_strategy: unknown strategy {strategy!r}")
    for r, p in zip(recs, prompts):
        r.setdefault("prompt", p)
    items, agg = _score_generative(styled, rows, recs)
    if out is not None:
        write_jsonl(out / strategy / f"{task.name}.jsonl", items)
    scores = [i["score"] for i in items]
    return {"items": scores, "score": sum(scores) / len(scores), "calls_per_item": gen.calls / len(rows),
            "seconds": round(time.perf_counter() - t0, 2)}


def prompting_lessons(ctx: StageContext, report: StageReport, lm: GenforgeLM, cfg: Config, ecfg: EvalConfig,
                      tasks: dict[str, Task], out: Path) -> dict[str, float]:
    """CoT vs direct per reasoning task; the lessons; a bar plot of accuracy per strategy. Returns strategy -> mean
    accuracy over the tasks it ran on."""
    from genforge.eval.stats import bootstrap_diff, bootstrap_proportion
    from genforge.report import bar_plot

    tasks = dict(tasks)  # multiple choice is re-scored by generation below, without changing the caller's tasks
    res: dict[tuple[str, str], dict] = {}

    def get(strategy: str, name: str, limit: int | None = None) -> dict:
        key = (strategy, name if limit is None else f"{name}@{limit}")
        if key not in res:
            rows = tasks[name].load(limit or cfg.limit)
            res[key] = score_strategy(lm, tasks[name], rows, strategy, cfg, ecfg, out)
        return res[key]

    reasoning = [t for t in cfg.reasoning_tasks if t in tasks]
    for name in reasoning:
        if tasks[name].metric == "mc":  # generative multiple choice: the letter after a worked answer
            tasks[name] = dataclasses.replace(tasks[name], metric="exact_match")
        d, c = get("direct", name), get("cot", name)
        report.row(f"{name}: chain of thought vs direct (exact match)", c["score"], d["score"],
                   f"both in the phrasing SFT trained; n={len(c['items'])}")
    for name in [t for t in cfg.cot_tasks if t in tasks]:
        d, c = get("direct", name), get("cot", name)
        report.lesson(f"chain of thought beats direct answering by >= {cfg.cot_margin:.0%} points ({name})",
                      ("accuracy, chain of thought", bootstrap_proportion(c["items"])),
                      ("accuracy, direct answer", bootstrap_proportion(d["items"])),
                      effect=bootstrap_diff(c["items"], d["items"], paired=True), target=cfg.cot_margin,
                      note=f"same {len(c['items'])} test items, greedy; model calls per item 1 vs 1")
    if "self_consistency" in cfg.strategies and cfg.sc_task in tasks:
        c, s = get("cot", cfg.sc_task), get("self_consistency", cfg.sc_task)
        # Non-inferiority is hollow when chain of thought solves nothing (0 vs 0 would "hold"): then only a strict
        # improvement counts.
        solved = c["score"] > 0
        report.lesson(f"self-consistency@{cfg.samples} is at least as accurate as chain of thought ({cfg.sc_task}; "
                      f"non-inferiority margin {cfg.sc_margin:.0%})",
                      (f"accuracy, self-consistency@{cfg.samples}", bootstrap_proportion(s["items"])),
                      ("accuracy, greedy chain of thought", bootstrap_proportion(c["items"])),
                      effect=bootstrap_diff(s["items"], c["items"], paired=True),
                      target=-cfg.sc_margin if solved else 0.0,
                      note=f"T={cfg.temperature}, majority vote; model calls per item {s['calls_per_item']:.0f} vs 1"
                           + ("" if solved else "; CoT solves no item, so only a strict gain counts"))
    if "least_to_most" in cfg.strategies and cfg.l2m_task in tasks:
        c, m = get("cot", cfg.l2m_task), get("l2m", cfg.l2m_task)
        report.lesson(f"least-to-most beats chain of thought on the compositional task ({cfg.l2m_task})",
                      ("accuracy, least-to-most", bootstrap_proportion(m["items"])),
                      ("accuracy, chain of thought", bootstrap_proportion(c["items"])),
                      effect=bootstrap_diff(m["items"], c["items"], paired=True), target=0.0,
                      note="one pass: prefixes solved in order, each from the last (Zhou et al. 2023's last-letter "
                           "setup); CoT lists the letters and joins them at the end")
    for strategy in ("self_verify", "tot"):
        if strategy in cfg.strategies and cfg.sc_task in tasks:
            c, x = get("cot", cfg.sc_task, cfg.search_limit), get(strategy, cfg.sc_task, cfg.search_limit)
            label = {"self_verify": "self-verification", "tot": "tree of thoughts (BFS)"}[strategy]
            report.row(f"{label}: accuracy on {cfg.sc_task} (model calls per item)", x["score"], c["score"],
                       f"{x['calls_per_item']:.1f} model calls per item vs 1 for greedy CoT (the baseline); "
                       f"n={len(x['items'])}, {x['seconds']:.0f} s")
    for (strategy, name), r in res.items():
        report.row(f"cost: {strategy} on {name}", round(r["calls_per_item"], 2),
                   note=f"model calls per item; {r['seconds']:.1f} s wall for {len(r['items'])} items")
    by_strategy: dict[str, list[float]] = {}
    for (strategy, name), r in res.items():
        if "@" not in name:
            by_strategy.setdefault(strategy, []).append(r["score"])
    means = {s: sum(v) / len(v) for s, v in by_strategy.items()}
    if means:
        bar_plot(ctx.path("plots", "prompting_strategies.png"), list(means), list(means.values()),
                 "Reasoning accuracy by prompting strategy", "mean exact match over the tasks each ran on")
        report.plot("plots/prompting_strategies.png", "Mean exact match per prompting strategy (same test items)")
    return means


# ---- in-context learning, multiple choice, needle ------------------------------------------------------------

def icl_prompts(task: Task, rows: Sequence[dict], shots: int) -> tuple[list[str], list[str]]:
    """(zero-shot, few-shot) prompts for a pretrained model: "Question: ...\\nAnswer:" with no example, or after
    `shots` solved train rows (their worked answers). The bare question is used (no instruction line)."""
    from genforge.eval import prompting

    examples = [prompting.Example(r.get("question", r["prompt"]), r.get("responses", {}).get("cot", r["response"]))
                for r in task.examples(shots)]
    qs = [r.get("question", r["prompt"]) for r in rows]
    zero = [prompting.shot(q) for q in qs]
    few = [prompting.few_shot_prompt(q, examples) for q in qs]
    return zero, few


def icl_lesson(report: StageReport, base_lm: GenforgeLM, task: Task, cfg: Config, out: Path) -> None:
    """In-context learning (Brown et al. 2020): the pretrained model answers the same items with and without
    `icl_shots` solved examples; exact match of the world's extraction."""
    from genforge.eval import prompting
    from genforge.eval.score import score_outputs
    from genforge.eval.stats import bootstrap_diff, bootstrap_proportion
    from genforge.io import write_jsonl

    rows = task.load(cfg.limit)
    zero, few = icl_prompts(task, rows, cfg.icl_shots)
    kw = dict(max_new_tokens=cfg.max_new_tokens, temperature=0.0, stop=prompting.FEW_SHOT_STOP, n=1, seed=None)
    s0 = score_outputs(task.name, rows, [o[0] for o in base_lm.generate(zero, **kw)])
    s1 = score_outputs(task.name, rows, [o[0] for o in base_lm.generate(few, **kw)])
    write_jsonl(out / "icl" / f"{task.name}.jsonl",
                [{"zero_shot": a, "few_shot": b, "score_zero": x, "score_few": y, "answer": r["answer"]}
                 for a, b, x, y, r in zip(s0.predictions, s1.predictions, s0.items, s1.items, rows)])
    report.lesson(f"in-context learning: {cfg.icl_shots}-shot beats zero-shot on the pretrained model ({task.name})",
                  (f"accuracy, {cfg.icl_shots}-shot", bootstrap_proportion(s1.items)),
                  ("accuracy, zero-shot", bootstrap_proportion(s0.items)),
                  effect=bootstrap_diff(s1.items, s0.items, paired=True), target=0.0,
                  note=f"greedy, 'Question:/Answer:' frame, examples are solved train rows; n={len(rows)}. At this "
                       "scale the examples teach mostly the answer's format and label space (Min et al. 2022)")


def _multiple_choice_lesson(report: StageReport, direct: dict) -> None:
    from genforge.eval.stats import bootstrap_mean, bootstrap_proportion

    for name, t in direct["tasks"].items():
        if t["strategy"] != "loglikelihood":
            continue
        m, items, chance = t["metrics"], t["items"], t["chance"]
        flips = f"; answer changes when the options are reordered: {m['flip_rate']:.0%}" if "flip_rate" in m else ""
        report.lesson(f"multiple choice is clearly above chance ({name}, log-likelihood of each option)",
                      ("accuracy", bootstrap_proportion(items)), ("chance", sum(chance) / len(chance)),
                      effect=bootstrap_mean([x - c for x, c in zip(items, chance)]), target=0.0,
                      note=f"n={len(items)}; letter-format accuracy {m.get('acc_letter', float('nan')):.2f}{flips}")


def trained_seq_len(meta: dict, default: int) -> int:
    """The sequence length a checkpoint was trained at, from its genforge.json (pretraining: run.seq_len; SFT:
    run.data.seq_len)."""
    run = meta.get("run") or {}
    return int(run.get("seq_len") or (run.get("data") or {}).get("seq_len") or default)


def needle_lesson(ctx: StageContext, report: StageReport, lm: GenforgeLM, cfg: Config, out: Path) -> float:
    """Needle in a haystack at lengths within and beyond the model's trained context; the lesson counts the cells
    within it. A chat model is asked like the world's needle rows, a pretrained one with a cloze on the needle's
    lead-in (it continues text; it does not answer questions). Returns the accuracy within the trained context."""
    from genforge.eval.needle import needle_grid, plot_needle, world_case, world_cloze_case
    from genforge.eval.stats import bootstrap_proportion
    from genforge.io import write_jsonl

    lengths = [n for n in cfg.needle_lengths if n + 64 <= lm.max_len]
    chat = getattr(lm, "chat", False)
    res = needle_grid(lm, context_lengths=lengths, depths=cfg.needle_depths, trials=cfg.needle_trials,
                      seed=ctx.seed, max_new_tokens=32 if chat else 8, case_fn=world_case if chat else world_cloze_case)
    write_jsonl(out / "items" / "needle.jsonl", res["items"])
    plot = plot_needle(res, ctx.path("plots", "needle.png"),
                       f"Needle in a haystack ({'chat' if chat else 'pretrained'} model)")
    report.plot(str(plot.relative_to(ctx.run_dir)),
                f"Needle accuracy by context length and depth; trained context {cfg.trained_context} tokens")
    inside = [i["correct"] for i in res["items"] if i["context_length"] <= cfg.trained_context]
    beyond = [i["correct"] for i in res["items"] if i["context_length"] > cfg.trained_context]
    if beyond:
        report.row(f"needle accuracy beyond the trained context (> {cfg.trained_context} tokens)",
                   sum(beyond) / len(beyond), note=f"n={len(beyond)}; where it degrades, see the heatmap")
    if not inside:
        return float("nan")
    ci = bootstrap_proportion(inside)
    report.lesson(f"needle in a haystack >= {cfg.needle_target} within the trained context "
                  f"(<= {cfg.trained_context} tokens)", ("retrieval accuracy", ci), None, effect=ci,
                  target=cfg.needle_target, effect_name="accuracy",
                  note=f"n={len(inside)} needles over {len(cfg.needle_depths)} depths; world text as the haystack")
    return ci.estimate


def _contamination(report: StageReport, tasks: list[Task], ecfg: EvalConfig, out: Path) -> None:
    from genforge.eval.harness import run_contamination

    contam = run_contamination(tasks, ecfg, out)
    report.row(f"eval items contaminated ({contam['n']}-gram overlap with the corpus)", contam["rate"],
               note=f"{contam['n_flagged']} of {contam['n_items']} items flagged; list in eval/contamination.json")
