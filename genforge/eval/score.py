"""One scoring path for a world task: the SFT, eval and align lessons and `genforge eval` all score through it.

A task's metric comes from `genforge.eval.tasks.METRIC_RULES` (ROUGE-L for summaries, BLEU for translation,
the refusal check for refusals, exact match otherwise) and its answers are read with the world's own
extraction (`genforge.world.extract_answer`), so the same outputs get the same number wherever they are
scored. Every score is in [0, 1] (BLEU is sacrebleu's 0-100 divided by 100).

    score = score_task_rows(model, tok, "arithmetic", rows)   # greedy answers, chat template
    score.score, score.items, score.predictions
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from genforge.eval import metrics
from genforge.eval.tasks import REFERENCE_FIELDS, is_refusal, metric_for

if TYPE_CHECKING:  # torch stays unimported until a model is scored
    import torch.nn as nn

    from genforge.tokenizer import Tokenizer

# prompts per generation batch: finished rows leave the engine's batch, so a wide batch costs little when its answers
# differ in length, and a decode step's fixed cost (~1.2 ms of a ~4 ms step at 32 rows, tiny model, one core) is shared
BATCH = 64
# the main aggregate of each generative metric (the key `aggregate` returns it under)
MAIN_KEY = {"exact_match": "exact_match", "rouge": "rougeL", "bleu": "bleu", "refusal": "refusal_rate"}


@dataclass
class TaskScore:
    """One task's score for one model: the task number, per-item scores and what the model said."""

    task: str
    metric: str  # exact_match | rouge | bleu | refusal
    score: float  # in [0, 1]: the mean of `items`, except BLEU (corpus BLEU / 100, as sacrebleu defines it)
    items: list[float]  # per-item scores in [0, 1]
    predictions: list[str]  # the model's (stripped) outputs, one per row
    answers: list[str]  # what the extractor read from each output (exact match), else the output
    metrics: dict[str, float] = field(default_factory=dict)  # every aggregate (ROUGE-1/2/L, ...)


def world_extract(task: str) -> Callable[[str], str]:
    """The world's answer extraction for `task` (the default extractor when the world package is absent)."""
    try:
        from genforge.world import extract_answer
    except ImportError:
        return metrics.extract_answer
    return lambda text: extract_answer(task, text)


def generative_metric(task: str, row: dict | None = None) -> str:
    """The metric for scoring generated answers to `task`: multiple choice is exact match on the letter
    (the eval harness scores it by log-likelihood instead, a different measurement)."""
    metric = metric_for(task, row)
    return "exact_match" if metric == "mc" else metric


def reference(metric: str, row: dict) -> str:
    """The row's reference for `metric` (the short answer for exact match, the response otherwise)."""
    for f in REFERENCE_FIELDS[metric]:
        if row.get(f) not in (None, ""):
            return str(row[f])
    return ""


def answers_match(answer: str, ref: str) -> float:
    """1.0 if the extracted answer equals the reference after `metrics.normalize_answer`; an empty answer never
    matches. Where normalising leaves nothing (a lone article: the multiple-choice letter "A"), the stripped,
    lower-cased strings are compared instead, or every unreadable answer would match a gold "A"."""
    a, r = metrics.normalize_answer(answer), metrics.normalize_answer(ref)
    if not a or not r:
        a, r = answer.strip().lower(), ref.strip().lower()
    return float(bool(a) and a == r)


def score_output(metric: str, output: str, ref: str, extract: Callable[[str], str] | None) -> dict:
    """Score one output: {"score": in [0, 1], ...} plus "answer" (exact match) or ROUGE-1/2/L (rouge).

    extract: reads the answer out of the output for exact match (None: the output is the answer).
    """
    out = output.strip()
    if metric == "exact_match":
        answer = extract(out) if extract is not None else out
        return {"answer": answer, "score": answers_match(answer, ref)}
    if metric == "rouge":
        r = metrics.rouge_scores(out, ref)
        return {**r, "score": r["rougeL"]}
    if metric == "bleu":
        return {"score": metrics.sentence_bleu(out, ref) / 100.0}
    if metric == "refusal":  # the reference is a refusal: did the model refuse?
        return {"score": float(is_refusal(out))}
    raise ValueError(f"score_output: no generative scoring for metric '{metric}'")


def aggregate(metric: str, outputs: Sequence[str], refs: Sequence[str], items: Sequence[float]) -> dict[str, float]:
    """The task-level numbers: the mean item score, except corpus BLEU and mean ROUGE-1/2/L."""
    if not items:
        return {MAIN_KEY[metric]: float("nan")}
    if metric == "rouge":
        return metrics.rouge([o.strip() for o in outputs], list(refs))
    if metric == "bleu":
        return {"bleu": metrics.bleu([o.strip() for o in outputs], list(refs)) / 100.0}
    return {MAIN_KEY[metric]: sum(items) / len(items)}


def score_outputs(task: str, rows: Sequence[dict], outputs: Sequence[str]) -> TaskScore:
    """Score given outputs (one per row) for a task by its metric rule and the world's extraction."""
    metric = generative_metric(task, rows[0] if rows else None)
    extract = world_extract(task)
    refs = [reference(metric, r) for r in rows]
    per = [score_output(metric, o, ref, extract) for o, ref in zip(outputs, refs)]
    items = [p["score"] for p in per]
    agg = aggregate(metric, outputs, refs, items)
    return TaskScore(task, metric, agg[MAIN_KEY[metric]], items, [o.strip() for o in outputs],
                     [p.get("answer", o.strip()) for p, o in zip(per, outputs)], agg)


def score_task_rows(model: nn.Module, tokenizer: Tokenizer, task: str, rows: Sequence[dict], *,
                    batch_size: int = BATCH) -> TaskScore:
    """Greedy chat-template answers of `model` to each row's prompt, scored for `task`.

    max_new_tokens follows the longest reference response (+ 8 tokens of slack), so short-answer tasks
    decode short and summaries get room.
    """
    return score_tasks(model, tokenizer, {task: list(rows)}, batch_size=batch_size)[task]


def answer_budget(tokenizer: Tokenizer, task: str, rows: Sequence[dict]) -> int:
    """A task's generation budget: its longest reference response in tokens + 8 tokens of slack."""
    if not rows:
        raise ValueError(f"score_task_rows: no rows for task '{task}'")
    return max(len(tokenizer.encode(str(r.get("response") or r.get("answer") or ""))) for r in rows) + 8


def score_tasks(model: nn.Module, tokenizer: Tokenizer, items: dict[str, list[dict]], *,
                batch_size: int = BATCH) -> dict[str, TaskScore]:
    """`score_task_rows` for each task of {task: rows}: every task's prompts are answered in one pass (batches
    of similar prompt length; each row keeps its own task's budget), then scored per task."""
    budgets = {t: answer_budget(tokenizer, t, rows) for t, rows in items.items()}
    prompts = [r["prompt"] for rows in items.values() for r in rows]
    limits = [budgets[t] for t, rows in items.items() for _ in rows]
    outputs = iter(_generate(model, tokenizer, prompts, limits, batch_size))
    return {t: score_outputs(t, rows, [next(outputs) for _ in rows]) for t, rows in items.items()}


def _generate(model: nn.Module, tokenizer: Tokenizer, prompts: list[str], max_new_tokens: int | Sequence[int],
              batch_size: int = BATCH) -> list[str]:
    """The one way a task's answers are generated: greedy, one user turn of the chat template.

    max_new_tokens: one budget, or one per prompt. Prompts are batched by rendered length (less left padding,
    fewer cache columns); a greedy row's answer does not depend on its batch, so the order is free.
    A prompt that does not fit the model's context (a short smoke-size context and a long needle haystack) gets
    an empty answer, scored like any wrong one: a model cannot answer what it cannot read.
    """
    from genforge.infer.engine import Engine
    from genforge.infer.sampling import SamplingParams
    from genforge.text import generate_text, render_prompt

    model.eval()
    limits = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    limit = getattr(getattr(model, "config", None), "max_seq_len", None)
    lengths = [len(render_prompt(tokenizer, p, chat=True)) for p in prompts]
    todo = sorted((i for i, n in enumerate(lengths) if limit is None or n < limit), key=lambda i: lengths[i])
    engine = Engine(model)
    out = [""] * len(prompts)
    for start in range(0, len(todo), batch_size):
        idx = todo[start:start + batch_size]
        texts = generate_text(engine, tokenizer, [prompts[i] for i in idx], SamplingParams(), chat=True,
                              max_new_tokens=[limits[i] for i in idx])
        for i, text in zip(idx, texts):
            out[i] = text.strip()
    return out
