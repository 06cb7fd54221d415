"""`generate_world`: write the whole tiny world (corpus, tasks, preferences, knowledge, needles) to a folder."""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict
from pathlib import Path

from genforge.errors import ConfigError
from genforge.io import write_json, write_jsonl
from genforge.world.chat import chat_rows
from genforge.world.corpus import write_corpus
from genforge.world.facts import build_world
from genforge.world.knowledge import write_knowledge
from genforge.world.needle import make_needle
from genforge.world.preferences import write_preferences
from genforge.world.tasks import build_task_splits, write_tasks

# One dial for every generator. "tiny" is sized so a ~1M-parameter model pretrains meaningfully in
# 5 CPU minutes (~2.4 MB of text); "smoke" exists for end-to-end tests (well under 2 s).
SIZES = {
    "smoke": {"people": 40, "towns": 8, "objects": 12, "clean_docs": 400, "train": 40, "val": 10, "test": 20,
              "heldout": 20, "preferences": 40, "knowledge": 30, "needle_lengths": (128,), "chat_train": 40,
              "chat_test": 20},
    "tiny": {"people": 400, "towns": 40, "objects": 80, "clean_docs": 9000, "train": 600, "val": 40, "test": 200,
             "heldout": 200, "preferences": 600, "knowledge": 300, "needle_lengths": (256, 1024), "chat_train": 600,
             "chat_test": 200},
    "small": {"people": 2000, "towns": 150, "objects": 250, "clean_docs": 40000, "train": 4000, "val": 200,
              "test": 400, "heldout": 1000, "preferences": 4000, "knowledge": 2000, "needle_lengths": (1024, 4096),
              "chat_train": 3000, "chat_test": 400},
}
NEEDLE_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def generate_world(out_dir: str | os.PathLike, seed: int = 0, size: str = "tiny") -> dict:
    """Write the world's files under `out_dir` and return a summary (counts, paths, seconds).

    Files: corpus.jsonl, corpus.txt, corpus_labels.jsonl, tasks/{train,val,test,heldout}.jsonl,
    tasks/chat_{train,test}.jsonl (benign requests a chat model should answer),
    preferences.jsonl, knowledge.jsonl, needle.jsonl (whitespace-token haystacks), world.json (the
    entity tables) and manifest.json (this summary). Same seed and size give byte-identical files.
    """
    if size not in SIZES:
        raise ConfigError(f"unknown world size {size!r}; choose one of {', '.join(SIZES)}")
    if not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    t0 = time.perf_counter()
    cfg = SIZES[size]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    w = build_world(seed, cfg["people"], cfg["towns"], cfg["objects"])
    summary: dict = {"seed": seed, "size": size, "people": len(w.people), "towns": len(w.towns),
                     "objects": len(w.things)}
    summary["corpus"] = write_corpus(out, w, seed, cfg["clean_docs"])
    splits = build_task_splits(w, seed, cfg["train"], cfg["val"], cfg["test"], cfg["heldout"])
    summary["tasks"] = write_tasks(out, splits)
    chat = chat_rows(w, seed, cfg["chat_train"], cfg["chat_test"])
    for split, rows in chat.items():
        write_jsonl(out / "tasks" / f"chat_{split}.jsonl", rows)
    summary["chat"] = {"rows": {k: len(v) for k, v in chat.items()}}
    summary["preferences"] = write_preferences(out, splits["train"], cfg["preferences"], seed)
    summary["knowledge"] = write_knowledge(out, w, cfg["knowledge"], seed)
    rng = random.Random(f"needles-{seed}")
    needles = [{"filler_tokens_target": n, **make_needle(n, d, seed=rng.randrange(1 << 30))}
               for n in cfg["needle_lengths"] for d in NEEDLE_DEPTHS]
    write_jsonl(out / "needle.jsonl", needles)
    summary["needle"] = {"rows": len(needles), "path": str(out / "needle.jsonl")}
    world_tables = {"people": [asdict(p) for p in w.people], "towns": [asdict(t) for t in w.towns],
                    "objects": [asdict(x) for x in w.things]}
    write_json(out / "world.json", world_tables)
    summary["paths"] = {"world": str(out / "world.json"), "manifest": str(out / "manifest.json")}
    # The manifest holds paths relative to out_dir and no timing, so it is byte-identical across runs and folders.
    prefix = str(out) + os.sep
    write_json(out / "manifest.json", json.loads(json.dumps(summary).replace(json.dumps(prefix)[1:-1], "")))
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary
