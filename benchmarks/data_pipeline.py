"""Throughput of the data pipeline on the tiny world: docs/s and MB/s for reading, filtering and dedup.

Usage: python benchmarks/data_pipeline.py [--size tiny] [--seed 0]

The reference is a plain read of the same corpus in the same run; the last column is each stage's CPU
time as a multiple of it, which is steadier than wall time on a shared machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from genforge.data.pipeline import CleanConfig, clean_corpus, score_against_labels
from genforge.data.readers import iter_documents
from genforge.world import generate_world


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="tiny", choices=["smoke", "tiny", "small"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        summary, gen_wall, gen_cpu = _timed(lambda: generate_world(root / "world", args.seed, args.size))
        corpus = root / "world" / "corpus.jsonl"
        labels = root / "world" / "corpus_labels.jsonl"
        n_docs, mb = summary["corpus"]["docs"], summary["corpus"]["bytes"] / 1e6
        print(f"world: size={args.size} seed={args.seed}: {n_docs} docs, {mb:.2f} MB of text, "
              f"generated in {gen_wall:.2f} s wall ({gen_cpu:.2f} s CPU)")

        rows = []
        _, w, c = _timed(lambda: sum(1 for _ in iter_documents(corpus)))
        rows.append(("read only (reference)", w, c, None))
        stages = [
            ("read + normalise + filters", CleanConfig(dedup_exact=False, dedup_near=False)),
            ("+ exact dedup", CleanConfig(dedup_near=False)),
            ("+ near dedup (datasketch)", CleanConfig(dedup_backend="datasketch")),
            ("+ near dedup (builtin numpy)", CleanConfig(dedup_backend="builtin")),
        ]
        for name, cfg in stages:
            report, w, c = _timed(lambda cfg=cfg: clean_corpus(corpus, root / "out" / "clean.jsonl", cfg))
            rows.append((name, w, c, score_against_labels(report, labels)))

        ref_cpu = rows[0][2]
        head = f"{'stage':<30} {'wall s':>7} {'CPU s':>7} {'docs/s':>8} {'MB/s':>6} {'x read':>7}"
        print(f"\n{head}   recall j/h/e/n  keep")
        for name, w, c, score in rows:
            line = f"{name:<30} {w:7.2f} {c:7.2f} {n_docs / w:8.0f} {mb / w:6.2f} {c / ref_cpu:7.1f}"
            if score:
                r = score["recall"]
                line += (f"   {r['junk']:.2f}/{r['harmful']:.2f}/{r['exact_dup']:.2f}/{r['near_dup']:.2f}"
                         f"  {score['clean_keep_rate']:.3f}")
            print(line)


if __name__ == "__main__":
    main()
