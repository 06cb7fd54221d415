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
Issue 19's rows (`issue19_lessons`, each on a small fixed subsample so the stage stays cheap at tiny):
- few-shot vs zero-shot on the tuned model; zero-shot CoT ("Let's think step by step") vs few-shot CoT;
- the tuned model as an LLM judge: agreement with the world's oracle, position and length bias;
- prompt search: APE (the model proposes instructions from solved examples) and RL (a phrase policy trained with
  GRPO, `eval.rl_prompt`) at about equal model calls, carried to held-out items and a held-out task family;
- wrong-label demonstrations (correct / random / flipped) for two pretrained sizes (the data lessons' small model);
- prompt variants (`eval.variants`) on the SFT and an aligned model, a table of paired deltas;
- contamination by asking (items planted in the corpus by `world.tom.plant`), false belief with unseen names,
  a BIG-bench-style composite suite, and diversity (distinct-n, self-BLEU) vs temperature and alignment.
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
from genforge.speedrun import align, clean, datalessons, sft, world
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
    # Self-consistency's sampling temperature. A small model's worked answers break at T=0.7 (each sampled digit
    # step can go wrong; measured on 60 arithmetic items of the tiny chat model: greedy 0.70, SC@5 at T=0.5 0.58,
    # at T=0.3 0.72), so the vote needs samples that stay near the greedy path but still differ.
    sc_temperature: float = 0.3
    temperature: float = 0.7  # sampling temperature of retries (self-verification) and tree-of-thought steps
    reasoning_tasks: list[str] = field(default_factory=lambda: ["arithmetic", "coin_flip", "last_letter",
                                                                "multiple_choice"])  # CoT vs direct rows
    cot_tasks: list[str] = field(default_factory=lambda: ["arithmetic", "coin_flip"])  # the >= 20-point lessons
    cot_margin: float = 0.20  # chain of thought must beat direct by at least this (issue 22)
    sc_task: str = "arithmetic"  # self-consistency vs chain of thought
    sc_margin: float = 0.05  # non-inferiority margin: SC holds ">= CoT" when its interval stays above -margin
    l2m_task: str = "last_letter"  # the compositional task: least-to-most vs chain of thought
    # in-context learning on the pretrained model: a task whose zero-shot answers miss the format (the pretrained
    # model continues multiple-choice questions with unrelated text); on coin_flip every arm sits at chance, since the
    # pretrained model tracks no coin whatever the prompt
    icl_task: str = "multiple_choice"
    icl_shots: int = 3
    icl_style: str = "direct"  # the demonstrations' answers: "direct" (short, so several fit the context) or "cot"
    icl_limit: int = 200  # in-context learning items (no chat, short prompts: cheap; 100 left a +0.07 unresolved)
    icl_tokens: int = 48  # the few-shot arm's answer budget (a short worked answer: "... That is option C: Y.\nThe
    #                       answer is C.")
    strategies: list[str] = field(default_factory=lambda: list(OPTIONAL))  # which of OPTIONAL to run
    search_limit: int = 12  # items for self-verification and tree of thoughts (cost grows ~10x per item)
    needle_lengths: list[int] = field(default_factory=lambda: [64, 128, 192, 256, 320, 384, 448])
    needle_depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    needle_trials: int = 4  # needles per (length, depth) cell
    needle_model: str = "sft"  # "sft": the chat model asked like the world's needle rows; "base": a cloze
    trained_context: int = 0  # the needle lesson counts cells up to this length (0: that model's training seq_len)
    needle_target: float = 0.8
    ngram: int = 8  # contamination n-gram size
    # issue 19's rows: small fixed subsamples so the stage stays cheap at tiny (every arm scores the same items)
    lessons19: bool = True  # few-shot on the tuned model, CoT prompting, judge, APE/RL search, wrong labels, ...
    lesson_limit: int = 60  # test items for those rows
    short_tokens: int = 48  # generation budget of a direct answer (APE, RL search, variants, tuned few-shot)
    prompt_task: str = "coin_flip"  # the task of APE, RL prompt search, prompt variants and tuned few-shot
    transfer_task: str = "date_arithmetic"  # the held-out task family APE's instruction is carried to
    cot_prompt_task: str = "coin_flip"  # zero-shot vs few-shot chain of thought
    ape_dev: int = 40  # dev items APE and the RL search score candidates on (16 gave +-0.12 of noise at chance)
    ape_generated: int = 4  # instructions the model proposes (besides prompting.SEED_INSTRUCTIONS)
    rl_group: int = 4  # RL prompt search: prompts per GRPO step
    rl_batch: int = 4  # RL prompt search: dev items per step (steps are set so calls ~ APE's)
    instruction_at: str = "end"  # where APE / RL put an instruction: "end" (the world's own place) or "start"
    judge_pairs: int = 120  # forced-choice verdicts are 4 short forwards per pair: cheap enough for more pairs
    judge_words: int = 30  # responses are clipped to this many words so the judge prompt fits the context
    wrong_label_k: int = 4  # demonstrations per prompt
    wrong_label_items: int = 60
    wrong_label_models: list[str] = field(default_factory=list)  # more pretrained checkpoints (run-relative or
    #                                                               absolute; missing ones are skipped)
    variants: list[str] = field(default_factory=lambda: ["explain_first", "analysis", "emotion", "tip", "penalty",
                                                         "do", "dont", "unbiased", "trigger"])
    variant_limit: int = 40
    variant_style: str = "direct"  # the world phrasing the variants extend ("direct" keeps answers short)
    aligned: str = "dpo"  # the aligned model of the variants and diversity rows (dpo | ppo: align's Outputs)
    contam_words: int = 12  # contamination by asking: words of the continuation compared
    contam_ngram: int = 13  # n of the n-gram check beside it (GPT-3's 13; shorter n-grams match the family's template)
    contam_clean: int = 48  # clean (never planted) items of the same family to compare with
    tom_items: int = 300  # false-belief items (a third each: false belief, true belief, reality; 20 per kind left
    #                       intervals of +-0.2 around chance; option log-likelihood is cheap)
    composite_tasks: list[str] = field(default_factory=lambda: ["arithmetic", "coin_flip", "last_letter",
                                                                "date_arithmetic", "multiple_choice"])
    div_prompts: int = 12
    div_samples: int = 4
    div_tokens: int = 48
    div_temperatures: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.5])
    div_compare_at: float = 1.0  # temperature of the before/after-alignment comparison


@dataclass
class Outputs:
    checkpoint: str  # the model under test
    direct: dict[str, float]  # task -> direct score
    strategies: dict[str, float]  # strategy -> mean score on the reasoning tasks it ran on
    needle: float  # needle-in-a-haystack accuracy within the trained context (pretrained model)
    instructions: dict[str, str] = field(default_factory=dict)  # prompt search: method -> best instruction found


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
        sft: sft.Outputs, align: align.Outputs, datalessons: datalessons.Outputs) -> Outputs:
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
    t0, cpu0 = time.perf_counter(), time.process_time()
    direct = direct_results(lm, tasks, cfg.limit, out / "direct", ecfg)
    _report_direct(report, direct)
    by_task = {t.name: t for t in tasks}
    means = prompting_lessons(ctx, report, lm, cfg, ecfg, by_task, out)
    base, base_tok, base_meta = load_checkpoint(sft.base)
    base_lm = GenforgeLM(base, base_tok, chat=False)
    mc = by_task.get("multiple_choice")
    _multiple_choice_lesson(report, direct, fact_sentence_accuracy(base_lm, mc.load(cfg.limit)) if mc else None)
    needle_lm, meta = (base_lm, base_meta) if cfg.needle_model == "base" else (lm, sft_meta)
    if not cfg.trained_context:
        cfg = dataclasses.replace(cfg, trained_context=trained_seq_len(meta, needle_lm.max_len))
    if cfg.icl_task in by_task:
        icl_lesson(report, base_lm, by_task[cfg.icl_task], cfg, out, trained_seq_len(base_meta, base_lm.max_len))
    needle = needle_lesson(ctx, report, needle_lm, cfg, out)
    _contamination(report, tasks, ecfg, out)
    instructions = {}
    if cfg.lessons19:
        smaller = [datalessons.checkpoint] if datalessons.checkpoint else []
        instructions = issue19_lessons(ctx, report, cfg, lm, base_lm, by_task, direct, world.dir, clean.clean,
                                       getattr(align, cfg.aligned, ""), smaller, out)
    report.row("eval stage seconds (wall)", round(time.perf_counter() - t0, 1),
               note=f"all of the above; CPU {time.process_time() - cpu0:.0f} s")
    return Outputs(checkpoint=sft.checkpoint, direct={t: v["score"] for t, v in direct["tasks"].items()},
                   strategies=means, needle=needle, instructions=instructions)


def issue19_lessons(ctx: StageContext, report: StageReport, cfg: Config, lm: GenforgeLM, base_lm: GenforgeLM,
                    tasks: dict[str, Task], direct: dict, world_dir: str, corpus: str, aligned: str,
                    smaller: list[str], out: Path) -> dict[str, str]:
    """The prompting and evaluation rows of issue 19, each timed (CPU seconds in the last row)."""
    from genforge.checkpoint import load_checkpoint
    from genforge.eval.lm import GenforgeLM

    cpu: dict[str, float] = {}

    def timed(name: str, fn, *a, **kw):
        t = time.process_time()
        r = fn(*a, **kw)
        cpu[name] = time.process_time() - t
        return r

    models = {"SFT": lm}
    if aligned and Path(aligned).exists():
        a_model, a_tok, _ = load_checkpoint(aligned)
        models[f"aligned ({cfg.aligned})"] = GenforgeLM(a_model, a_tok, chat=True)
    pt = tasks.get(cfg.prompt_task)
    found: dict[str, str] = {}
    if pt is not None:
        timed("tuned few-shot", tuned_fewshot_lesson, report, lm, pt, cfg, out)
        found = timed("prompt search", prompt_search_lessons, ctx, report, lm, pt, cfg, out,
                      tasks.get(cfg.transfer_task))
        timed("variants", variants_lesson, ctx, report, models, pt, cfg, out)
    if cfg.cot_prompt_task in tasks:
        timed("CoT prompting", cot_prompting_lesson, report, lm, tasks[cfg.cot_prompt_task], cfg, out)
    timed("judge", judge_lesson, report, lm, world_dir, cfg, ctx.seed, out)
    def millions(m) -> str:
        return f"{sum(x.numel() for x in m.parameters()) / 1e6:.2f} M"

    bases = {f"pretrained ({millions(base_lm.model)})": base_lm}
    # more sizes: the data lessons' smaller model (same corpus, fewer steps) and any checkpoints the config names
    for p in list(smaller) + list(cfg.wrong_label_models):
        path = Path(p) if Path(p).is_absolute() else Path(ctx.run_dir) / p
        if (path / "config.json").exists():
            m, t, _ = load_checkpoint(path)
            bases[f"{path.parent.parent.name}/{path.parent.name} ({millions(m)})"] = GenforgeLM(m, t, chat=False)
    timed("wrong labels", wrong_labels_lesson, report, bases, world_dir, cfg, ctx.seed, out)
    timed("contamination by asking", contamination_lesson, report, base_lm, world_dir, corpus, cfg, out, ctx.seed)
    fb = timed("false belief", tom_lesson, report, {"SFT": lm, "pretrained": base_lm}, world_dir, corpus, cfg,
               ctx.seed, out)
    composite_lesson(report, direct, tasks, {"false_belief": (fb, 0.5)} if fb else {}, cfg)
    timed("diversity", diversity_lesson, ctx, report, models, world_dir, cfg, out)
    report.row("issue-19 rows: CPU seconds per part", round(sum(cpu.values()), 1), None,
               ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()))
    return found


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
    `samples` answers at `sc_temperature`, majority vote. self_verify / tot: `genforge.eval.prompting` on the CoT
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
                                          temperature=cfg.sc_temperature, max_new_tokens=cfg.max_new_tokens,
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
                      note=f"T={cfg.sc_temperature}, majority vote; model calls per item {s['calls_per_item']:.0f} vs 1"
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

def icl_prompts(task: Task, rows: Sequence[dict], shots: int, style: str = "cot") -> tuple[list[str], list[str]]:
    """(zero-shot, few-shot) prompts for a pretrained model: "Question: ...\nAnswer:" with no example, or after
    `shots` solved train rows (their answers in the world's `style`: "cot" worked, "direct" "The answer is X.").
    The bare question is used (no instruction line)."""
    from genforge.eval import prompting

    examples = [prompting.Example(r.get("question", r["prompt"]), r.get("responses", {}).get(style, r["response"]))
                for r in task.examples(shots)]
    qs = [r.get("question", r["prompt"]) for r in rows]
    zero = [prompting.shot(q) for q in qs]
    few = [prompting.few_shot_prompt(q, examples) for q in qs]
    return zero, few


def fit_shots(task: Task, rows: Sequence[dict], shots: int, style: str, count: Callable[[str], int],
              budget: int) -> int:
    """The most demonstrations (<= shots) whose longest few-shot prompt is at most `budget` tokens. Demonstrations
    that overflow the trained context are cut from the left by the LM (a fragment that starts mid-example) and read
    at positions the model never trained on: three worked coin flips (486-518 tokens for a 256-token model) scored
    0.11, far below the 0.53 of no demonstrations at all."""
    for k in range(shots, 0, -1):
        if max(count(p) for p in icl_prompts(task, rows, k, style)[1]) <= budget:
            return k
    return 0


def icl_lesson(report: StageReport, base_lm: GenforgeLM, task: Task, cfg: Config, out: Path,
               context: int = 0) -> None:
    """In-context learning (Brown et al. 2020): the pretrained model answers the same items with and without up to
    `icl_shots` solved examples (as many as fit its trained `context` with `icl_tokens` to answer in); exact match
    of the world's extraction. Zero-shot gets `max_new_tokens` (the pretrained model writes worked answers)."""
    from genforge.eval import prompting
    from genforge.eval.score import score_outputs
    from genforge.eval.stats import bootstrap_diff, bootstrap_proportion
    from genforge.io import write_jsonl

    rows = task.load(cfg.icl_limit)
    context = context or base_lm.max_len
    shots = fit_shots(task, rows, cfg.icl_shots, cfg.icl_style, base_lm.count_tokens, context - cfg.icl_tokens)
    if shots == 0:
        report.row(f"in-context learning ({task.name})", "not measured", None,
                   f"one demonstration does not fit the trained context ({context} tokens)")
        return
    zero, few = icl_prompts(task, rows, shots, cfg.icl_style)
    kw = dict(temperature=0.0, stop=prompting.FEW_SHOT_STOP, n=1, seed=None)
    o0 = [o[0] for o in base_lm.generate(zero, max_new_tokens=cfg.max_new_tokens, **kw)]
    o1 = [o[0] for o in base_lm.generate(few, max_new_tokens=cfg.icl_tokens, **kw)]
    s0, s1 = score_outputs(task.name, rows, o0), score_outputs(task.name, rows, o1)
    fmt = [[float("the answer is" in o.lower()) for o in outs] for outs in (o0, o1)]
    write_jsonl(out / "icl" / f"{task.name}.jsonl",
                [{"zero_shot": a, "few_shot": b, "score_zero": x, "score_few": y, "answer": r["answer"]}
                 for a, b, x, y, r in zip(s0.predictions, s1.predictions, s0.items, s1.items, rows)])
    chance = _answer_chance(task)
    report.lesson(f"in-context learning: {shots}-shot beats zero-shot on the pretrained model ({task.name})",
                  (f"accuracy, {shots}-shot", bootstrap_proportion(s1.items)),
                  ("accuracy, zero-shot", bootstrap_proportion(s0.items)),
                  effect=bootstrap_diff(s1.items, s0.items, paired=True), target=0.0,
                  note=f"greedy, 'Question:/Answer:' frame, the demonstrations are solved train rows in the "
                       f"'{cfg.icl_style}' style ('The answer is X.'), as many as fit the {context}-token trained "
                       f"context; n={len(rows)}. Answers in the format 'The answer is ...': "
                       f"{sum(fmt[1]) / len(rows):.2f} vs {sum(fmt[0]) / len(rows):.2f}. Chosen as a task whose "
                       "zero-shot answers miss the format (the pretrained model drifts into other documents); at this "
                       "scale the demonstrations teach the answer's format and label space (Min et al. 2022), not the "
                       "skill"
                       + (f": accuracy below chance ({chance:.2f}) stays below it, the model does not know the facts "
                          "asked (multiple-choice row)" if chance and s1.score < chance else ""))


def fact_sentence_accuracy(lm: GenforgeLM, rows: Sequence[dict]) -> list[float]:
    """Does the model know the facts the multiple-choice questions ask? Each row's first rationale line states the
    fact as the corpus does ("Petra Fairley lives in Larkcombe."); per row, 1 when the gold option is the likeliest
    of the options in that sentence (rows whose sentence does not contain the gold option once are skipped)."""
    pairs, golds = [], []
    for r in rows:
        first = str(r.get("rationale", "")).split("\n")[0]
        gold = str(r["options"][r["gold_index"]])
        if first.count(gold) != 1 or first.startswith(gold):
            continue
        i = first.index(gold)
        pre, post = first[:i].rstrip(" "), first[i + len(gold):]
        pairs += [(pre, f" {o}{post}") for o in r["options"]]
        golds.append((int(r["gold_index"]), len(r["options"])))
    ll, out, k = [x[0] for x in lm.loglikelihood(pairs)] if pairs else [], [], 0
    for g, n in golds:
        out.append(float(max(range(n), key=lambda j: ll[k + j]) == g))
        k += n
    return out


def _multiple_choice_lesson(report: StageReport, direct: dict, facts: list[float] | None = None) -> None:
    from genforge.eval.stats import bootstrap_mean, bootstrap_proportion

    for name, t in direct["tasks"].items():
        if t["strategy"] != "loglikelihood":
            continue
        m, items, chance = t["metrics"], t["items"], t["chance"]
        flips = f"; answer changes when the options are reordered: {m['flip_rate']:.0%}" if "flip_rate" in m else ""
        report.lesson(f"multiple choice is clearly above chance ({name}, log-likelihood of each option)",
                      ("accuracy", bootstrap_proportion(items)), ("chance", sum(chance) / len(chance)),
                      effect=bootstrap_mean([x - c for x, c in zip(items, chance)]), target=0.0,
                      note=f"n={len(items)}; letter-format accuracy {m.get('acc_letter', float('nan')):.2f}{flips}"
                           + (f". Does the model know the facts asked? The pretrained model picks the true option in "
                              f"the fact's own corpus sentence ('X lives in Y.') {_ci(bootstrap_proportion(facts))} "
                              f"(chance {sum(chance) / len(chance):.2f}, n={len(facts)}): a question about a fact the "
                              "model never learned cannot be answered by any scoring"
                              if facts else ""))


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


# ---- issue 19: prompting and evaluation lessons ---------------------------------------------------------------
# Each helper takes the models it needs and a small, fixed subsample of items (the stage's budget at tiny), scores
# every compared arm on the same items and reports paired intervals.

def _ci(i) -> str:
    return f"{i.estimate:.3f} [{i.low:.3f}, {i.high:.3f}]"


def _greedy(lm: GenforgeLM, prompts: list[str], max_new_tokens: int, stop: Sequence[str] = ()) -> list[str]:
    return [o[0] for o in lm.generate(prompts, max_new_tokens=max_new_tokens, temperature=0.0, stop=tuple(stop),
                                      n=1, seed=None)]


def tuned_fewshot_lesson(report: StageReport, lm: GenforgeLM, task: Task, cfg: Config, out: Path) -> None:
    """Few-shot vs zero-shot on the TUNED model (the base model's row is `icl_lesson`): the trained prompt alone vs
    the same prompt after `icl_shots` solved examples in the "Question:/Answer:" frame."""
    from genforge.eval import prompting
    from genforge.eval.score import score_outputs
    from genforge.eval.stats import bootstrap_diff
    from genforge.io import write_jsonl

    rows = task.load(cfg.lesson_limit)
    styled = style_task(task, "direct")
    ex = [prompting.Example(styled.build_prompt(r), r.get("responses", {}).get("direct", r["response"]))
          for r in task.examples(cfg.icl_shots)]
    zero = [styled.build_prompt(r) for r in rows]
    few = [prompting.few_shot_prompt(p, ex) for p in zero]
    s0 = score_outputs(task.name, rows, _greedy(lm, zero, cfg.short_tokens, prompting.FEW_SHOT_STOP))
    s1 = score_outputs(task.name, rows, _greedy(lm, few, cfg.short_tokens, prompting.FEW_SHOT_STOP))
    write_jsonl(out / "fewshot_tuned" / f"{task.name}.jsonl",
                [{"zero": a, "few": b, "answer": r["answer"]} for a, b, r in zip(s0.predictions, s1.predictions, rows)])
    report.row(f"few-shot ({cfg.icl_shots}) minus zero-shot, tuned model ({task.name})",
               _ci(bootstrap_diff(s1.items, s0.items, paired=True)), None,
               f"accuracy {s1.score:.3f} vs {s0.score:.3f}; the tuned model already knows the format, so examples "
               f"matter less than for the pretrained model (row above); n={len(rows)}")


def cot_prompting_lesson(report: StageReport, lm: GenforgeLM, task: Task, cfg: Config, out: Path) -> None:
    """Zero-shot chain of thought ("Let's think step by step.", Kojima et al. 2022, two-stage answer extraction) vs
    few-shot chain of thought (`icl_shots` worked examples, Wei et al. 2022) on the bare question, tuned model."""
    from genforge.eval import prompting
    from genforge.eval.score import answers_match
    from genforge.eval.stats import bootstrap_diff
    from genforge.io import write_jsonl

    rows = task.load(cfg.lesson_limit)
    qs = [r.get("question", r["prompt"]) for r in rows]
    ex = [prompting.Example(r.get("question", r["prompt"]), r["response"], r.get("rationale", ""), r.get("answer", ""))
          for r in task.examples(cfg.icl_shots)]
    gen = CountingGen(lm.generate)
    zs = prompting.zero_shot_cot(gen, qs, extract=task.extract, max_new_tokens=cfg.max_new_tokens)
    fs_out = _greedy(lm, [prompting.few_shot_prompt(q, ex, cot=True) for q in qs], cfg.max_new_tokens,
                     prompting.FEW_SHOT_STOP)
    z = [answers_match(o["answer"], r["answer"]) for o, r in zip(zs, rows)]
    f = [answers_match(task.extract(o), r["answer"]) for o, r in zip(fs_out, rows)]
    write_jsonl(out / "cot_prompting" / f"{task.name}.jsonl",
                [{"zero_shot_cot": a["output"], "few_shot_cot": b, "answer": r["answer"]}
                 for a, b, r in zip(zs, fs_out, rows)])
    report.row(f"few-shot CoT minus zero-shot CoT ('{prompting.STEP_BY_STEP}'), tuned model ({task.name})",
               _ci(bootstrap_diff(f, z, paired=True)), None,
               f"accuracy {sum(f) / len(f):.3f} vs {sum(z) / len(z):.3f}; zero-shot CoT costs 2 model calls per item "
               f"(reasoning, then 'Therefore, the answer is'), few-shot 1; n={len(rows)}")


def judge_lesson(report: StageReport, lm: GenforgeLM, world_dir: str, cfg: Config, seed: int, out: Path) -> None:
    """The tuned model as a pairwise judge: agreement with the world's oracle on preference pairs (best vs worst
    completion of a prompt, oracle gap >= 0.2), position bias (both orders) and length bias (padding)."""
    import random

    from genforge.eval.judge import (
        PADDING,
        PAIRWISE_TEMPLATE,
        LoglikJudge,
        Pair,
        calibrated_winners,
        pairwise,
        verbosity_probe,
    )
    from genforge.eval.stats import bootstrap_mean
    from genforge.io import read_jsonl, write_json

    rng = random.Random(f"judge-{seed}")
    pairs, oracle_first, too_long = [], [], 0
    count = getattr(lm, "count_tokens", None)
    # a judge prompt past the trained context is read at positions the model never trained on (or cut from the
    # left, instructions first): 39 of 120 were, with long needle questions. 16 tokens: chat template and verdict
    room = cfg.trained_context - 16 if cfg.trained_context and count else None
    for _, row in read_jsonl(Path(world_dir) / "preferences.jsonl"):
        best, worst = row["ranking"][0], row["ranking"][-1]
        if row["scores"][best] - row["scores"][worst] < 0.2:
            continue
        clip = lambda t: " ".join(t.split()[:cfg.judge_words])  # noqa: E731  (prompts must fit the context)
        a, b = clip(row["completions"][best]), clip(row["completions"][worst])
        # the pair's prompt, and the length probe's (the oracle's better answer padded, against itself)
        if room is not None and max(count(PAIRWISE_TEMPLATE.format(question=row["prompt"], a=x, b=y))
                                    for x, y in ((a, b), (a + PADDING, a))) > room:
            too_long += 1
            continue
        first = rng.random() < 0.5
        pairs.append(Pair(row["prompt"], a, b) if first else Pair(row["prompt"], b, a))
        oracle_first.append(first)
        if len(pairs) == cfg.judge_pairs:
            break
    if not pairs:
        return
    # forced choice by the letters' likelihood: generated, the tiny chat model named neither letter in 100 % of its
    # verdicts (it answers the judged question instead), a degenerate 0.5 that measures no bias at all
    judge = LoglikJudge(lm)
    res = pairwise(judge, pairs)
    calibrated = [1.0 if w == ("1" if f else "2") else 0.5 if w == "tie" else 0.0
                  for w, f in zip(calibrated_winners(judge.margins), oracle_first)]
    agree = [1.0 if it["winner"] == ("1" if f else "2") else 0.5 if it["winner"] == "tie" else 0.0
             for it, f in zip(res["items"], oracle_first)]
    verb = verbosity_probe(judge, [(p.question, (p.response_1 if f else p.response_2))
                                   for p, f in zip(pairs, oracle_first)])
    write_json(out / "judge.json", {**{k: v for k, v in res.items() if k != "items"}, "verbosity": verb,
                                    "items": res["items"]})
    ci = bootstrap_mean(agree)
    report.lesson("the tuned model as an LLM judge agrees with the world's oracle above chance",
                  ("agreement with the oracle (order-dependent verdicts count 0.5)", ci), ("chance", 0.5),
                  effect=ci, target=0.5, effect_name="agreement",
                  note=f"{len(pairs)} preference pairs (oracle's best vs worst completion), each judged in both "
                       "orders by the likelier of 'A' / 'B' after the judge prompt; a verdict that flips with the "
                       f"order counts as a tie: {1 - res['consistency']:.0%} flip, and the same position wins both "
                       f"orders in {res['bias_first'] + res['bias_second']:.0%} of pairs. The model was never trained "
                       "to judge: position decides, not content (calibrated agreement and bias rows below)"
                       + (f"; {too_long} pairs skipped whose judge prompt would pass the {cfg.trained_context}-token "
                          "trained context" if too_long else ""))
    report.row("judge agreement with the oracle, position-calibrated (log-odds summed over both orders)",
               _ci(bootstrap_mean(calibrated)), 0.5,
               "Wang et al. 2023's balanced position calibration: a pure position preference cancels, what is left "
               "is the judge's preference between the two answers; below 0.5 it prefers the oracle's worse one")
    report.row("judge position bias: share of valid verdicts naming position A", res["first_position_rate"], 0.5,
               f"same winner in both orders {res['consistency']:.0%}; 'A' in both orders {res['bias_first']:.0%}, "
               f"'B' in both {res['bias_second']:.0%} (Zheng et al. 2023)")
    report.row("judge length bias: an answer padded with content-free text beats itself", verb["padded_win_rate"], 0.5,
               f"0.5 = no length bias; longer preferred in {verb['longer_preferred']:.0%} of valid verdicts; "
               f"n={verb['n']}")


def _task_prompts(task: Task, rows: list[dict], style: str = "direct") -> list[str]:
    styled = style_task(task, style)
    return [styled.build_prompt(r) for r in rows]


def _place(cfg: Config):
    from genforge.eval import prompting

    if cfg.instruction_at not in ("start", "end"):
        from genforge.errors import ConfigError
        raise ConfigError(f"eval.instruction_at={cfg.instruction_at!r}: choose 'start' or 'end'")
    return prompting.instruction_after if cfg.instruction_at == "end" else prompting.with_instruction


def _instruction_scores(lm: GenforgeLM, task: Task, rows: list[dict], instructions: list[str], cfg: Config,
                        gen: CountingGen) -> dict[str, list[float]]:
    """{instruction: per-row score} with the instruction prefixed to the trained (direct) prompt, greedy."""
    from genforge.eval.score import score_outputs

    prompts = _task_prompts(task, rows)
    asks = [_place(cfg)(ins, p) for ins in instructions for p in prompts]
    outs = [o[0] for o in gen(asks, max_new_tokens=cfg.short_tokens, temperature=0.0, stop=(), n=1, seed=None)]
    n = len(rows)
    return {ins: score_outputs(task.name, rows, outs[k * n:(k + 1) * n]).items for k, ins in enumerate(instructions)}


def prompt_search_lessons(ctx: StageContext, report: StageReport, lm: GenforgeLM, task: Task, cfg: Config,
                          out: Path, transfer: Task | None = None) -> dict[str, str]:
    """APE (Zhou et al. 2023) and RL prompt search (`eval.rl_prompt`) at about the same number of model calls, on
    the dev split; then the found instructions vs the hand-written prompt (the world's own, no extra instruction)
    on held-out test items. Returns {"ape": instruction, "rl": instruction}."""
    from genforge.eval import prompting
    from genforge.eval.rl_prompt import RLPromptConfig, rl_prompt_search
    from genforge.eval.score import score_outputs
    from genforge.eval.stats import bootstrap_diff
    from genforge.io import write_json
    from genforge.report import line_plot

    dev_rows = task.examples(cfg.ape_dev, dev=True)
    if not dev_rows:
        return {}
    test_rows = task.load(cfg.lesson_limit)
    dev = [prompting.Example(p, r["response"], answer=r["answer"]) for p, r in zip(_task_prompts(task, dev_rows),
                                                                                  dev_rows)]
    # APE: the seed instructions plus ones the model proposes from solved dev examples, each scored on the dev split
    ape_gen = CountingGen(lm.generate)
    ape = prompting.prompt_search(
        ape_gen, dev, lambda o, ex: score_outputs(task.name, [{"answer": ex.answer, "task": task.name}], [o]).score,
        n_generated=cfg.ape_generated, max_new_tokens=cfg.short_tokens, seed=ctx.seed, place=_place(cfg))
    hand_dev = next(c["score"] for c in ape["candidates"] if c["instruction"] == "")
    # the claim is about what the search FINDS: the hand-written prompt (no instruction) is the baseline, so it is
    # no candidate; when it won on dev, comparing it with itself gave exactly 0 [0, 0] on held-out items
    found = [c for c in ape["candidates"] if c["instruction"]]
    if found:
        top = max(range(len(found)), key=lambda i: (found[i]["score"], -i))  # ties keep the earlier (seeds first)
        ape = {**ape, "best": found[top]["instruction"], "best_score": found[top]["score"], "dev_winner": ape["best"]}
    # RL: minibatches of the same dev rows, cycling; the budget in model calls is set to about APE's
    rl_gen = CountingGen(lm.generate)
    batch = max(1, cfg.rl_batch)

    def score(instructions: list[str], step: int) -> list[float]:
        start = (step * batch) % len(dev_rows)
        rows = (dev_rows + dev_rows)[start:start + batch]
        s = _instruction_scores(lm, task, rows, instructions, cfg, rl_gen)
        return [sum(s[i]) / len(s[i]) for i in instructions]

    steps = max(1, ape_gen.calls // (cfg.rl_group * batch))
    rl = rl_prompt_search(score, cfg=RLPromptConfig(steps=steps, group=cfg.rl_group, seed=ctx.seed))
    # held-out transfer: hand-written vs APE's best vs RL's best-rewarded and most likely instruction
    arms = list(dict.fromkeys(["", ape["best"], rl["best"], rl["greedy"]]))
    test = _instruction_scores(lm, task, test_rows, arms, cfg, CountingGen(lm.generate))
    write_json(out / "prompt_search.json", {"ape": ape, "rl": rl, "ape_calls": ape_gen.calls,
                                             "rl_calls": rl_gen.calls,
                                             "test": {k: sum(v) / len(v) for k, v in test.items()}})
    hand = test[""]
    d_ape = bootstrap_diff(test[ape["best"]], hand, paired=True)
    report.lesson(f"APE's best instruction beats the hand-written prompt on held-out items ({task.name})",
                  (f"accuracy with '{ape['best'] or '(none)'}'", sum(test[ape['best']]) / len(hand)),
                  ("accuracy, hand-written prompt", sum(hand) / len(hand)), effect=d_ape, target=0.0,
                  note=f"the best of {len(found)} instructions (the seeds and {cfg.ape_generated} the model proposed "
                       f"from solved examples) on {len(dev)} dev items: {ape['best_score']:.2f} vs hand-written "
                       f"{hand_dev:.2f} (dev range {min(c['score'] for c in found):.2f}-"
                       f"{max(c['score'] for c in found):.2f}); {ape_gen.calls} model calls; held-out n={len(hand)}. "
                       f"Chance is {_answer_chance(task):.2f}: the world's own phrasing (no instruction) is what SFT "
                       "trained, and a search can only beat it where some instruction changes what the model gets "
                       "right")
    if transfer is not None and ape["best"]:
        rows = transfer.load(cfg.lesson_limit)
        t = _instruction_scores(lm, transfer, rows, ["", ape["best"]], cfg, CountingGen(lm.generate))
        report.row(f"APE's instruction transferred to the held-out task family ({transfer.name}), minus hand-written",
                   _ci(bootstrap_diff(t[ape["best"]], t[""], paired=True)), None,
                   f"accuracy {sum(t[ape['best']]) / len(rows):.3f} vs {sum(t['']) / len(rows):.3f}; found on "
                   f"{task.name}, never searched on {transfer.name}; n={len(rows)}")
    for name, ins in (("RL search, best-rewarded", rl["best"]), ("RL search, most likely", rl["greedy"])):
        report.row(f"{name} instruction minus hand-written, held-out ({task.name})",
                   _ci(bootstrap_diff(test[ins], hand, paired=True)), None,
                   f"'{ins or '(none)'}'; {steps} GRPO steps x {cfg.rl_group} prompts x {batch} dev items = "
                   f"{rl_gen.calls} model calls vs APE's {ape_gen.calls}")
    line_plot(ctx.path("plots", "rl_prompt_search.png"),
              {"RL policy: mean reward of its samples": (list(range(1, steps + 1)), rl["curve"]),
               "APE best (dev)": ([1, steps], [ape["best_score"]] * 2),
               "hand-written (dev)": ([1, steps], [hand_dev] * 2)},
              f"Prompt search on {task.name}: RL (GRPO) learning curve", "policy step", "dev accuracy")
    report.plot("plots/rl_prompt_search.png", "RL prompt search: the policy's mean reward per step (minibatch of "
                f"{batch} dev items, so noisy) against APE's best and the hand-written prompt on the whole dev split")
    return {"ape": ape["best"], "rl": rl["best"]}


def wrong_labels_lesson(report: StageReport, models: dict[str, GenforgeLM], world_dir: str, cfg: Config, seed: int,
                        out: Path) -> None:
    """In-context classification (is this name a person, a town or an object?) with correct, random and flipped
    demonstration labels, for each pretrained model given (smallest first), by label log-likelihood."""
    import json

    from genforge.eval.stats import bootstrap_diff, bootstrap_proportion
    from genforge.eval.wrong_labels import entity_type_items, label_sensitivity, scores_of, wrong_label_predictions
    from genforge.io import write_json

    tables = json.loads((Path(world_dir) / "world.json").read_text())
    train, test = entity_type_items(tables, 60, cfg.wrong_label_items, seed)
    labels = sorted({t.label for t in test})
    preds = {name: wrong_label_predictions(lm, train, test, labels, k=cfg.wrong_label_k, seed=seed)
             for name, lm in models.items()}
    res = {name: scores_of(p, test) for name, p in preds.items()}
    reads = {name: label_sensitivity(p) for name, p in preds.items()}
    write_json(out / "wrong_labels.json", {m: {k: sum(v) / len(v) for k, v in s.items()} for m, s in res.items()})
    chance = 1 / len(labels)
    lines = ["| model | zero-shot | correct labels | random labels | flipped labels | predictions changed by "
             "flipping |", "|---|---|---|---|---|---|"]
    for name, s in res.items():
        lines.append(f"| {name} | " + " | ".join(_ci(bootstrap_proportion(s[m]))
                                                  for m in ("zero_shot", "correct", "random", "flipped"))
                     + f" | {reads[name]:.2f} |")
    report.note(f"**Wrong-label demonstrations** ({cfg.wrong_label_k} demonstrations, {len(test)} names, "
                f"{len(labels)} labels, chance {chance:.2f}; accuracy against the true label, 95 % intervals):\n\n"
                + "\n".join(lines))
    first = next(iter(res))
    s = res[first]
    correct = bootstrap_proportion(s["correct"])
    # "random labels cost little" is hollow when correct labels do no better than chance (0 vs 0 would "hold"):
    # then the claim is untestable and recorded as not holding (target -1 cannot be beaten)
    testable = correct.low > chance
    report.lesson(f"random demonstration labels cost little (correct minus random <= 0.10; Min et al. 2022; {first})",
                  ("accuracy, random labels", bootstrap_proportion(s["random"])), ("accuracy, correct labels", correct),
                  effect=bootstrap_diff(s["correct"], s["random"], paired=True), target=0.10 if testable else -1.0,
                  direction="below",
                  note=f"same {len(test)} test names and demonstration inputs, only the labels differ; label "
                       f"log-likelihood with contextual calibration (Zhao et al. 2021); flipped labels: "
                       f"{sum(s['flipped']) / len(test):.2f}"
                       + ("" if testable else f"; correct labels do not beat chance ({chance:.2f}) here, so the claim "
                                              "cannot be tested at this scale: flipping every demonstration label "
                                              f"changes {reads[first]:.0%} of the predictions (the model barely "
                                              "reads its context; see the induction row)"))
    if len(res) > 1:
        size = {m: sum(x.numel() for x in models[m].model.parameters()) for m in res}
        small, large = min(res, key=size.get), max(res, key=size.get)
        drop = {m: [c - f for c, f in zip(res[m]["correct"], res[m]["flipped"])] for m in (small, large)}
        report.lesson(f"the larger model follows flipped labels more (its accuracy drops more; {large} vs {small})",
                      (f"drop under flipped labels, {large}", sum(drop[large]) / len(test)),
                      (f"drop under flipped labels, {small}", sum(drop[small]) / len(test)),
                      effect=bootstrap_diff(drop[large], drop[small], paired=True), target=0.0,
                      note="Wei et al. 2023: larger models override their prior with the demonstrations' labels. "
                           "Flipping every label changes " + ", ".join(f"{reads[m]:.0%} ({m})" for m in (large, small))
                           + " of the predictions: a model that does not read the labels cannot follow them")
    else:
        report.row("wrong-label size effect", "not measured", None,
                   "one model size in this run; set eval.wrong_label_models to a second pretrained checkpoint "
                   "(the small recipe compares the tiny and small bases)")


def variants_lesson(ctx: StageContext, report: StageReport, models: dict[str, GenforgeLM], task: Task, cfg: Config,
                    out: Path) -> None:
    """Every prompt variant of `genforge.eval.variants` on the same test items, for each model; a table of deltas
    against the plain prompt with paired intervals, and a bar plot."""
    from genforge.eval.score import score_outputs
    from genforge.eval.stats import bootstrap_diff
    from genforge.eval.variants import VARIANTS, variant_prompts
    from genforge.io import write_json
    from genforge.report import bar_plot

    rows = task.load(cfg.variant_limit)
    names = ["plain"] + [v for v in cfg.variants if v != "plain"]
    prompts = variant_prompts(_task_prompts(task, rows, cfg.variant_style), names)
    scores: dict[str, dict[str, list[float]]] = {}
    for model, lm in models.items():
        outs = _greedy(lm, [p for v in names for p in prompts[v]], cfg.short_tokens)
        n = len(rows)
        scores[model] = {v: score_outputs(task.name, rows, outs[k * n:(k + 1) * n]).items for k, v in enumerate(names)}
    write_json(out / "variants.json", {m: {v: sum(x) / len(x) for v, x in s.items()} for m, s in scores.items()})
    head = "| variant | " + " | ".join(f"{m}: delta [95 % CI]" for m in scores) + " |"
    lines = [head, "|---|" + "---|" * len(scores)]
    lines.append("| plain (accuracy) | " + " | ".join(f"{sum(s['plain']) / len(rows):.3f}" for s in scores.values())
                 + " |")
    deltas: dict[str, list[float]] = {m: [] for m in scores}
    for v in names[1:]:
        cells = []
        for m, s in scores.items():
            d = bootstrap_diff(s[v], s["plain"], paired=True)
            deltas[m].append(d.estimate)
            cells.append(_ci(d))
        lines.append(f"| {VARIANTS[v][1]} | " + " | ".join(cells) + " |")
    report.note(f"**Prompt variants** on {task.name} (the world's {cfg.variant_style} phrasing plus each variant; "
                f"{len(rows)} "
                "test items, greedy; accuracy minus the plain prompt's, paired bootstrap). Most variants were found on "
                "large instruction-tuned models; an interval around 0 is the lesson that a prompt trick belongs to a "
                "model, not to the task:\n\n" + "\n".join(lines))
    for m, ds in deltas.items():
        report.row(f"prompt variants, {m}: largest |delta| vs the plain prompt", max(ds, key=abs) if ds else 0.0,
                   None, f"over {len(ds)} variants on {task.name}; table above")
    first = next(iter(deltas))
    bar_plot(ctx.path("plots", "prompt_variants.png"), names[1:], deltas[first],
             f"Prompt variants on {task.name} ({first})", "accuracy minus plain prompt")
    report.plot("plots/prompt_variants.png", f"Accuracy change per prompt variant ({first}); intervals in the table")


def contamination_lesson(report: StageReport, base_lm: GenforgeLM, world_dir: str, corpus: str, cfg: Config,
                         out: Path, seed: int = 0) -> None:
    """Contamination by asking: the pretrained model continues the start of false-belief items that were planted in
    its corpus (world/contamination.jsonl, written by `world.tom.plant`) and of clean items of the same family.
    Each item is cut just before its first item-specific word past the middle (`split_at_secret`: here the
    container the object is moved to, which nothing before it predicts) and the lesson scores the item-specific
    words the continuation recalls: template words ("comes back. Question: Where will ...") come back for items
    never seen as well, which is why the share of all reproduced words (a row below) cannot tell the two apart.
    Beside it, the n-gram check on the same items, and whether the planted ("leaked public") items are also
    *answered* better than fresh ones: why a public test cannot be trusted."""
    from genforge.eval.contamination import NgramIndex, ask_reproduction, check_contamination, family_template
    from genforge.eval.stats import bootstrap_diff
    from genforge.io import read_jsonl, write_json
    from genforge.world import tom

    path = Path(world_dir) / "contamination.jsonl"
    if not path.exists():
        report.row("contamination by asking", "not measured", None,
                   f"{path} is missing: this world was generated before items were planted; rerun world onwards")
        return
    rows = [r for _, r in read_jsonl(path)]
    planted = [r["text"] for r in rows if r["split"] == "planted"]
    # clean items are free (never shown to the model): more of them than the file's narrows the interval
    clean = [r["text"] for r in rows if r["split"] == "clean"]
    extra = [it["text"] for it in tom.false_belief_items(cfg.contam_clean, seed, ("false_belief",), salt="clean-eval")]
    clean += [t for t in extra if t not in set(planted) | set(clean)][:max(0, cfg.contam_clean - len(clean))]
    template = family_template(planted + clean)
    p = ask_reproduction(base_lm, planted, words=cfg.contam_words, template=template)
    c = ask_reproduction(base_lm, clean, words=cfg.contam_words, template=template)
    ps = [x["specific"] for x in p if x["specific"] is not None]
    cs = [x["specific"] for x in c if x["specific"] is not None]
    idx = NgramIndex.from_files([corpus], n=cfg.contam_ngram)
    flag_p = check_contamination(planted, idx)["rate"]
    flag_c = check_contamination(clean, idx)["rate"]
    write_json(out / "contamination_asking.json", {"planted": p, "clean": c, "ngram_flagged": [flag_p, flag_c]})
    if not ps or not cs:
        report.row("contamination by asking", "not measured", None, "no item-specific word to recall in the items")
        return
    report.lesson("asking reveals contamination: the pretrained model recalls the item-specific words of planted "
                  "test items more than of clean ones",
                  ("share of item-specific words recalled, planted items", sum(ps) / len(ps)),
                  ("clean items of the same family", sum(cs) / len(cs)),
                  effect=bootstrap_diff(ps, cs, paired=False), target=0.0,
                  note=f"{len(ps)} false-belief items, each planted in {_copies(corpus, planted)} corpus documents, "
                       f"vs {len(cs)} never shown; greedy continuation of each item cut just before its first word "
                       "no template predicts (the container the object is moved to); chance of naming it by guessing "
                       f"~1/11. The {cfg.contam_ngram}-gram check (it needs the corpus) flags {flag_p:.0%} vs "
                       f"{flag_c:.0%}; asking needs only the model")
    pr, cr = [x["reproduced"] for x in p], [x["reproduced"] for x in c]
    report.row(f"contamination by asking, all of the next {cfg.contam_words} words reproduced in order: planted minus "
               "clean", _ci(bootstrap_diff(pr, cr, paired=False)), None,
               f"{sum(pr) / len(pr):.3f} vs {sum(cr) / len(cr):.3f}: the family's template words come back for "
               "unseen items too, so this share hides the memory the item-specific words show")


def _copies(corpus: str, texts: list[str]) -> str:
    """How many corpus documents hold each text: "6" or "5-7" (min-max)."""
    from genforge.io import read_jsonl

    counts = dict.fromkeys(texts, 0)
    for _, r in read_jsonl(corpus):
        doc = r.get("text", "")
        for t in texts:
            counts[t] += t in doc
    lo, hi = min(counts.values()), max(counts.values())
    return str(lo) if lo == hi else f"{lo}-{hi}"


def tom_lesson(report: StageReport, lms: dict[str, GenforgeLM], world_dir: str, corpus: str, cfg: Config, seed: int,
               out: Path) -> list[float]:
    """False belief (Sally-Anne with unseen names and objects) by option log-likelihood; returns the first model's
    per-item 1/0 on the false-belief items (for the composite suite)."""
    from genforge.eval.stats import bootstrap_diff, bootstrap_mean
    from genforge.io import read_jsonl, write_json
    from genforge.world import tom

    items = tom.false_belief_items(cfg.tom_items, seed)

    def correct(lm: GenforgeLM, its: list[dict]) -> list[float]:
        pairs = [(it["prompt"], f"The answer is the {o}.") for it in its for o in it["options"]]
        ll = [x[0] for x in lm.loglikelihood(pairs)]
        # a tie (the model cannot tell the two containers apart) counts half, whatever the options' order
        return [0.5 if ll[2 * i] == ll[2 * i + 1] else float(max((0, 1), key=lambda j: ll[2 * i + j]) ==
                                                                it["gold_index"]) for i, it in enumerate(its)]

    res = {}
    for name, lm in lms.items():
        res[name] = correct(lm, items)
    first = next(iter(res))
    by_kind = {k: [x for x, it in zip(res[first], items) if it["kind"] == k] for k in tom.KINDS}
    write_json(out / "false_belief.json", {m: sum(v) / len(v) for m, v in res.items()})
    kinds = {k: bootstrap_mean(v) for k, v in by_kind.items() if v}
    worst = min(kinds, key=lambda k: kinds[k].estimate)
    report.lesson(f"false belief (Sally-Anne with unseen names and objects): above chance on every kind of question "
                  f"({first})",
                  ("accuracy, false-belief questions", kinds["false_belief"]), ("chance", 0.5),
                  effect=kinds[worst], target=0.5, effect_name=f"accuracy of the weakest kind ({worst})",
                  note="two containers in random order, option log-likelihood; "
                       + ", ".join(f"{k.replace('_', ' ')} {v.estimate:.2f}" for k, v in kinds.items())
                       + f" (n={len(by_kind[worst])} per kind). A heuristic (the container named first, or last) "
                         "passes one kind and fails another; only tracking who saw what passes all three. Near chance "
                         "on all three, even 'where is it now' (reality), the model does not follow the object through "
                         "the story, which needs copying a container from its context (the induction row)")
    for name in list(res)[1:]:
        fb = [x for x, it in zip(res[name], items) if it["kind"] == "false_belief"]
        report.row(f"false-belief accuracy, {name}", _ci(bootstrap_mean(fb)), 0.5, f"n={len(fb)}")
    leaked = Path(world_dir) / "contamination.jsonl"
    if leaked.exists() and "pretrained" in lms:
        rows = [r for _, r in read_jsonl(leaked)]
        p = correct(lms["pretrained"], [r for r in rows if r["split"] == "planted"])
        fresh = [r for r in rows if r["split"] == "clean"]
        seen = {r["text"] for r in rows}
        fresh += [it for it in tom.false_belief_items(cfg.contam_clean, seed, ("false_belief",), salt="clean-eval")
                  if it["text"] not in seen][:max(0, cfg.contam_clean - len(fresh))]
        c = correct(lms["pretrained"], fresh)
        report.row("false belief, pretrained model: leaked (planted) items minus fresh ones",
                   _ci(bootstrap_diff(p, c, paired=False)), None,
                   f"accuracy {sum(p) / len(p):.2f} vs {sum(c) / len(c):.2f}: a score on a public test that leaked "
                   "into training measures recall as much as skill")
    public = tom.public_story_in(line for _, r in read_jsonl(corpus) for line in [r.get("text", "")])
    report.row("the public Sally-Anne story is in the training corpus", "yes" if public else "no", None,
               "kept out on purpose, so the family above is the only false-belief test and it is unseen")
    return by_kind["false_belief"]


def _answer_chance(task: Task) -> float:
    """Chance accuracy of a generative task with a small closed answer set (coin flip: yes / no -> 0.5), else 0."""
    answers = {str(r.get("answer", "")).strip().lower() for r in task.load()}
    return 1 / len(answers) if 1 < len(answers) <= 4 else 0.0


def composite_lesson(report: StageReport, direct: dict, tasks: dict[str, Task],
                     extra: dict[str, tuple[list[float], float]], cfg: Config) -> None:
    """A BIG-bench-style suite over the world's skills: per-task scores normalised between chance and 1, equal task
    weights, one interval over all items."""
    from genforge.eval.composite import composite_items
    from genforge.eval.stats import bootstrap_mean

    items, low = {}, {}
    for name in cfg.composite_tasks:
        t = direct["tasks"].get(name)
        if t is None:
            continue
        items[name] = [float(x) for x in t["items"]]
        low[name] = sum(t["chance"]) / len(t["chance"]) if "chance" in t else _answer_chance(tasks[name])
    for name, (vals, chance) in extra.items():
        items[name], low[name] = vals, chance
    if not items:
        return
    weighted, per_task = composite_items(items, low)
    report.row("composite suite score (normalised: 0 = chance, 1 = perfect; equal task weights)",
               _ci(bootstrap_mean(weighted)), 0.0,
               "; ".join(f"{k} {v:+.2f}" for k, v in per_task.items()) + " (Srivastava et al. 2022's normalisation)")


def diversity_lesson(ctx: StageContext, report: StageReport, models: dict[str, GenforgeLM], world_dir: str,
                     cfg: Config, out: Path) -> None:
    """Distinct-n and self-BLEU of `div_samples` answers per benign chat prompt, at each temperature, per model."""
    from genforge.eval.diversity import diversity, per_prompt
    from genforge.eval.stats import bootstrap_diff
    from genforge.io import read_jsonl, write_json
    from genforge.report import line_plot

    path = Path(world_dir) / "tasks" / "chat_test.jsonl"
    if not path.exists():
        return
    prompts = [r["prompt"] for _, r in read_jsonl(path)][:cfg.div_prompts]
    res: dict[str, dict[float, dict]] = {}
    groups_at: dict[str, list[list[str]]] = {}
    for name, lm in models.items():
        res[name] = {}
        for t in cfg.div_temperatures:
            groups = lm.generate(prompts, max_new_tokens=cfg.div_tokens, temperature=t, n=cfg.div_samples,
                                 seed=ctx.seed)
            res[name][t] = diversity(groups)
            if t == cfg.div_compare_at:
                groups_at[name] = groups
    write_json(out / "diversity.json", {m: {str(t): d for t, d in r.items()} for m, r in res.items()})
    temps = list(cfg.div_temperatures)
    line_plot(ctx.path("plots", "diversity.png"),
              {f"{m}: distinct-2": (temps, [res[m][t]["distinct_2"] for t in temps]) for m in res}
              | {f"{m}: self-BLEU / 100": (temps, [res[m][t]["self_bleu"] / 100 for t in temps]) for m in res},
              "Diversity of sampled answers vs temperature", "temperature", "distinct-2 (up) / self-BLEU (down)")
    report.plot("plots/diversity.png", f"Diversity of {cfg.div_samples} samples per prompt ({len(prompts)} benign "
                "prompts): distinct-2 rises and self-BLEU falls as the temperature rises")
    first = next(iter(res))
    lo, hi = temps[0], temps[-1]
    report.row(f"diversity vs temperature ({first}): distinct-2 at T={lo} -> T={hi}",
               f"{res[first][lo]['distinct_2']:.3f} -> {res[first][hi]['distinct_2']:.3f}", None,
               f"self-BLEU {res[first][lo]['self_bleu']:.1f} -> {res[first][hi]['self_bleu']:.1f} (100 = every sample "
               "the same)")
    if len(groups_at) > 1:
        (a, ga), (b, gb) = list(groups_at.items())[:2]
        pa, pb = per_prompt(ga), per_prompt(gb)
        report.row(f"diversity after alignment ({b} minus {a}) at T={cfg.div_compare_at}: distinct-2",
                   _ci(bootstrap_diff(pb["distinct_2"], pa["distinct_2"], paired=True)), None,
                   f"self-BLEU {_ci(bootstrap_diff(pb['self_bleu'], pa['self_bleu'], paired=True))}; paired over "
                   f"{len(prompts)} prompts. Preference tuning is reported to narrow outputs (Kirk et al. 2024)")
