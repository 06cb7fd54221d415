"""Retrieval and RAG metrics.

Ranking (per query, then averaged): hit@k, reciprocal rank (MRR), nDCG@k with linear gain
(DCG = sum rel_i / log2(i + 1), the trec_eval convention; Järvelin & Kekäläinen 2002).

RAG quality as ragas defines them (Es et al. 2023, "RAGAS"), with the LLM judge replaced by a
simple documented judge that callers can swap for any `Judge`:
  faithfulness      = supported answer claims / answer claims
  context precision = sum_k precision@k * v_k / (relevant items in top K)   (v_k: item k relevant)
  context recall    = reference claims supported by the retrieved contexts / reference claims
Claims are sentences (ragas asks an LLM to decompose; on short factual answers sentences are the
statements). The default judge `overlap_judge` calls a claim supported when at least `threshold`
of its content words (lower-cased, stopwords removed, numbers kept) occur in the context.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

Judge = Callable[[str, str], bool]
"""judge(claim, context) -> is the claim supported by the context?"""

_STOP = frozenset("a an the of in on at to is are was were be been by for with and or as it its this that "
                  "which who whom what when where how does do did has have had from into than then".split())
_WORD = re.compile(r"\w+", re.UNICODE)


def hit_at_k(ranked: Sequence[str], relevant: set[str] | dict[str, int], k: int) -> float:
    """1 if any relevant item is in the top k."""
    return float(any(d in relevant and _grade(relevant, d) > 0 for d in ranked[:k]))


def reciprocal_rank(ranked: Sequence[str], relevant: set[str] | dict[str, int], k: int | None = None) -> float:
    """1 / rank of the first relevant item (0 if none in the top k, or in the whole list when k is None)."""
    for i, d in enumerate(ranked[:k] if k else ranked, 1):
        if d in relevant and _grade(relevant, d) > 0:
            return 1.0 / i
    return 0.0


def _grade(relevant: set[str] | dict[str, int], d: str) -> float:
    return float(relevant[d]) if isinstance(relevant, dict) else 1.0


def ndcg_at_k(ranked: Sequence[str], relevant: set[str] | dict[str, int], k: int = 10) -> float:
    """DCG@k / ideal DCG@k with gains = graded relevance (a set means grade 1)."""
    dcg = sum(_grade(relevant, d) / math.log2(i + 1) for i, d in enumerate(ranked[:k], 1) if d in relevant)
    ideal = sorted((_grade(relevant, d) for d in relevant), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 1) for i, g in enumerate(ideal, 1))
    return dcg / idcg if idcg > 0 else 0.0


def evaluate_run(run: dict[str, Sequence[str]], qrels: dict[str, dict[str, int]],
                 ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Mean hit@k, MRR and nDCG@10 over the queries of `qrels` (a query missing from `run` scores 0)."""
    out: dict[str, float] = {}
    qids = list(qrels)
    for k in ks:
        out[f"hit@{k}"] = sum(hit_at_k(run.get(q, []), qrels[q], k) for q in qids) / len(qids)
    out["mrr"] = sum(reciprocal_rank(run.get(q, []), qrels[q]) for q in qids) / len(qids)
    out["ndcg@10"] = sum(ndcg_at_k(run.get(q, []), qrels[q], 10) for q in qids) / len(qids)
    return out


def per_query(run: dict[str, Sequence[str]], qrels: dict[str, dict[str, int]], metric: str = "mrr") -> list[float]:
    """Per-query values of one metric (for bootstrap intervals): 'mrr', 'ndcg@10' or 'hit@k'."""
    vals = []
    for q in qrels:
        r = run.get(q, [])
        if metric == "mrr":
            vals.append(reciprocal_rank(r, qrels[q]))
        elif metric == "ndcg@10":
            vals.append(ndcg_at_k(r, qrels[q], 10))
        elif metric.startswith("hit@"):
            vals.append(hit_at_k(r, qrels[q], int(metric[4:])))
        else:
            raise ValueError(f"unknown metric {metric!r}")
    return vals


def content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


def claims(text: str) -> list[str]:
    """Sentences with at least one content word."""
    parts = re.split(r"(?<=[.!?])\s+|\n+", text.strip())
    return [p.strip() for p in parts if content_words(p)]


def overlap_judge(threshold: float = 0.8) -> Judge:
    """Supported when >= threshold of the claim's content words appear in the context."""

    def judge(claim: str, context: str) -> bool:
        words = content_words(claim)
        if not words:
            return False
        ctx = set(content_words(context))
        return sum(w in ctx for w in words) / len(words) >= threshold

    return judge


def faithfulness(answer: str, contexts: Sequence[str], judge: Judge | None = None) -> float:
    """Share of the answer's claims supported by the retrieved contexts (0 for an answer with no claim)."""
    judge = judge or overlap_judge()
    cs = claims(answer)
    ctx = "\n".join(contexts)
    return sum(judge(c, ctx) for c in cs) / len(cs) if cs else 0.0


def context_precision(contexts: Sequence[str], reference: str, judge: Judge | None = None) -> float:
    """ragas context precision@K: are the relevant contexts ranked high? Relevant = supports the reference."""
    judge = judge or overlap_judge()
    v = [judge(reference, c) for c in contexts]
    n_rel = sum(v)
    if not n_rel:
        return 0.0
    return sum((sum(v[:k]) / k) * v[k - 1] for k in range(1, len(v) + 1)) / n_rel


def context_recall(contexts: Sequence[str], reference: str, judge: Judge | None = None) -> float:
    """ragas context recall: share of the reference's claims supported by the retrieved contexts."""
    judge = judge or overlap_judge()
    cs = claims(reference)
    ctx = "\n".join(contexts)
    return sum(judge(c, ctx) for c in cs) / len(cs) if cs else 0.0
