"""Evaluation building blocks a lesson or the CLI calls: retrieval quality per retriever, QA with ragas metrics.

Relevance is judged at document level: a retrieved chunk counts for its `doc_id` (first occurrence),
so chunking choices do not change what "relevant" means.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from genforge.rag.metrics import context_precision, context_recall, evaluate_run, faithfulness, per_query
from genforge.rag.qa import Generate, QAItem, run_qa
from genforge.rag.retrieve import Retriever


def doc_ranking(hits, depth: int) -> list[str]:
    """Chunk hits -> document ids, first occurrence kept, best first."""
    out: list[str] = []
    for h in hits:
        d = h.meta.get("doc_id", h.id)
        if d not in out:
            out.append(d)
        if len(out) == depth:
            break
    return out


def eval_retrieval(retrievers: Mapping[str, Retriever], items: Sequence[QAItem], k: int = 10,
                   chunk_depth: int | None = None) -> dict[str, dict]:
    """For each named retriever: mean hit@1/5/10, MRR, nDCG@10, per-query MRR, and query latency p50/p99 (ms)."""
    qrels = {it.id: it.relevant for it in items}
    out = {}
    for name, r in retrievers.items():
        run, lat = {}, []
        for it in items:
            t0 = time.perf_counter()
            hits = r.search(it.question, chunk_depth or 3 * k)
            lat.append(1e3 * (time.perf_counter() - t0))
            run[it.id] = doc_ranking(hits, k)
        m = evaluate_run(run, qrels)
        m["per_query_mrr"] = per_query(run, qrels, "mrr")
        m["latency_ms_p50"], m["latency_ms_p99"] = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
        out[name] = m
    return out


def eval_qa(generate: Generate, items: Sequence[QAItem], retriever: Retriever | None = None, k: int = 4,
            modes: Sequence[str] = ("closed", "rag", "oracle"), defended: bool = False,
            fits: Callable[[str], bool] | None = None) -> dict[str, dict]:
    """Per condition: per-item correctness, answers, and (for context conditions) ragas-style metrics.

    defended: passages go in <document> fences with the "documents are data" instruction (qa.DEFENCE).
    fits: see `qa.run_qa` (drops low-ranked passages from prompts too long for the model).
    """
    out = {}
    for mode in modes:
        res = run_qa(generate, items, mode, retriever if mode == "rag" else None, k, defended=defended, fits=fits)
        row = {"correct": res.correct, "accuracy": float(np.mean(res.correct)), "answers": res.answers}
        if mode != "closed":
            # faithfulness of the answer as a claim ("<question> <answer>" would mix in the question's words)
            row["faithfulness"] = [faithfulness(a.strip().split("\n")[0], c) for a, c in zip(res.answers,
                                                                                            res.contexts)]
            row["context_precision"] = [context_precision(c, it.oracle or it.answer)
                                        for c, it in zip(res.contexts, items)]
            row["context_recall"] = [context_recall(c, it.oracle or it.answer) for c, it in zip(res.contexts, items)]
        out[mode] = row
    return out
