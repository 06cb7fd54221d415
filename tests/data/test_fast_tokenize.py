"""The tiktoken encoder gives the reference `tokenizers` ids (world text, random Unicode, every code point), and the
conversion refuses tokenizers it cannot prove equal, falling back to the reference encoder."""

from __future__ import annotations

import random

import numpy as np
import pytest

from genforge.data.fast_tokenize import PROBE, NotEquivalent, batch_encoder, build_tiktoken
from genforge.tokenizer import SPECIAL_TOKENS, TokenizerConfig, train_tokenizer

pytest.importorskip("tiktoken")


@pytest.fixture(scope="module")
def world_texts(tmp_path_factory) -> list[str]:
    from genforge.data.readers import iter_documents
    from genforge.data.synth import write_synthetic_corpus

    path = tmp_path_factory.mktemp("world") / "c.jsonl"
    write_synthetic_corpus(path, 1.5, seed=3)  # the tiny world's pages, junk, harmful text and near-copies
    return [d.text for d in iter_documents(path)]


@pytest.fixture(scope="module")
def world_tokenizer(world_texts):
    return train_tokenizer(world_texts[:400], TokenizerConfig(vocab_size=1500))


def _reference(tok, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in tok.hf.encode_batch(texts, add_special_tokens=False)]


def _random_text(rng: random.Random, n: int) -> str:
    pools = ["abc xyz The IT'S it's 'll 'd", " \t\n\r\x0b\x0c\u00a0\u2028\u3000\x85\x1c", "0123456789½Ⅻ٣９𝟘²",
             "éÉßİıǅ漢字かなカナ한국어עבריתالعربية", "!?.,;:'\"()[]{}<>-_~*#$%^&|\\/@`",
             "😀👍🏽\u200b\ufeff\u0301\u0300",
             "".join(SPECIAL_TOKENS) + "<||>"]
    out = []
    for _ in range(n):
        pool = rng.choice(pools)
        out.append(rng.choice(SPECIAL_TOKENS) if rng.random() < 0.02 else rng.choice(pool))
    return "".join(out)


def test_same_ids_as_tokenizers_on_world_and_random_text(world_texts, world_tokenizer, tiny_tokenizer):
    rng = random.Random(0)
    noise = [_random_text(rng, rng.randint(0, 80)) for _ in range(3000)] + [PROBE, "", " ", "  ", "\n\n 1"]
    for tok, texts in ((world_tokenizer, world_texts + noise), (tiny_tokenizer, world_texts[:300] + noise)):
        encode, name = batch_encoder(tok)
        assert name.startswith("tiktoken"), name
        got = [a.tolist() for a in encode(texts)]
        want = _reference(tok, texts)
        bad = [t for t, g, w in zip(texts, got, want) if g != w]
        assert not bad, f"{len(bad)} texts differ, e.g. {bad[0]!r}"


def _sweep(tok, cps: list[int]) -> None:
    """Each code point alone, doubled, between letters, next to digits, spaces and specials: the regex engines'
    character classes (letters, numbers, spaces) must agree with the reference everywhere."""
    enc = build_tiktoken(tok.hf)
    for lo in range(0, len(cps), 4096):
        ch = [chr(c) for c in cps[lo:lo + 4096]]
        texts = [f"{c}{c} a{c}b 1{c}2 {c}  {c}1<|end|>{c}x" for c in ch]
        got = enc.encode_batch(texts, allowed_special="all", num_threads=1)
        want = [e.ids for e in tok.hf.encode_batch_fast(texts, add_special_tokens=False)]
        bad = [hex(cps[lo + i]) for i, (g, w) in enumerate(zip(got, want)) if g != w]
        assert not bad, f"code points {bad[:10]} encode differently"


CODE_POINTS = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]


def test_code_points_in_context(world_tokenizer):
    """Latin, Greek, Cyrillic, punctuation, spaces, CJK punctuation..., and a stride through the rest (~3 s)."""
    _sweep(world_tokenizer, [c for c in CODE_POINTS if c < 0x3100 or c % 61 == 0])


@pytest.mark.slow
def test_every_code_point_in_context(world_tokenizer):
    _sweep(world_tokenizer, CODE_POINTS)


def test_pack_uses_the_fast_encoder_with_the_same_shards(tmp_path, world_texts, world_tokenizer):
    from genforge.data.shards import is_val, pack_shards

    texts = [t for t in world_texts[:200] if t.strip()]
    m = pack_shards(texts, world_tokenizer, tmp_path / "sh", val_fraction=0.2)
    assert m["encoder"].startswith("tiktoken")
    for split in ("train", "val"):
        want = [[world_tokenizer.bos_id] + ids + [world_tokenizer.eos_id] for t in texts
                if is_val(t, 0.2) == (split == "val") for ids in _reference(world_tokenizer, [t])]
        got = np.concatenate([np.fromfile(tmp_path / "sh" / f["path"], dtype=m["dtype"])
                              for f in m["splits"][split]["files"]])
        assert got.tolist() == [i for ids in want for i in ids]


def _bpe(vocab_words: list[str], merges: list[tuple[str, str]], pre_tokenizer=None, normalizer=None):
    from tokenizers import Tokenizer as HF
    from tokenizers import models, pre_tokenizers

    from genforge.data.fast_tokenize import _byte_decoder
    from genforge.tokenizer import Tokenizer

    alphabet = sorted(_byte_decoder(), key=lambda c: _byte_decoder()[c])
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + alphabet + vocab_words)}
    hf = HF(models.BPE(vocab, merges))
    hf.add_special_tokens(SPECIAL_TOKENS)
    hf.pre_tokenizer = pre_tokenizer or pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if normalizer is not None:
        hf.normalizer = normalizer
    return Tokenizer(hf)


def test_an_unreachable_token_is_refused_because_tiktoken_would_differ():
    import tiktoken

    # "bc" merges first, so HF never makes "abc" from a + bc; tiktoken would, as "abc" is in the vocab
    tok = _bpe(["bc", "ab", "abc"], [("b", "c"), ("a", "b"), ("ab", "c")])
    with pytest.raises(NotEquivalent, match="not their own BPE encoding"):
        build_tiktoken(tok.hf)
    ranks = {bytes([b]): 7 + b for b in range(256)} | {b"bc": 263, b"ab": 264, b"abc": 265}
    unchecked = tiktoken.Encoding("x", pat_str=r"\S+|\s+", mergeable_ranks=ranks, special_tokens={})
    assert unchecked.encode("abc") != _reference(tok, ["abc"])[0]  # the check guards a real difference
    encode, name = batch_encoder(tok)
    assert name.startswith("tokenizers (") and "BPE encoding" in name
    assert encode(["abc xabc"])[0].tolist() == _reference(tok, ["abc xabc"])[0]


def test_other_pipelines_fall_back_to_the_reference():
    from tokenizers import normalizers, pre_tokenizers

    bl = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    cases = {"normaliser": _bpe([], [], normalizer=normalizers.Lowercase()),
             "pre-tokenizer": _bpe([], [], pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=False),
                                                                      bl]))}
    trunc = _bpe([], [])
    trunc.hf.enable_truncation(5)
    cases["truncation"] = trunc
    for why, tok in cases.items():
        encode, name = batch_encoder(tok)
        assert name.startswith("tokenizers (") and why in name, name
        assert [a.tolist() for a in encode([PROBE])] == _reference(tok, [PROBE])


def _spaced_text(rng: random.Random, n: int) -> str:
    """Words of printable characters joined by single spaces: the texts `WordCache` encodes word by word."""
    pools = ["abcXYZ", "'s't're've'm'll'd'S'LL", "0123456789½Ⅻ٣９𝟘²", "éßİıǅ漢字かなカナ한국어עבריתالعربية",
             "!?.,;:'\"()[]{}<>-_~*#$%^&|\\/@`", "😀👍🏽\u0301", "<|>"]
    words = []
    for _ in range(n):
        k = rng.randint(1, 6)
        words.append("".join(rng.choice(rng.choice(pools)) for _ in range(k)))
    return " ".join(words)


def test_word_cache_gives_tiktokens_ids(world_texts, world_tokenizer, tiny_tokenizer):
    from genforge.data.fast_tokenize import WordCache

    rng = random.Random(1)
    spaced = [_spaced_text(rng, rng.randint(1, 60)) for _ in range(3000)]
    edge = ["a", "a b", " a", "a ", "a  b", "a\nb", "a\tb", "1 2 3", "x<|end|> y", "<|bos|>", "'s 'S", "a\u00a0b"]
    noise = [_random_text(rng, rng.randint(0, 60)) for _ in range(500)]
    for tok in (world_tokenizer, tiny_tokenizer):
        enc = build_tiktoken(tok.hf)
        cache = WordCache(enc)

        def same(t: str, cache: WordCache = cache, enc=enc) -> bool:
            return cache.encode(t).tolist() == enc.encode_to_numpy(t, allowed_special="all").tolist()

        texts = world_texts + spaced + edge + noise
        for _ in range(2):  # cold, then from the cache
            bad = [t for t in texts if not same(t)]
            assert not bad, f"{len(bad)} texts differ, e.g. {bad[0]!r}"
        assert len(cache.rest) > 1000  # the word path ran (not only the whole-text fallback)
        cache.LIMIT = 10  # a full cache is cleared, and still right
        assert all(same(t) for t in spaced[:50])
