"""Throughput and memory of the data pipeline on a generated corpus: clean, + dedup, + tokenise and pack.

Usage: python benchmarks/data_pipeline.py [--mb 200] [--big] [--workers 1,2] [--steps ...] [--check] [--json out.json]

A synthetic corpus (`genforge.data.synth`: 1-3 KB pages of the tiny world's sentences, with its planted junk,
harmful text and duplicates) of `--mb` MB (`--big`: 1000) is cleaned with 1 and 2 workers in fresh subprocesses:

* clean: normalise + rules + learned classifiers (trained once beforehand, not timed);
* + dedup: the same plus exact and MinHash-LSH near dedup (the full `genforge data clean`);
* tokenise + pack: `pack_shards` of the cleaned output (a separate run after the clean, one process), with a 4k
  byte-level BPE trained beforehand on the corpus's first 5,000 documents (not timed);
* fused: the full clean with `pack_to`: the workers tokenise each chunk beside the filters and the main process
  appends the kept documents' tokens to the shards (`genforge data clean ... clean.pack_to=DIR
  clean.pack_tokenizer=TOK`). `--check` compares its outputs (kept, removed, every shard file) by md5 with the
  separate clean and pack.

End to end is the fused run when it ran (else the clean + dedup run plus the separate pack).

For each it prints wall MB/s, MB per CPU-second (main process + workers: steadier than wall time on a shared
machine; "2-core MB/s" = 2 x that, what two idle cores would do at full use) and peak RSS (main, largest
worker, and their sum bounding the total). The reference is a plain read of the same file in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's genforge, here and in the measured subprocesses


def _own_peak_mb() -> float:
    """This process's peak RSS: VmHWM of its own address space where Linux has it. `ru_maxrss` of a process
    started with exec keeps the high-water mark of the address space it replaced (here the driver's), so it
    overstates a small step."""
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM")) / 1e3
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def _child(spec: dict) -> dict:
    """Run one measured step in this (fresh) process and return its metrics."""
    w0, c0 = time.perf_counter(), time.process_time()
    if spec["step"] == "read":
        from genforge.data.readers import iter_documents

        info = {"docs": sum(1 for _ in iter_documents(spec["input"]))}
    elif spec["step"] == "clean":
        from genforge.data.pipeline import CleanConfig, clean_corpus

        cfg = CleanConfig(**spec["cfg"])
        rep = clean_corpus(spec["input"], spec["out"], cfg)
        info = {"docs": rep.docs_in, "kept": rep.docs_kept, "removed": rep.removed, "tokens": rep.tokens,
                "index_mb": json.loads(Path(rep.report_path).read_text())["index_bytes"] / 1e6}
    else:  # pack
        from genforge.data.readers import iter_documents
        from genforge.data.shards import pack_shards
        from genforge.tokenizer import Tokenizer

        tok = Tokenizer.load(spec["tokenizer"])
        m = pack_shards((d.text for d in iter_documents(spec["input"])), tok, spec["out"], batch_docs=1024)
        info = {"tokens": m["splits"]["train"]["n_tokens"] + m["splits"]["val"]["n_tokens"]}
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {**info, "wall": wall, "cpu_main": cpu, "cpu_workers": ch.ru_utime + ch.ru_stime,
            "rss_main_mb": _own_peak_mb(),
            "rss_worker_mb": ch.ru_maxrss / 1e3}


def _breakdown(corpus: Path, filters: Path, tokenizer: Path | None, mb_limit: float = 20.0) -> list[tuple[str, float]]:
    """CPU seconds per MB of each component of one worker's chunk work and of tokenising, on the first
    `mb_limit` MB (in this process, one chunk of 256 documents at a time, as a worker runs them)."""
    from genforge.data import clean as C
    from genforge.data.classify import features_from_columns
    from genforge.data.pipeline import CleanConfig, _Worker, exact_key64_normalised
    from genforge.data.readers import iter_documents

    cfg = CleanConfig(classifier=str(filters))
    w = _Worker(cfg, str(filters))
    t: dict[str, float] = {}

    @contextlib.contextmanager
    def timed(name: str):
        c = time.process_time()
        yield
        t[name] = t.get(name, 0.0) + time.process_time() - c

    docs, size = [], 0
    with timed("read JSONL"):
        for d in iter_documents(corpus):
            docs.append(d)
            size += len(d.text)
            if size >= mb_limit * 1e6:
                break
    mb = sum(len(d.text.encode("utf-8")) for d in docs) / 1e6
    for lo in range(0, len(docs), 256):  # the steps of `_Worker.process`, timed apart
        chunk = [(d.id, d.text, d.source) for d in docs[lo:lo + 256]]
        with timed("normalise"):
            texts = C.normalize_many([x for _, x, _ in chunk])
        with timed("lower"):
            lowers = [x.lower() for x in texts]
        with timed("rules (chunk pass + one-document code)"):
            why = w.rules.judge(texts, lowers)
        idx = [i for i, r in enumerate(why) if r is None]
        with timed("classifier features"):
            feats = features_from_columns(*w.rules.columns(idx), w.clf["harm"].cfg)
        with timed("classifier predict"):
            w._classify(why, idx, feats)
        keep = [i for i, r in enumerate(why) if r is None]
        with timed("exact key"):
            keys = np.array([exact_key64_normalised(texts[i], lowers[i]) for i in keep], dtype=np.uint64)
        with timed("MinHash"):
            sigs = w.minhash.signatures_of_hashes(*w.rules.word_crcs(keep))
        with timed("output lines and sizes"):
            w._result(chunk, texts, why, keep, keys, sigs, False)
    print(f"(breakdown: {w.rules.n_scalar:,} of {len(docs):,} documents went to the one-document rules)")
    rows = [(k, v / mb) for k, v in t.items()]
    if tokenizer is not None:
        from genforge.data.fast_tokenize import batch_encoder
        from genforge.tokenizer import Tokenizer

        tok = Tokenizer.load(tokenizer)
        texts = [d.text for d in docs]
        c = time.process_time()
        tok.hf.encode_batch_fast(texts, add_special_tokens=False)
        rows.append(("tokenise: tokenizers (reference)", (time.process_time() - c) / mb))
        encode, name = batch_encoder(tok)
        c = time.process_time()
        encode(texts)
        rows.append((f"tokenise: {name.split(' ')[0]} (used)", (time.process_time() - c) / mb))
    return rows


def _md5s(clean: Path, shards: Path) -> dict[str, str]:
    import hashlib

    files = [clean, clean.with_name("clean.removed.jsonl"), *sorted(shards.iterdir())]
    return {f.name: hashlib.md5(f.read_bytes()).hexdigest() for f in files}


def _run(spec: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENFORGE_PROGRESS": "off",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, __file__, "--_child", json.dumps(spec)], capture_output=True, text=True,
                       env=env, cwd=REPO)
    if r.returncode:
        raise SystemExit(f"step {spec['step']} failed:\n{r.stdout[-2000:]}{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=200.0, help="corpus size in MB (default 200)")
    ap.add_argument("--big", action="store_true", help="a 1 GB corpus")
    ap.add_argument("--workers", default="1,2", help="worker counts to compare")
    ap.add_argument("--steps", default="clean,dedup,pack,fused",
                    help="which steps to time (clean: filters only; dedup: the full clean; pack: tokenise + pack of "
                         "the last dedup output; fused: the full clean that tokenises and packs as it goes)")
    ap.add_argument("--check", action="store_true",
                    help="check that the fused run's outputs equal the separate clean and pack (md5 of every file)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vary", type=float, default=0.0,
                    help="share of clean pages' sentences with one word swapped (default 0: the fixed-pool corpus; "
                         "0.5 makes sentences rarer, as in a crawl, so LSH candidate clusters stop growing)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--breakdown", action="store_true",
                    help="also print CPU-s per MB of each component (one process, the first 20 MB)")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(_child(json.loads(args._child))))
        return
    from genforge.data.pipeline import CleanConfig, prepare_filters
    from genforge.data.synth import write_synthetic_corpus

    mb_target = 1000.0 if args.big else args.mb
    with tempfile.TemporaryDirectory(prefix="gf-data-bench-") as tmp:
        root = Path(tmp)
        corpus = root / "corpus.jsonl"
        t = time.perf_counter()
        info = write_synthetic_corpus(corpus, mb_target, args.seed, args.vary)
        mb = info["bytes"] / 1e6
        print(f"corpus: {info['docs']:,} documents, {mb:.0f} MB JSONL ({info['labels']}), vary={args.vary}, "
              f"generated in {time.perf_counter() - t:.0f} s; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
        filters = root / "filters"
        prepare_filters(CleanConfig(classifier="world"), [corpus], filters)
        rows: list[tuple[str, dict]] = [("read only (reference)", _run({"step": "read", "input": str(corpus)}))]
        cleaned = None
        steps = args.steps.split(",")
        if "pack" in steps or "fused" in steps:
            from genforge.data.readers import iter_documents
            from genforge.tokenizer import TokenizerConfig, train_tokenizer

            sample = (d.text for _, d in zip(range(5000), iter_documents(corpus)))
            train_tokenizer(sample, TokenizerConfig(vocab_size=4096)).save(root / "tok")
        for w in [int(x) for x in args.workers.split(",")]:
            base = {"classifier": str(filters), "workers": w, "resume": False, "checkpoint_docs": 200_000,
                    "chunk_docs": 512}
            if "clean" in steps:
                rows.append((f"clean, {w} worker(s)", _run({"step": "clean", "input": str(corpus),
                                                           "out": str(root / f"c{w}" / "clean.jsonl"),
                                                           "cfg": {**base, "dedup_exact": False,
                                                                   "dedup_near": False}})))
            if "dedup" in steps:
                out = root / f"d{w}" / "clean.jsonl"
                rows.append((f"+ exact & near dedup, {w} worker(s)",
                             _run({"step": "clean", "input": str(corpus), "out": str(out), "cfg": base})))
                cleaned = out
            if "fused" in steps:
                out = root / f"f{w}" / "clean.jsonl"
                rows.append((f"+ tokenise + pack (fused), {w} worker(s)",
                             _run({"step": "clean", "input": str(corpus), "out": str(out),
                                   "cfg": {**base, "pack_to": str(root / f"f{w}" / "shards"),
                                           "pack_tokenizer": str(root / "tok")}})))
        if "pack" in steps and cleaned is not None:
            rows.append(("tokenise + pack (cleaned output)", _run({"step": "pack", "input": str(cleaned),
                                                                   "tokenizer": str(root / "tok"),
                                                                   "out": str(root / "shards")})))
        if args.check:
            if cleaned is None or "pack" not in steps or "fused" not in steps:
                raise SystemExit("--check needs the dedup, pack and fused steps")
            ref = _md5s(cleaned, root / "shards")
            for w in [int(x) for x in args.workers.split(",")]:
                got = _md5s(root / f"f{w}" / "clean.jsonl", root / f"f{w}" / "shards")
                if got != ref:
                    raise SystemExit(f"fused run with {w} worker(s) differs from clean then pack:\n{ref}\n{got}")
            print(f"check: fused outputs equal clean then pack for every worker count ({len(ref)} files): "
                  + ", ".join(f"{k} {v[:8]}" for k, v in ref.items()))
        if args.breakdown:
            breakdown = _breakdown(corpus, filters, root / "tok" if (root / "tok").exists() else None)
    print(f"\n{'step':<36} {'wall s':>7} {'MB/s':>6} {'CPU s':>7} {'MB/CPU-s':>8} {'2-core MB/s':>11} "
          f"{'RSS main':>9} {'worker':>7} {'sum MB':>7}")
    results = []
    for name, r in rows:
        cpu = r["cpu_main"] + r["cpu_workers"]
        workers = int(name.split(", ")[-1].split()[0]) if "worker" in name else 1
        total_rss = r["rss_main_mb"] + workers * r["rss_worker_mb"] * (workers > 1)
        print(f"{name:<36} {r['wall']:7.1f} {mb / r['wall']:6.2f} {cpu:7.1f} {mb / cpu:8.2f} {2 * mb / cpu:11.2f} "
              f"{r['rss_main_mb']:9.0f} {r['rss_worker_mb']:7.0f} {total_rss:7.0f}")
        results.append({"step": name, **r, "mb": mb, "total_rss_mb_bound": total_rss})
    dedup = [r for n, r in rows if n.startswith("+ exact")]
    fused = [r for n, r in rows if n.startswith("+ tokenise")]
    pack = rows[-1][1] if rows[-1][0].startswith("tokenise") else {"wall": 0.0, "cpu_main": 0.0, "cpu_workers": 0.0}

    def cpu_of(*rs: dict) -> float:
        return sum(r["cpu_main"] + r["cpu_workers"] for r in rs)

    if dedup:
        sep_wall = dedup[-1]["wall"] + pack["wall"]
        print(f"\nclean + dedup, then tokenise + pack (last worker count): {mb / sep_wall:.2f} MB/s wall, "
              f"{2 * mb / cpu_of(dedup[-1], pack):.2f} MB/s on 2 idle cores (from CPU time)")
    if fused:
        print(f"fused clean + dedup + tokenise + pack (last worker count): {mb / fused[-1]['wall']:.2f} MB/s wall, "
              f"{2 * mb / cpu_of(fused[-1]):.2f} MB/s on 2 idle cores (from CPU time)")
    print(f"end to end: target >= 10 MB/s; load now {os.getloadavg()[0]:.1f}")
    last = (fused or dedup)[-1]
    print(f"dedup index in memory: {last['index_mb']:.0f} MB for {last['kept']:,} kept documents")
    if args.breakdown:
        print("\nwhere the CPU time goes (one process, first 20 MB; the main process's dedup decisions and "
              "the pool's transfers come on top):")
        parts = [("read only (reference, subprocess)", rows[0][1]["cpu_main"] / mb), *breakdown]
        for name, v in parts:
            print(f"  {name:<40} {v * 1000:7.1f} ms per MB  ({1 / v if v else float('inf'):6.1f} MB/CPU-s)")
        results.append({"breakdown_cpu_s_per_mb": dict(parts)})
    if args.json:
        Path(args.json).write_text(json.dumps({"corpus": info, "rows": results}, indent=1))


if __name__ == "__main__":
    main()
