"""Test helpers shared across folders: one tiny tokenizer per test process and a small shard folder.

`shared_tokenizer()` is cached, so plain functions and the session fixture `tiny_tokenizer` (conftest.py)
get the same object: trained once per run instead of once per test file. Do not mutate it.
"""

import functools
import random
from pathlib import Path

from genforge.data.shards import pack_shards
from genforge.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer

WORDS = "the cat sat on a mat and was good or bad yes no maybe fine great awful please thanks".split()


def tiny_corpus() -> list[str]:
    """A small fixed corpus: plain words, arithmetic, chat-like prose, accents, CJK and emoji (byte-level BPE
    round-trips any text; these make the common pieces single tokens)."""
    r = random.Random(0)
    words = [" ".join(r.choice(WORDS) for _ in range(12)) for _ in range(200)]
    sums = [" ".join(f"{a} plus {b} is {a + b}." for a, b in [(r.randint(0, 50), r.randint(0, 50))
                                                                for _ in range(20)]) for _ in range(60)]
    prose = ["Hello there, how are you today? I am fine, thank you.", "What is 12 plus 30? The answer is 42.",
             "Summarise: Ada met Bo at the mill. Ada met Bo.", "Translate to Toy: the cat -> ka tet",
             "The quick brown fox jumps over the lazy dog 1234.",
             "héllo wörld 🙂 Café naïve résumé — 東京 北京 😀🎉"] * 5
    return words + sums + prose


@functools.cache
def shared_tokenizer() -> Tokenizer:
    """The one tiny tokenizer of the test run (vocab 400)."""
    return train_tokenizer(tiny_corpus(), TokenizerConfig(vocab_size=400, min_frequency=1))


def make_shards(folder: Path, n_docs: int = 300) -> Path:
    """Arithmetic documents packed with the shared tokenizer (10 % validation)."""
    r = random.Random(0)
    docs = [" ".join(f"{a} plus {b} is {a + b}." for a, b in [(r.randint(0, 50), r.randint(0, 50)) for _ in range(20)])
            for _ in range(n_docs)]
    pack_shards(docs, shared_tokenizer(), folder, val_fraction=0.1)
    return folder
