"""`genforge eval`: run tasks under a prompting strategy and save per-item and aggregate results.

    genforge eval runs/tiny/sft tasks=arithmetic,summarization strategy=cot limit=50 out=runs/eval/cot
    genforge eval compare runs/eval/direct runs/eval/cot

`evaluate(lm, tasks, strategy=...)` is the library entry (the speedrun calls it with a model in
memory); `main(cfg)` loads a checkpoint first. Results are one folder: `results.json` (aggregate,
written atomically) and `items/<task>.jsonl` (every prompt, output, extracted answer and score),
so two runs can be compared item by item, not only by their averages.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genforge.config import save_resolved
from genforge.errors import ConfigError
from genforge.eval import metrics, prompting
from genforge.eval.score import aggregate, score_output
from genforge.eval.tasks import Task, mc_stem, resolve_tasks
from genforge.io import write_json, write_jsonl

if TYPE_CHECKING:  # torch stays unimported until a model is used
    from genforge.eval.lm import LM

STRATEGIES: dict[str, str] = {
    "direct": "the prompt as is (zero-shot), greedy",
    "fewshot": "`shots` solved examples from the train split, greedy",
    "cot": "few-shot chain of thought (train rationales); zero-shot 'Let's think step by step' if none",
    "zs_cot": "zero-shot chain of thought in two stages (Kojima et al. 2022)",
    "self_consistency": "chain-of-thought prompts, `samples` sampled answers, majority vote",
    "least_to_most": "decompose into subquestions, answer them in order, then the question",
    "self_verify": "answer, let the model check it, retry while it says no",
    "tot": "tree of thoughts: beam search over reasoning steps scored by the model itself",
    "prompt_search": "pick the best instruction on the val split (seed list + model proposals), then answer",
}
# Strategies that vote on or verify an extracted answer only make sense for exact-match tasks;
# ROUGE/BLEU/refusal tasks fall back to these (recorded as `strategy` in the task's results).
_FALLBACK = {"cot": "fewshot", "fewshot": "fewshot", "prompt_search": "prompt_search"}


@dataclass
class EvalConfig:
    """`genforge eval`: score a checkpoint on tasks under a prompting strategy."""

    checkpoint: str = ""  # checkpoint folder (config.json + model.safetensors + tokenizer.json)
    tasks: str = "all"  # comma-separated task names or .jsonl files ('all' = every world task)
    tasks_dir: str = ""  # world folder (or its tasks/); default: a world/ beside the checkpoint's run
    split: str = "test"  # which split file of the world to score
    strategy: str = "direct"  # see STRATEGIES
    shots: int = 3  # in-context examples for fewshot / cot
    limit: int = 0  # items per task (0 = all)
    out: str = "runs/eval"  # results folder
    chat: bool = True  # wrap prompts in the chat template (false for a pretrained-only model)
    max_new_tokens: int = 96  # tokens generated per answer at most
    samples: int = 5  # self-consistency: sampled answers per item
    temperature: float = 0.7  # sampling temperature of self-consistency / retries / ToT
    retries: int = 2  # self-verification retries
    tot_branching: int = 3  # tree of thoughts: candidate steps proposed per node
    tot_beam: int = 2  # tree of thoughts: partial solutions kept per level
    tot_depth: int = 3  # tree of thoughts: reasoning steps before the answer
    search_dev: int = 8  # prompt search: dev items scored per candidate
    search_candidates: int = 4  # prompt search: instructions the model proposes (besides the seed list)
    option_order: bool = True  # multiple choice: also run the option-permutation test
    needle: bool = False  # run the needle-in-a-haystack grid
    needle_lengths: list[int] = field(default_factory=lambda: [64, 128, 256])  # haystack lengths (tokens)
    needle_depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])  # needle positions (0-1)
    needle_trials: int = 2  # needles per (length, depth) cell
    contamination: list[str] = field(default_factory=list)  # training corpus files (.jsonl/.txt) to check against
    ngram: int = 13  # contamination n-gram size (GPT-3 used 13; 8 catches more on short items)
    perplexity: list[str] = field(default_factory=list)  # text files to report perplexity / bits-per-byte on
    batch_size: int = 16  # prompts generated together
    threads: int = 0  # torch threads (0 = leave as is)
    seed: int = 0  # seeds sampling strategies (same seed, same answers)


# ---- prompts and predictions -------------------------------------------------------------------------------

def _example(task: Task, row: dict) -> prompting.Example:
    """A train row as an in-context example. Exact-match tasks show "The answer is X." as the direct
    response (what extraction reads back); other tasks show the reference text."""
    ref = task.reference(row)
    response = f"The answer is {ref}." if task.metric == "exact_match" else ref
    return prompting.Example(task.build_prompt(row), response, str(row.get("rationale") or ""), ref)


def _fits(lm: LM, text: str, max_new_tokens: int) -> bool:
    max_len, count = getattr(lm, "max_len", None), getattr(lm, "count_tokens", None)
    return max_len is None or count is None or count(text) + max_new_tokens + 8 <= max_len


def _shot_prompts(lm: LM, prompts: list[str], examples: list[prompting.Example], cot: bool,
                  max_new_tokens: int) -> list[str]:
    """Few-shot prompts, each with as many of the examples as fit the model's context."""
    out = []
    for p in prompts:
        k = len(examples)
        while k > 0 and not _fits(lm, prompting.few_shot_prompt(p, examples[:k], cot=cot), max_new_tokens):
            k -= 1  # drop examples rather than truncate the question
        out.append(prompting.few_shot_prompt(p, examples[:k], cot=cot))
    return out


def _cot_prompts(lm: LM, task: Task, prompts: list[str], cfg: EvalConfig) -> tuple[list[str], tuple[str, ...]]:
    examples = [_example(task, r) for r in task.examples(cfg.shots)]
    if any(e.rationale for e in examples):
        return _shot_prompts(lm, prompts, examples, True, cfg.max_new_tokens), prompting.FEW_SHOT_STOP
    return [f"{p}\n{prompting.STEP_BY_STEP}" for p in prompts], ()


def _scorer(task: Task):
    """score(output, example) in [0, 1] for prompt search, by the task's metric."""
    def score(output: str, ex: prompting.Example) -> float:
        return score_output(task.metric, output, ex.answer, task.extract)["score"]
    return score


def predict(lm: LM, task: Task, rows: list[dict], strategy: str, cfg: EvalConfig) -> tuple[list[dict], str, dict]:
    """Run a strategy over a task's rows: (records with "output" and maybe "answer", strategy used, extras)."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy '{strategy}'; choose from {', '.join(STRATEGIES)}")
    if task.metric != "exact_match":
        strategy = _FALLBACK.get(strategy, "direct")
    gen, ex = lm.generate, task.extract
    prompts = [task.build_prompt(r) for r in rows]
    greedy = dict(max_new_tokens=cfg.max_new_tokens, temperature=0.0, n=1, seed=None)
    extras: dict[str, Any] = {}
    if strategy == "direct":
        recs = [{"output": o[0]} for o in gen(prompts, stop=(), **greedy)]
    elif strategy == "fewshot":
        examples = [_example(task, r) for r in task.examples(cfg.shots)]
        prompts = _shot_prompts(lm, prompts, examples, False, cfg.max_new_tokens)
        recs = [{"output": o[0]} for o in gen(prompts, stop=prompting.FEW_SHOT_STOP, **greedy)]
    elif strategy == "cot":
        prompts, stop = _cot_prompts(lm, task, prompts, cfg)
        recs = [{"output": o[0]} for o in gen(prompts, stop=stop, **greedy)]
    elif strategy == "zs_cot":
        recs = prompting.zero_shot_cot(gen, prompts, extract=ex, max_new_tokens=cfg.max_new_tokens)
    elif strategy == "self_consistency":
        prompts, stop = _cot_prompts(lm, task, prompts, cfg)
        recs = prompting.self_consistency(gen, prompts, extract=ex, k=cfg.samples, temperature=cfg.temperature,
                                          max_new_tokens=cfg.max_new_tokens, stop=stop, seed=cfg.seed)
    elif strategy == "least_to_most":
        recs = prompting.least_to_most(gen, prompts, extract=ex, max_new_tokens=cfg.max_new_tokens)
    elif strategy == "self_verify":
        recs = prompting.self_verify(gen, prompts, extract=ex, max_retries=cfg.retries, temperature=cfg.temperature,
                                     max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    elif strategy == "tot":
        tcfg = prompting.ToTConfig(branching=cfg.tot_branching, beam_width=cfg.tot_beam, depth=cfg.tot_depth,
                                   temperature=cfg.temperature, seed=cfg.seed)
        recs = []
        for p in prompts:
            r = prompting.tree_of_thoughts(gen, p, extract=ex, cfg=tcfg)
            recs.append({"output": "\n".join(r.steps), "answer": r.answer, "value": r.value,
                         "expansions": r.expansions, "evaluations": r.evaluations, "pruned": r.pruned})
        extras["expansions_per_item"] = sum(r["expansions"] for r in recs) / max(len(recs), 1)
    else:  # prompt_search
        dev = [_example(task, r) for r in task.examples(cfg.search_dev, dev=True)]
        if not dev:  # e.g. a held-out task: nothing to search on, so answer directly (and say so)
            return predict(lm, task, rows, "direct", cfg)[0], "direct (no dev split)", extras
        search = prompting.prompt_search(gen, dev, _scorer(task), n_generated=cfg.search_candidates,
                                         max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
        extras["prompt_search"] = search
        prompts = [prompting.with_instruction(search["best"], p) for p in prompts]
        recs = [{"output": o[0]} for o in gen(prompts, stop=(), **greedy)]
    for r, p in zip(recs, prompts):
        r.setdefault("prompt", p)
    return recs, strategy, extras


# ---- scoring -------------------------------------------------------------------------------------------------

def _score_generative(task: Task, rows: list[dict], recs: list[dict]) -> tuple[list[dict], dict[str, float]]:
    """Per-item and aggregate scores through the one scoring path (`genforge.eval.score`)."""
    refs = [task.reference(r) for r in rows]
    outs = [r["output"].strip() for r in recs]
    items = []
    for row, rec, ref, out in zip(rows, recs, refs, outs):
        item = {"line": row["_line"], "question": task.build_prompt(row), **rec, "reference": ref}
        if task.metric == "exact_match" and "answer" in rec:  # the strategy already voted on an answer
            item.update(score_output(task.metric, rec["answer"], ref, extract=None))
        else:
            item.update(score_output(task.metric, out, ref, task.extract))
        items.append(item)
    return items, aggregate(task.metric, outs, refs, [i["score"] for i in items])


MAIN_METRIC = {"exact_match": "exact_match", "rouge": "rougeL", "bleu": "bleu", "refusal": "refusal_rate", "mc": "acc"}


def _eval_mc(lm: LM, task: Task, rows: list[dict], cfg: EvalConfig) -> tuple[list[dict], dict[str, float]]:
    """Cloze scoring ("<question>\nAnswer:" + option text) for acc / acc_norm; the letter
    formulation, under every rotation of the options, for the option-order test."""
    stems = [metrics.MCItem(mc_stem(task.build_prompt(r), [str(o) for o in r["options"]]),
                            [str(o) for o in r["options"]], int(r["gold_index"])) for r in rows]
    cloze = [metrics.MCItem(s.context + "\nAnswer:", s.options, s.gold) for s in stems]
    # a chat model answers right after its assistant tag; a base model continues "Answer: Paris"
    delim = "" if getattr(lm, "chat", False) else " "
    res = metrics.multiple_choice(lm, cloze, delim)
    agg = {"acc": res["acc"], "acc_norm": res["acc_norm"],
           "chance": sum(1 / len(i.options) for i in cloze) / len(cloze)}
    if cfg.option_order:
        oo = metrics.option_order_test(lm, stems, delim)
        agg.update(flip_rate=oo["flip_rate"], order_consistency=oo["consistency"], acc_letter=oo["acc_letter"])
        agg["letter_rate"] = oo["letter_rate"]
    recs = [{"line": r["_line"], "prompt": i.context, "options": i.options, **s, "score": s["acc"]}
            for r, i, s in zip(rows, cloze, res["items"])]
    return recs, agg


# ---- the entry points ----------------------------------------------------------------------------------------

def evaluate(lm: LM, tasks: Sequence[Task] | str, *, strategy: str = "direct", limit: int | None = None,
             out_dir: str | Path | None = None, cfg: EvalConfig | None = None) -> dict:
    """Score `lm` on each task; write results.json + items/<task>.jsonl under out_dir (if given).

    tasks: Task objects, or names as for `resolve_tasks` ("all", "arithmetic,summarization"), looked
    up in cfg.tasks_dir. Multiple-choice tasks are scored by log-likelihood whatever the strategy.
    Returns {"run": {...}, "tasks": {name: {"metric", "score", "n", "strategy", "seconds", "metrics"}}}.
    """
    cfg = cfg or EvalConfig()
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy '{strategy}'; choose from {', '.join(STRATEGIES)}")
    if isinstance(tasks, str):
        tasks = resolve_tasks(tasks, cfg.tasks_dir, cfg.split, shots=cfg.shots)
    results: dict[str, Any] = {"run": {"strategy": strategy, "limit": limit or 0, "checkpoint": cfg.checkpoint,
                                       "chat": bool(getattr(lm, "chat", False)), "seed": cfg.seed},
                               "tasks": {}}
    out = Path(out_dir) if out_dir else None
    for task in tasks:
        t0 = time.time()
        rows = task.load(limit)
        if task.metric == "mc":
            items, agg = _eval_mc(lm, task, rows, cfg)
            used, extras = "loglikelihood", {}
        else:
            recs, used, extras = predict(lm, task, rows, strategy, cfg)
            items, agg = _score_generative(task, rows, recs)
        main_metric = MAIN_METRIC[task.metric]
        results["tasks"][task.name] = {"metric": main_metric, "score": agg[main_metric], "n": len(items),
                                       "strategy": used, "seconds": round(time.time() - t0, 2),
                                       "metrics": agg, **extras}
        if out is not None:
            write_jsonl(out / "items" / f"{task.name}.jsonl", items)
    if out is not None:
        write_json(out / "results.json", results)
    return results


def _guess_tasks_dir(checkpoint: str) -> str:
    """The run's world folder, found next to the checkpoint (runs/<name>/world beside runs/<name>/sft)."""
    p = Path(checkpoint).resolve()
    for parent in [p, *p.parents][:4]:
        if (parent / "world" / "tasks").is_dir():
            return str(parent / "world")
    return ""


def main(cfg: EvalConfig) -> dict:
    """Load the checkpoint, run tasks (+ needle / contamination / perplexity if asked), save, print a table."""
    if not cfg.checkpoint:
        raise ConfigError("no checkpoint given: genforge eval CHECKPOINT [tasks=...] (or: genforge eval compare A B)")
    from genforge.checkpoint import load_checkpoint
    from genforge.eval.lm import GenforgeLM

    if cfg.threads:
        from genforge.runtime import set_threads

        set_threads(cfg.threads)
    tasks_dir = cfg.tasks_dir or _guess_tasks_dir(cfg.checkpoint)
    tasks = resolve_tasks(cfg.tasks, tasks_dir, cfg.split, shots=cfg.shots) if cfg.tasks else []
    model, tok, _ = load_checkpoint(cfg.checkpoint)
    if tok is None:
        raise ConfigError(f"{cfg.checkpoint}: checkpoint has no tokenizer.json; evaluation needs one")
    lm = GenforgeLM(model, tok, chat=cfg.chat, batch_size=cfg.batch_size)
    out = Path(cfg.out)
    results = evaluate(lm, tasks, strategy=cfg.strategy, limit=cfg.limit or None, out_dir=out, cfg=cfg)
    results["config"] = save_resolved(cfg, out)
    if cfg.perplexity:
        results["perplexity"] = {p: metrics.perplexity_file(lm, p) for p in cfg.perplexity}
    if cfg.needle:
        results["needle"] = run_needle(lm, cfg, out)
    if cfg.contamination:
        results["contamination"] = run_contamination(tasks, cfg, out)
    write_json(out / "results.json", results)
    print(summary_table(results))
    print(f"-> {out / 'results.json'}")
    return results


def run_needle(lm: LM, cfg: EvalConfig, out: Path | None) -> dict:
    """The needle grid at the lengths that fit the model's context; heatmap saved as needle.png."""
    from genforge.eval.needle import make_case, needle_grid, plot_needle, world_case

    max_len = getattr(lm, "max_len", None)
    lengths = [n for n in cfg.needle_lengths if max_len is None or n + 64 <= max_len]
    if not lengths:
        raise ConfigError(f"needle_lengths {cfg.needle_lengths} do not fit the model's context of {max_len} tokens "
                          "(each needs about 64 tokens of room for the question and answer)")
    try:
        import genforge.world  # noqa: F401  (world text makes a more natural haystack)
        case_fn = world_case
    except ImportError:
        case_fn = make_case
    res = needle_grid(lm, context_lengths=lengths, depths=cfg.needle_depths, trials=cfg.needle_trials, seed=cfg.seed,
                      case_fn=case_fn)
    if out is not None:
        write_jsonl(out / "items" / "needle.jsonl", res["items"])
        res["plot"] = str(plot_needle(res, out / "needle.png"))
    return {k: v for k, v in res.items() if k != "items"}


def run_contamination(tasks: Sequence[Task], cfg: EvalConfig, out: Path | None) -> dict:
    """N-gram overlap of the tasks' items with the training corpus files."""
    from genforge.eval.contamination import NgramIndex, check_contamination

    index = NgramIndex.from_files(cfg.contamination, n=cfg.ngram)
    items = [{**r, "task": t.name} for t in tasks for r in t.load(cfg.limit or None)]
    res = check_contamination(items, index)
    if out is not None:
        write_json(out / "contamination.json", res)
    return {k: v for k, v in res.items() if k != "flagged"} | {"flagged": res["flagged"][:20]}


# ---- presenting results --------------------------------------------------------------------------------------

def summary_table(results: dict) -> str:
    """One line per task: metric, score, n, strategy."""
    lines = [f"{'task':<24} {'metric':<14} {'score':>8} {'n':>5}  strategy"]
    for name, t in results.get("tasks", {}).items():
        lines.append(f"{name:<24} {t['metric']:<14} {t['score']:>8.3f} {t['n']:>5}  {t['strategy']}")
    if "needle" in results:
        lines.append(f"{'needle':<24} {'accuracy':<14} {results['needle']['mean_accuracy']:>8.3f}")
    if "contamination" in results:
        c = results["contamination"]
        label = f"{c['n']}-gram rate"
        lines.append(f"{'contamination':<24} {label:<14} {c['rate']:>8.3f} {c['n_items']:>5}")
    for path, p in results.get("perplexity", {}).items():
        lines.append(f"{Path(path).name:<24} {'bits/byte':<14} {p['bits_per_byte']:>8.3f}")
    return "\n".join(lines)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def report_rows(results: dict, baseline: dict | None = None) -> list[dict]:
    """Rows for the report card: [{"metric", "value", "baseline", "note"}], one per task (+ needle,
    contamination, perplexity). `baseline` is another run's results (e.g. the base model, or the
    direct strategy) whose same numbers fill the baseline column; otherwise chance level where one
    exists (multiple choice).
    """
    rows = []
    base_tasks = (baseline or {}).get("tasks", {})
    for name, t in results.get("tasks", {}).items():
        m = t["metrics"]
        b = base_tasks.get(name, {}).get("score") if name in base_tasks else m.get("chance")
        if t["metric"] == "acc":
            note = f"options scored by log-likelihood; acc_norm {m['acc_norm']:.3f}"
            if "flip_rate" in m:
                note += f"; answer changes under option reordering {m['flip_rate']:.0%}"
        elif t["metric"] == "rougeL":
            note = f"ROUGE-1 {m['rouge1']:.3f}, ROUGE-2 {m['rouge2']:.3f}"
        elif t["metric"] == "bleu":
            note = "corpus BLEU / 100 (sacrebleu)"
        elif t["metric"] == "refusal_rate":
            note = "share of harmful requests refused"
        else:
            note = "answer extracted and normalised"
        rows.append({"metric": f"{name} {t['metric']} ({t['strategy']})", "value": t["score"], "baseline": b,
                     "note": f"{note}; n={t['n']}"})
    if "needle" in results:
        nd, bn = results["needle"], (baseline or {}).get("needle", {})
        rows.append({"metric": "needle-in-a-haystack accuracy", "value": nd["mean_accuracy"],
                     "baseline": bn.get("mean_accuracy"),
                     "note": f"{len(nd['context_lengths'])} lengths x {len(nd['depths'])} depths, see needle.png"})
    if "contamination" in results:
        c = results["contamination"]
        rows.append({"metric": f"eval items contaminated ({c['n']}-gram overlap)", "value": c["rate"], "baseline": None,
                     "note": f"{c['n_flagged']} of {c['n_items']} items share an n-gram with the training corpus"})
    for path, p in results.get("perplexity", {}).items():
        bp = (baseline or {}).get("perplexity", {}).get(path, {})
        rows.append({"metric": f"bits per byte on {Path(path).name}", "value": p["bits_per_byte"],
                     "baseline": bp.get("bits_per_byte"), "note": f"perplexity {p['perplexity']:.2f} per token"})
    return [r | {"value": r["value"] if _finite(r["value"]) else None} for r in rows]
