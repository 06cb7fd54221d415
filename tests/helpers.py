"""A small deterministic shard folder for trainer tests."""

import random
from pathlib import Path

from genforge.data.shards import pack_shards
from genforge.tokenizer import TokenizerConfig, train_tokenizer


def make_shards(folder: Path, n_docs: int = 300, vocab: int = 300) -> Path:
    r = random.Random(0)
    docs = [" ".join(f"{a} plus {b} is {a + b}." for a, b in [(r.randint(0, 50), r.randint(0, 50)) for _ in range(20)])
            for _ in range(n_docs)]
    tok = train_tokenizer(docs, TokenizerConfig(vocab_size=vocab))
    pack_shards(docs, tok, folder, val_fraction=0.1)
    return folder
