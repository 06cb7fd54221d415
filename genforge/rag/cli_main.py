"""`genforge rag index|query|eval`: typed configs and their `main(cfg)` (registered by the CLI's COMMANDS table).

index: documents -> chunks -> embeddings -> vector store (+ a BM25 index beside it)
query: one question -> top-k chunks (dense, BM25 or hybrid), printed with sources
eval:  a JSONL of questions with relevant document ids -> hit@k, MRR, nDCG@10 per retriever
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from genforge.errors import ConfigError
from genforge.io import read_jsonl, write_json
from genforge.rag.bm25 import BM25Index
from genforge.rag.chunk import WhitespaceTokenizer, chunk_documents, size_for_context
from genforge.rag.embed import make_embedder
from genforge.rag.evaluate import eval_retrieval
from genforge.rag.loaders import load_documents
from genforge.rag.qa import QAItem
from genforge.rag.retrieve import BM25Retriever, DenseRetriever, HybridRetriever, index_chunks
from genforge.rag.store import (
    StoreError,
    collection_exists,
    commit_rebuild,
    drop_collection,
    is_url,
    open_store,
    stage_rebuild,
)

MODES = ("dense", "bm25", "hybrid")


@dataclass
class IndexConfig:
    """Index documents into a vector store collection (and a BM25 index beside it)."""

    input: str = ""  # a file or folder of .txt / .jsonl / .md documents
    store: str = "runs/rag"  # folder holding the collections, or http://host:port of a Chroma server
    collection: str = "kb"  # collection name (letters, digits, _ - .)
    backend: str = "lance"  # lance (embedded default) or flat (numpy, no extra dependency); ignored for a URL
    local_dir: str = ""  # where the BM25 index and summaries go when store is a URL (default runs/rag)
    embedder: str = "minilm"  # minilm (packaged all-MiniLM-L6-v2), hashing, hashing-<dim>, or a model folder
    threads: int = 1  # torch threads for the embedder (1 measured fastest on a small shared CPU)
    tokenizer: str = ""  # genforge tokenizer folder for chunking; empty -> whitespace words
    chunk_size: int = 128  # tokens per chunk (ignored when context_len > 0)
    overlap: int = 16  # tokens shared by neighbouring chunks
    context_len: int = 0  # > 0: size chunks so that k of them plus reserve fit this many tokens
    k: int = 4  # passages per prompt (with context_len)
    reserve: int = 128  # tokens kept for template, question and answer (with context_len)
    text_field: str = "text"  # JSONL key holding the text
    id_field: str = "id"  # JSONL key holding the document id
    batch_size: int = 256  # chunks per embedding batch and store commit
    bm25: bool = True  # also build a BM25 index (needed for bm25 / hybrid queries)
    overwrite: bool = False  # rebuild an existing collection from scratch
    skip_unreadable: bool = False  # count non-UTF-8 files as skipped instead of failing


@dataclass
class QueryConfig:
    """Retrieve the top-k chunks for one question."""

    query: str = ""  # the question
    store: str = "runs/rag"  # folder or Chroma server URL
    collection: str = "kb"
    local_dir: str = ""  # BM25 index folder when store is a URL
    k: int = 5
    mode: str = "hybrid"  # dense, bm25 or hybrid (reciprocal-rank fusion of both)
    embedder: str = ""  # empty -> the embedder the collection was indexed with
    threads: int = 1


@dataclass
class RagEvalConfig:
    """Retrieval quality (hit@k, MRR, nDCG@10) of dense, BM25 and hybrid on questions with known documents."""

    questions: str = ""  # JSONL with a question, an answer and the id of the relevant document
    store: str = "runs/rag"  # folder or Chroma server URL
    collection: str = "kb"
    local_dir: str = ""  # BM25 index folder when store is a URL
    question_field: str = "question"
    answer_field: str = "answer"
    relevant_field: str = "id"  # key holding the relevant document id (a string or a list)
    k: int = 10
    modes: str = "dense,bm25,hybrid"
    embedder: str = ""
    threads: int = 1
    out: str = ""  # write metrics JSON here (empty -> <store>/<collection>.eval.json)


def _local(store: str, local_dir: str) -> Path:
    """Folder for files that live beside the store (BM25 index, summaries)."""
    return Path(local_dir or ("runs/rag" if is_url(store) else store))


def _load_tokenizer(path: str):
    if not path:
        return WhitespaceTokenizer()
    from genforge.tokenizer import Tokenizer
    return Tokenizer.load(path)


def main_index(cfg: IndexConfig) -> dict:
    if not cfg.input:
        raise ConfigError("rag index: set input=<file or folder of documents>")
    t0 = time.perf_counter()
    rep = load_documents(cfg.input, cfg.text_field, cfg.id_field, cfg.skip_unreadable)
    size = size_for_context(cfg.context_len, cfg.k, cfg.reserve) if cfg.context_len > 0 else cfg.chunk_size
    chunks = chunk_documents(rep.documents, _load_tokenizer(cfg.tokenizer), size, min(cfg.overlap, size - 1))
    emb = make_embedder(cfg.embedder, cfg.threads)
    root, local = cfg.store, _local(cfg.store, cfg.local_dir)
    if collection_exists(root, cfg.collection) and not cfg.overwrite:
        raise StoreError(f"collection {cfg.collection!r} already exists at {root}; pass overwrite=true to "
                         "rebuild it or choose another collection name")
    if is_url(root):
        # a server collection is rebuilt in place (drop, then create): readers see it grow meanwhile
        drop_collection(root, cfg.collection)
        store = open_store(root, cfg.collection, None, emb.dim, emb.name, create=True)
    else:
        # built as a new invisible version, published by one rename at the end: a kill at any
        # moment leaves the previous index (vectors and BM25) as it was
        store = stage_rebuild(root, cfg.collection, cfg.backend, emb.dim, emb.name)
    t1 = time.perf_counter()
    n = index_chunks(chunks, emb, store, cfg.batch_size,
                     progress=lambda i, total: print(f"\rindexed {i}/{total} chunks", end="", flush=True))
    print()
    t_embed = time.perf_counter() - t1
    if cfg.bm25:
        BM25Index().build([c.id for c in chunks], [c.text for c in chunks],
                          [dict(c.meta, doc_id=c.doc_id, source=c.source) for c in chunks]
                          ).save(local / f"{store.table_name if not is_url(root) else cfg.collection}.bm25")
    if not is_url(root):
        old = commit_rebuild(store)
        if old:
            shutil.rmtree(local / f"{old}.bm25", ignore_errors=True)
    summary = {"documents": len(rep.documents), "skipped": rep.skipped, "chunks": n, "chunk_size": size,
               "embedder": emb.name, "dim": emb.dim, "chunks_per_s": n / max(t_embed, 1e-9),
               "seconds": time.perf_counter() - t0, "config": asdict(cfg)}
    write_json(local / f"{cfg.collection}.index.json", summary)
    print(f"{cfg.collection}: {len(rep.documents)} documents ({rep.n_skipped} skipped) -> {n} chunks of "
          f"<= {size} tokens, {summary['chunks_per_s']:.0f} chunks/s with {emb.name}")
    return summary


def build_retrievers(store: str, collection: str, modes: list[str], embedder: str = "", threads: int = 1,
                     local_dir: str = "") -> dict:
    """Named retrievers over an indexed collection (the embedder defaults to the one that indexed it)."""
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ConfigError(f"unknown retrieval mode {bad[0]!r}; use one of {', '.join(MODES)}")
    out: dict = {}
    if {"dense", "hybrid"} & set(modes):
        vs = open_store(store, collection)
        emb = make_embedder(embedder or vs.embedder, threads)
        vs = open_store(store, collection, dim=emb.dim, embedder=emb.name)  # checks the dimension
        out["dense"] = DenseRetriever(vs, emb)
    if {"bm25", "hybrid"} & set(modes):
        table = collection if is_url(store) else open_store(store, collection).table_name
        out["bm25"] = BM25Retriever(BM25Index.load(_local(store, local_dir) / f"{table}.bm25"))
    if "hybrid" in modes:
        out["hybrid"] = HybridRetriever([out["bm25"], out["dense"]])
    return {m: out[m] for m in modes}


def main_query(cfg: QueryConfig) -> list:
    if not cfg.query.strip():
        raise ConfigError("rag query: set query=<question>")
    r = build_retrievers(cfg.store, cfg.collection, [cfg.mode], cfg.embedder, cfg.threads, cfg.local_dir)[cfg.mode]
    hits = r.search(cfg.query, cfg.k)
    for i, h in enumerate(hits, 1):
        print(f"{i}. [{h.score:.4f}] {h.meta.get('source', h.id)}: {h.text[:200]}")
    return hits


def main_eval(cfg: RagEvalConfig) -> dict:
    if not cfg.questions:
        raise ConfigError("rag eval: set questions=<JSONL with question, answer and relevant document id>")
    items = []
    for lineno, row in read_jsonl(cfg.questions, required=(cfg.question_field, cfg.relevant_field)):
        rel = row[cfg.relevant_field]
        rel = rel if isinstance(rel, list) else [rel]
        items.append(QAItem(id=f"{cfg.questions}:{lineno}", question=row[cfg.question_field],
                            answer=str(row.get(cfg.answer_field, "")), relevant={str(r): 1 for r in rel}))
    retrievers = build_retrievers(cfg.store, cfg.collection, [m.strip() for m in cfg.modes.split(",") if m.strip()],
                                  cfg.embedder, cfg.threads, cfg.local_dir)
    res = eval_retrieval(retrievers, items, cfg.k)
    for name, m in res.items():
        print(f"{name:7s} hit@1 {m['hit@1']:.3f}  hit@10 {m['hit@10']:.3f}  MRR {m['mrr']:.3f}  "
              f"nDCG@10 {m['ndcg@10']:.3f}  p50 {m['latency_ms_p50']:.1f} ms")
    out = Path(cfg.out or _local(cfg.store, cfg.local_dir) / f"{cfg.collection}.eval.json")
    write_json(out, {"config": asdict(cfg), "n": len(items),
                     "metrics": {n: {k: v for k, v in m.items() if k != "per_query_mrr"} for n, m in res.items()}})
    return json.loads(out.read_text())
