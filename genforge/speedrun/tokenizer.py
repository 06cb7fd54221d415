"""Stage "tokenizer": train byte-level BPE on the cleaned corpus and pack it into train/val token shards."""

from __future__ import annotations

import time
from dataclasses import dataclass

from genforge.report import StageReport
from genforge.speedrun import clean
from genforge.speedrun.stage import StageContext

NAME = "tokenizer"
TITLE = "Tokenizer"


@dataclass
class Config:
    vocab_size: int = 1024  # BPE vocabulary (smoke 512, small 2048)


@dataclass
class Outputs:
    shards: str  # shard folder: manifest.json, *.bin and tokenizer.json
    tokenizer: str  # folder holding tokenizer.json (the shard folder)
    vocab_size: int
    train_tokens: int


def run(ctx: StageContext, cfg: Config, report: StageReport, *, clean: clean.Outputs) -> Outputs:
    """Train the tokenizer, pack the shards, check the exact round-trip."""
    from genforge.data.readers import iter_documents
    from genforge.data.shards import pack_shards
    from genforge.tokenizer import TokenizerConfig, train_tokenizer

    t0 = time.perf_counter()
    tok = train_tokenizer((d.text for d in iter_documents(clean.clean)), TokenizerConfig(vocab_size=cfg.vocab_size))
    t_train = time.perf_counter() - t0
    shards = ctx.path("shards")
    manifest = pack_shards((d.text for d in iter_documents(clean.clean)), tok, shards)
    tr, val = manifest["splits"]["train"], manifest["splits"]["val"]
    report.row("vocab size", tok.vocab_size, note="byte-level BPE, digits split, 7 special tokens")
    report.row("train tokens", tr["n_tokens"], note=f"{tr['n_docs']:,} documents; val {val['n_tokens']:,}")
    report.row("bytes per token", tr["n_bytes"] / max(tr["n_tokens"], 1), baseline=1.0,
               note="compression vs raw bytes (baseline: a byte-level model)")
    report.row("tokenizer training time", t_train, note="seconds")
    sample = "Mara Quill lives in Ashford. 12 plus 30 is 42. Café ☕ 中文"
    report.row("exact round-trip (accents, emoji, Chinese)", tok.decode(tok.encode(sample)) == sample)
    return Outputs(shards=str(shards), tokenizer=str(shards), vocab_size=tok.vocab_size,
                   train_tokens=tr["n_tokens"])
