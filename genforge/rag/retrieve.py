"""Retrievers: dense (embedder + vector store), BM25, hybrid by reciprocal-rank fusion, LM reranking.

Every retriever has `search(query, k) -> list[Hit]`, best first, so they compose.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from genforge.errors import ConfigError
from genforge.rag.bm25 import BM25Index
from genforge.rag.chunk import Chunk
from genforge.rag.embed import Embedder
from genforge.rag.store import Hit, VectorStore


class Retriever(Protocol):
    def search(self, query: str, k: int) -> list[Hit]: ...


def index_chunks(chunks: Sequence[Chunk], embedder: Embedder, store: VectorStore, batch_size: int = 256,
                 progress: Callable[[int, int], None] | None = None) -> int:
    """Embed and insert chunks in batches (one atomic store commit per batch); returns rows added."""
    n = 0
    for i in range(0, len(chunks), batch_size):
        batch = chunks[i:i + batch_size]
        vecs = embedder.embed([c.text for c in batch])  # (B, dim)
        store.add([c.id for c in batch], vecs, [c.text for c in batch],
                  [dict(c.meta, doc_id=c.doc_id, source=c.source) for c in batch])
        n += len(batch)
        if progress:
            progress(n, len(chunks))
    return n


class DenseRetriever:
    """Embed the query, nearest neighbours by cosine in the store."""

    def __init__(self, store: VectorStore, embedder: Embedder):
        self.store, self.embedder = store, embedder

    def search(self, query: str, k: int) -> list[Hit]:
        return self.store.search(self.embedder.embed([query])[0], k)


class BM25Retriever:
    def __init__(self, index: BM25Index):
        self.index = index

    def search(self, query: str, k: int) -> list[Hit]:
        return self.index.search(query, k)


def rrf(rankings: Sequence[Sequence[Hit]], k: int = 60, weights: Sequence[float] | None = None) -> list[Hit]:
    """Reciprocal-rank fusion (Cormack, Clarke & Büttcher 2009): score(d) = sum_r w_r / (k + rank_r(d)).

    Ranks start at 1; k=60 is the paper's constant (it damps the weight of the very top ranks).
    Ties keep the order of first appearance (the first ranking wins), so fusion is deterministic.
    """
    weights = weights or [1.0] * len(rankings)
    score: dict[str, float] = {}
    first: dict[str, Hit] = {}
    for w, ranking in zip(weights, rankings):
        for rank, h in enumerate(ranking, 1):
            score[h.id] = score.get(h.id, 0.0) + w / (k + rank)
            first.setdefault(h.id, h)
    order = sorted(first, key=lambda i: -score[i])  # stable sort: ties stay in order of first appearance
    return [Hit(i, score[i], first[i].text, first[i].meta) for i in order]


class HybridRetriever:
    """Fuse several retrievers (typically BM25 + dense) by RRF over each one's top `depth`."""

    def __init__(self, retrievers: Sequence[Retriever], depth: int = 50, rrf_k: int = 60,
                 weights: Sequence[float] | None = None):
        if not retrievers:
            raise ConfigError("HybridRetriever needs at least one retriever")
        self.retrievers, self.depth, self.rrf_k, self.weights = list(retrievers), depth, rrf_k, weights

    def search(self, query: str, k: int) -> list[Hit]:
        rankings = [r.search(query, max(k, self.depth)) for r in self.retrievers]
        return rrf(rankings, self.rrf_k, self.weights)[:k]


LogLik = Callable[[list[str], list[str]], list[float]]
"""loglik(contexts, continuations) -> sum of log p(continuation tokens | context), one per pair."""


class LikelihoodReranker:
    """Rerank a first stage by the LM's own likelihood of the query given each passage.

    The query-likelihood idea of UPR (Sachan et al. 2022): score(p) = log p_LM(question | passage),
    no cross-encoder needed, any LM that can score text works.
    """

    def __init__(self, first_stage: Retriever, loglik: LogLik, depth: int = 20,
                 template: str = "Passage: {passage}\nQuestion:"):
        self.first_stage, self.loglik, self.depth, self.template = first_stage, loglik, depth, template

    def search(self, query: str, k: int) -> list[Hit]:
        hits = self.first_stage.search(query, max(k, self.depth))
        if not hits:
            return []
        scores = self.loglik([self.template.format(passage=h.text) for h in hits], [" " + query] * len(hits))
        order = np.argsort(-np.asarray(scores), kind="stable")
        return [Hit(hits[i].id, float(scores[i]), hits[i].text, hits[i].meta) for i in order[:k]]


def gpt_loglik(model, tokenizer, max_len: int | None = None) -> LogLik:
    """A `LogLik` for a genforge GPT (or any model mapping ids (1, T) -> logits (1, T, V)).

    The context is truncated from the left so that context + continuation fit `max_len`.
    """
    import torch
    import torch.nn.functional as F

    max_len = max_len or getattr(getattr(model, "config", None), "max_seq_len", 512)

    def loglik(contexts: list[str], continuations: list[str]) -> list[float]:
        out = []
        with torch.inference_mode():
            for ctx, cont in zip(contexts, continuations):
                c_ids, y_ids = tokenizer.encode(ctx), tokenizer.encode(cont)
                ids = (c_ids + y_ids)[-max_len:]
                n_y = min(len(y_ids), len(ids) - 1)
                x = torch.tensor([ids])
                logp = F.log_softmax(model(x)[0, :-1].float(), dim=-1)  # (T-1, V): predicts ids[1:]
                tgt = torch.tensor(ids[1:])
                out.append(float(logp[-n_y:].gather(1, tgt[-n_y:, None]).sum()))
        return out

    return loglik
