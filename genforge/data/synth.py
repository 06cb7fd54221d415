"""A large synthetic corpus for benchmarks and memory tests, generated fast from the tiny world's text.

Pages are runs of sentences drawn at random from a pool of the world's clean documents (so two pages are not
near-duplicates of each other, as two crawled pages rarely are), 1-3 KB each like web text, with the world's
planted mix: junk pages, harmful pages, exact copies and near-duplicate edits of earlier pages.
Generating is ~50x faster than the world generator: it only joins strings.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

from genforge.world import harmful
from genforge.world.corpus import iter_clean_documents, junk_document, near_duplicate
from genforge.world.facts import build_world

_SENT_RE = re.compile(r"(?<=[.!?])\s+")


def write_synthetic_corpus(path: str | os.PathLike, mb: float, seed: int = 0, vary: float = 0.0) -> dict:
    """Write about `mb` MB of `{"id", "text"}` JSONL to `path`; returns counts per planted kind and bytes.

    vary: the share of a clean page's sentences that get one word swapped for another word of the pool. With 0 (the
    default, and the same file as before this option) every sentence comes verbatim from a fixed pool of ~30 k, so
    each recurs in ~1 page in 1,000 and the pages sharing a sentence form LSH candidate clusters that grow with the
    corpus, which a crawl (mostly unique sentences, a little boilerplate) would not; 0.5 makes most sentences rarer.
    """
    if not 0 <= vary <= 1:
        raise ValueError(f"vary must be in [0, 1], got {vary}")
    rng = random.Random(f"synth-{seed}")
    w = build_world(seed, 400, 40, 80)
    gen = iter_clean_documents(w, rng)
    sentences = [s for _ in range(6000) for s in _SENT_RE.split(next(gen).replace("\n", " ")) if len(s) > 20]
    vocab = sorted({x for sent in sentences for x in sent.split()})
    junk = [junk_document(rng, w) for _ in range(300)]

    def sentence() -> str:
        sent = rng.choice(sentences)
        if vary and rng.random() < vary:  # (no draw at vary=0: the default corpus stays byte-identical)
            ws = sent.split()
            ws[rng.randrange(len(ws))] = rng.choice(vocab)
            sent = " ".join(ws)
        return sent

    bad = [harmful.harmful_document(rng, p.name, p.town) for p in rng.sample(w.people, 100)]
    recent: list[str] = []  # earlier pages that copies are made from (bounded: memory stays flat)
    counts = {"clean": 0, "junk": 0, "harmful": 0, "exact_dup": 0, "near_dup": 0}
    target, written, k = mb * 1e6, 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            r = rng.random()
            if r < 0.045:
                kind, text = "junk", rng.choice(junk)
                if rng.random() < 0.5:  # vary it so the junk is not all exact duplicates of 300 pages
                    text = text + " " + rng.choice(sentences)
            elif r < 0.065:
                kind, text = "harmful", rng.choice(bad) + " " + " ".join(rng.sample(sentences, 2))
            elif r < 0.10 and recent:
                kind, text = "exact_dup", rng.choice(recent)
            elif r < 0.15 and recent:
                kind, text = "near_dup", near_duplicate(rng, rng.choice(recent), w)
            else:
                kind = "clean"
                n = rng.randint(12, 48)
                text = " ".join(sentence() for _ in range(n))
                if len(recent) < 2000:
                    recent.append(text)
                else:
                    recent[rng.randrange(2000)] = text
            line = json.dumps({"id": f"s{k:08d}", "text": text}, ensure_ascii=False) + "\n"
            f.write(line)
            written += len(line.encode("utf-8"))
            counts[kind] += 1
            k += 1
    return {"docs": k, "bytes": Path(path).stat().st_size, "labels": counts}
