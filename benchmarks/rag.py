"""Retrieval stores at scale: index build rate, query latency p50/p99 and recall@10 against exact search.

    .venv/bin/python benchmarks/rag.py                      # 100k synthetic chunks, hashing embedder (~minutes)
    .venv/bin/python benchmarks/rag.py --n 20000
    .venv/bin/python benchmarks/rag.py --minilm --n 2000    # the packaged MiniLM (also times 1 vs 2 threads)

For each store (LanceDB brute force, LanceDB + IVF-PQ index, numpy flat, a Chroma server with HNSW that
this script starts when `chroma` is installed) and for BM25: build rate in
chunks/s *including* embedding, query latency (ms, embedding the query included) and recall@10 of the
store's top 10 against exact inner-product search over the same vectors in this run (the reference).
Corpora: `synthetic` (default for hashing): sentences over a Zipf-distributed vocabulary, queries are 8
words sampled from a chunk; `world` (default with --minilm): the tiny world's post-cutoff facts plus
corpus sentences as distractors, queries are the facts' questions. Either way the chunk a query came
from is a known relevant item, so hit@10 is printed beside recall.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import genforge  # noqa: E402,F401  (sets OMP_WAIT_POLICY)
from genforge.rag.bm25 import BM25Index  # noqa: E402
from genforge.rag.embed import HashingEmbedder, MiniLMEmbedder  # noqa: E402
from genforge.rag.store import open_store  # noqa: E402


def synthetic(n: int, n_queries: int, seed: int) -> tuple[list[str], list[str], list[int]]:
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(20000)]
    p = 1.0 / np.arange(1, len(vocab) + 1)  # Zipf: a few very common words, a long tail of rare ones
    p /= p.sum()
    words = rng.choice(len(vocab), size=(n, 40), p=p)
    texts = [" ".join(vocab[j] for j in row) for row in words]
    src = rng.choice(n, n_queries, replace=False)
    queries = [" ".join(vocab[j] for j in rng.choice(words[i], 8, replace=False)) for i in src]
    return texts, queries, src.tolist()


def world(n: int, n_queries: int, seed: int) -> tuple[list[str], list[str], list[int]]:
    import random

    from genforge.world.corpus import iter_clean_documents
    from genforge.world.facts import build_world
    from genforge.world.knowledge import make_knowledge
    w = build_world(seed)
    facts = make_knowledge(w, min(n, 2000), seed)
    texts = [f["fact"] for f in facts]
    docs = iter_clean_documents(w, random.Random(seed))
    while len(texts) < n:  # distractors: sentences of the (pre-cutoff) corpus
        texts += [s for s in next(docs).split(". ") if len(s.split()) > 3][: n - len(texts)]
    order = random.Random(seed).sample(range(len(facts)), min(n_queries, len(facts)))
    return texts, [facts[i]["question"] for i in order], order


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q))


@contextlib.contextmanager
def chroma_server(folder: Path):
    """A local Chroma server for the run (the same `chroma run` a user starts); yields its URL."""
    import httpx
    exe = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([exe, "run", "--path", str(folder), "--host", "127.0.0.1", "--port", str(port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/api/v2/heartbeat", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        yield url
    finally:
        p.terminate()
        p.wait(timeout=60)


def bench_embed_threads(texts: list[str]) -> None:
    for threads in (1, 2):
        emb = MiniLMEmbedder(threads=threads)
        emb.embed(texts[:8])  # warm-up
        t0 = time.perf_counter()
        emb.embed(texts)
        dt = time.perf_counter() - t0
        print(f"MiniLM threads={threads}: {len(texts) / dt:.0f} sentences/s ({len(texts)} sentences)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=0, help="chunks (default 100000, or 2000 with --minilm)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--minilm", action="store_true", help="embed with the packaged MiniLM instead of hashing")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1024, help="chunks per store commit")
    ap.add_argument("--stores", default="lance,lance-ivfpq,flat,chroma")
    ap.add_argument("--nprobes", type=int, default=20, help="IVF partitions probed per LanceDB query")
    ap.add_argument("--corpus", choices=["synthetic", "world"], default="", help="default: world with --minilm")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n = args.n or (2000 if args.minilm else 100_000)
    corpus = args.corpus or ("world" if args.minilm else "synthetic")
    texts, queries, src = (world if corpus == "world" else synthetic)(n, args.queries, args.seed)
    if args.minilm:
        bench_embed_threads(texts[:256])
    emb = MiniLMEmbedder(threads=args.threads) if args.minilm else HashingEmbedder(256)
    print(f"{n} {corpus} chunks, {len(queries)} queries, embedder {emb.name} ({emb.dim}-d)")

    t0 = time.perf_counter()
    vecs = np.concatenate([emb.embed(texts[i:i + args.batch]) for i in range(0, n, args.batch)])
    t_embed = time.perf_counter() - t0
    qvecs = emb.embed(queries)
    sims = qvecs @ vecs.T  # (Q, N)
    # the reference: exact inner-product top 10; a returned item counts as correct when its true score
    # reaches the 10th best (duplicate chunks tie, and any of them is a right answer)
    tenth = -np.partition(-sims, 9, axis=1)[:, 9]
    print(f"embedding alone: {n / t_embed:.0f} chunks/s")

    rows = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        built: dict[str, object] = {}
        for name in args.stores.split(","):
            backend = "flat" if name == "flat" else "lance"
            root = Path(tmp) / name
            if name == "chroma":
                if not (shutil.which("chroma") or Path(sys.executable).with_name("chroma").exists()):
                    print("chroma: not installed (pip install 'genforge[rag-server]'), row left out")
                    continue
                root = stack.enter_context(chroma_server(Path(tmp) / "chroma"))
            if name == "lance-ivfpq" and "lance" in built:
                store, t_add = built["lance"], built["lance_t_add"]
                t0 = time.perf_counter()
                store.build_ann_index()
                t_build = t_add + time.perf_counter() - t0
            else:
                store = open_store(root, "bench", backend, emb.dim, emb.name, create=True)
                t0 = time.perf_counter()
                for i in range(0, n, args.batch):
                    store.add([str(j) for j in range(i, min(n, i + args.batch))], vecs[i:i + args.batch],
                              texts[i:i + args.batch])
                t_add = time.perf_counter() - t0
                t_build = t_add
                built[name], built[f"{name}_t_add"] = store, t_add
            store.search(qvecs[0], 10)  # warm-up (loads segments / opens files)
            lat, recall, hit = [], [], []
            for qi, q in enumerate(queries):
                t0 = time.perf_counter()
                qv = emb.embed([q])[0]
                hits = store.search(qv, 10, nprobes=args.nprobes) if name == "lance-ivfpq" else store.search(qv, 10)
                lat.append(1e3 * (time.perf_counter() - t0))
                got = {int(h.id) for h in hits}
                recall.append(sum(sims[qi, j] >= tenth[qi] - 1e-5 for j in got) / 10)
                hit.append(float(src[qi] in got))
            rows.append((name, n / (t_embed + t_build), pct(lat, 50), pct(lat, 99), np.mean(recall), np.mean(hit)))

        t0 = time.perf_counter()
        bm = BM25Index().build([str(i) for i in range(n)], texts)
        t_bm = time.perf_counter() - t0
        lat, hit = [], []
        for qi, q in enumerate(queries):
            t0 = time.perf_counter()
            hits = bm.search(q, 10)
            lat.append(1e3 * (time.perf_counter() - t0))
            hit.append(float(str(src[qi]) in {h.id for h in hits}))
        rows.append(("bm25 (bm25s)", n / t_bm, pct(lat, 50), pct(lat, 99), float("nan"), np.mean(hit)))

    print(f"\n{'store':14s} {'build chunks/s':>15s} {'p50 ms':>8s} {'p99 ms':>8s} {'recall@10':>10s} "
          f"{'hit@10':>7s}")
    for name, rate, p50, p99, rec, h in rows:
        rec_s = "   -" if np.isnan(rec) else f"{rec:.3f}"
        print(f"{name:14s} {rate:15.0f} {p50:8.2f} {p99:8.2f} {rec_s:>10s} {h:7.3f}")
    print("recall@10 is against exact inner-product search over the same vectors (1.000 = exact); "
          "build rate includes embedding (BM25: tokenizing + indexing).")


if __name__ == "__main__":
    main()
