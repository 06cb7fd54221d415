"""A faster encoder for genforge's byte-level BPE that gives the reference `tokenizers` ids, via tiktoken.

`pack_shards` spends most of its time in the HF `tokenizers` BPE (~0.3 CPU-s per MB here); tiktoken runs the
same byte-level BPE 4-7x faster. It is used only when it provably returns the reference ids for the tokenizer at
hand, else the reference encoder runs and the reason is logged. Three things must agree:

1. **Special tokens** are split out first by both (HF's added tokens; tiktoken's `allowed_special`): checked
   that they are plain (no lstrip/rstrip/single_word) and none contains another (so HF's leftmost-longest
   match is tiktoken's leftmost-first).
2. **Pre-tokenisation**: HF's ByteLevel regex (GPT-2's), optionally after `Digits(individual_digits=True)`, is
   one regex for tiktoken: each `\\p{N}` character is its own piece, and the whitespace lookahead `(?!\\S)`
   becomes `(?![^\\s\\p{N}])` because HF ran the ByteLevel regex on the digit-free segments, where the end of a
   segment before a digit counts as "no non-space follows". No normaliser is allowed. The character classes of
   the two regex engines (onig's and Rust's) are checked on a probe of edge cases here and swept over every
   code point in the tests.
3. **BPE**: HF applies the lowest-ranked *merge* among adjacent pairs; tiktoken merges the adjacent pair whose
   *concatenation* has the lowest rank (and returns a piece that is a token outright). With ranks = HF ids in
   merge order these differ only if an adjacent pair (p, q) spells a token t whose merge is another split of t.
   At the first such step both have applied every merge ranked below t's and, as boundaries at both ends of
   t's span survived, the span holds what HF's BPE of t's bytes alone makes with those merges, i.e. (p, q). So
   if every token's bytes alone encode to that token under HF's BPE ("reachable"; checked for the whole vocab
   here), no such step exists and the two give the same ids. The same check covers tiktoken's whole-piece
   shortcut.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)

# GPT-2's pattern as HF's ByteLevel(use_regex=True) has it
BYTE_LEVEL_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# the same after Digits(individual_digits=True): see the module docstring
DIGITS_BYTE_LEVEL_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""

# Edge cases of the pre-tokeniser compared with the reference on every conversion (the tests sweep all code points)
PROBE = ("Hello, world! It's 12:30 -- isn't it?  Tabs\tand\nnewlines\r\n  \n 3.14159 ½ Ⅻ ٣ ９ 𝟘 x² "
         "café naïve Ελληνικά 日本語のテキスト 한국어 עברית العربية emoji 😀👍🏽 \u00a0nbsp \u2028\u2029 \u3000ideo "
         "\x0b\x0c\x1c\x1d\x1e\x1f\x85 zero\u200bwidth \ufeffbom 'S 'LL 'Re  'd a'b <|end|> <|bos|>x<|eos|>  1  2 "
         "<|user|> \t<|assistant|>\n\n12abc3  !!  ?? ... __init__ a_b ___ ~~~   end   ")


def _byte_decoder() -> dict[str, int]:
    """HF ByteLevel's char -> byte map (GPT-2's: printable bytes map to themselves, the rest to U+0100 on)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + n)] = b
            n += 1
    return chars


class NotEquivalent(Exception):
    """The fast encoder cannot be shown to give the reference ids for this tokenizer (the message says why)."""


def _pattern(pre: dict | None) -> str:
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}

    def is_byte_level(p: dict) -> bool:
        return all(p.get(k) == v for k, v in byte_level.items())

    if pre and is_byte_level(pre):
        return BYTE_LEVEL_PATTERN
    if (pre and pre.get("type") == "Sequence" and len(pre["pretokenizers"]) == 2
            and pre["pretokenizers"][0] == {"type": "Digits", "individual_digits": True}
            and is_byte_level(pre["pretokenizers"][1])):
        return DIGITS_BYTE_LEVEL_PATTERN
    raise NotEquivalent(f"pre-tokenizer {json.dumps(pre)} is not ByteLevel (after individual Digits)")


def build_tiktoken(hf) -> object:
    """A `tiktoken.Encoding` that gives `hf.encode(text, add_special_tokens=False).ids` for every text.

    Raises `NotEquivalent` when that cannot be established (see the module docstring for the argument).
    """
    try:
        import tiktoken
    except ImportError:
        raise NotEquivalent("tiktoken is not installed (it comes with the `data` extra)") from None
    spec = json.loads(hf.to_str())
    for key in ("truncation", "padding"):
        if spec.get(key) is not None:
            raise NotEquivalent(f"the tokenizer has {key} enabled")
    if spec.get("normalizer") is not None:
        raise NotEquivalent(f"the tokenizer has a normaliser ({spec['normalizer'].get('type')})")
    pat = _pattern(spec.get("pre_tokenizer"))
    model = spec["model"]
    if model.get("type") != "BPE":
        raise NotEquivalent(f"model type {model.get('type')} is not BPE")
    for key in ("dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise NotEquivalent(f"BPE option {key}={model[key]!r} is set")
    if model.get("byte_fallback") or model.get("ignore_merges"):
        raise NotEquivalent("BPE byte_fallback or ignore_merges is set")
    added = spec.get("added_tokens") or []
    for a in added:
        if a.get("lstrip") or a.get("rstrip") or a.get("single_word"):
            raise NotEquivalent(f"added token {a['content']!r} strips spaces or matches single words only")
    contents = [a["content"] for a in added]
    if any(x != y and x in y for x in contents for y in contents):
        raise NotEquivalent("one added token contains another (match order could differ)")
    special = {a["content"]: a["id"] for a in added}
    vocab: dict[str, int] = model["vocab"]
    dec = _byte_decoder()
    ranks: dict[bytes, int] = {}
    for tok, i in vocab.items():
        if tok in special:
            continue
        try:
            ranks[bytes(dec[c] for c in tok)] = i
        except KeyError:
            raise NotEquivalent(f"vocab entry {tok!r} is not in the byte-level alphabet") from None
    if len(ranks) != len(vocab) - sum(t in vocab for t in special):
        raise NotEquivalent("two vocab entries spell the same bytes")
    if sum(len(b) == 1 for b in ranks) != 256:
        raise NotEquivalent("the vocab lacks some of the 256 byte symbols")
    merges = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]
    last = -1
    for a, b in merges:
        i = vocab.get(a + b)
        if a not in vocab or b not in vocab or i is None:
            raise NotEquivalent(f"merge {a!r} + {b!r} names tokens outside the vocab")
        if i <= last:  # tiktoken ranks tokens by id, so ids must follow merge order (and be distinct)
            raise NotEquivalent(f"merge {a!r} + {b!r} makes id {i}, not above the previous merge's {last}")
        last = i
    if len(merges) != sum(len(b) > 1 for b in ranks):
        raise NotEquivalent("some multi-byte tokens are not made by a merge")
    if any(i in ranks.values() for i in special.values()):
        raise NotEquivalent("an added token shares its id with a BPE token")
    # reachability: every token's bytes alone encode to it under HF's BPE (the reference's own model)
    unreachable = [a + b for a, b in merges if [t.id for t in hf.model.tokenize(a + b)] != [vocab[a + b]]]
    if unreachable:
        raise NotEquivalent(f"{len(unreachable)} tokens (e.g. {unreachable[0]!r}) are not their own BPE encoding")
    enc = tiktoken.Encoding("genforge-bpe", pat_str=pat, mergeable_ranks=ranks, special_tokens=special)
    ref = hf.encode(PROBE, add_special_tokens=False).ids
    if enc.encode(PROBE, allowed_special="all") != ref:
        raise NotEquivalent("the probe text encodes differently (regex character classes differ)")
    return enc


def batch_encoder(tokenizer) -> tuple[Callable[[list[str]], list[np.ndarray]], str]:
    """(encode, name): `encode(texts)` gives each text's ids as a uint32 array, the same as the tokenizer's own
    `encode_batch`; `name` says which encoder runs ("tiktoken" or "tokenizers: <why not tiktoken>")."""
    hf = getattr(tokenizer, "hf", None)
    try:
        if hf is None:
            raise NotEquivalent("not a `tokenizers`-backed tokenizer")
        enc = build_tiktoken(hf)
    except NotEquivalent as e:
        log.info("fast encoder off, using the reference tokenizer: %s", e)
        fast = getattr(hf, "encode_batch_fast", None)  # same ids without tracking character offsets

        def reference(texts: list[str]) -> list[np.ndarray]:
            out = ([x.ids for x in fast(texts, add_special_tokens=False)] if fast is not None
                   else tokenizer.encode_batch(texts))
            return [np.asarray(ids, dtype=np.uint32) for ids in out]

        return reference, f"tokenizers ({e})"

    words = WordCache(enc)

    def fast_encode(texts: list[str]) -> list[np.ndarray]:
        return [words.encode(t) for t in texts]

    fast_encode.enc = enc  # for callers that tokenise words themselves (`batch.ChunkRules.doc_tokens`)

    return fast_encode, "tiktoken (checked equal to tokenizers)"


class WordCache:
    """tiktoken's ids for a text, from cached ids of its space-separated words where that is provably the same.

    In a text whose only whitespace is single ASCII spaces between words, each pre-tokenizer piece lies inside one
    word, with the space before it: every alternative of both patterns above that starts at a space followed by a
    non-space is ` ?<class>+` (or, for the digits pattern, a lone space before a digit), so it never runs past the
    word, and the only lookahead (`(?!\\S)`-style, on whitespace runs) reads the next character, which lies in the
    same word. A piece's BPE depends on the piece alone. So the ids of "w0 w1 w2" are ids("w0") + ids(" w1") +
    ids(" w2"), and web text repeats words: one dict lookup per word instead of a regex match and a BPE per piece
    (~36 instead of ~65 ms of CPU per MB on the benchmark corpus; the split and the lookups are the rest). Texts
    with any other whitespace (`str.isprintable` is false for every whitespace character but the ASCII space), a
    double, leading or trailing space, or a special token's text go to tiktoken whole.
    tests/data/test_fast_tokenize.py compares both ways on random and world text.
    """

    LIMIT = 1 << 18  # distinct words remembered (~50 MB at most); cleared beyond it

    def __init__(self, enc) -> None:
        self.enc = enc
        self.specials = tuple(enc.special_tokens_set)
        self.heads = tuple({t[:2] for t in self.specials})  # ("<|",): one scan rules out every special token
        # word (UTF-8, split on b" ": bytes objects are ~1.5x cheaper to make than str) -> its ids as uint32 bytes
        self.first: dict[bytes, bytes] = {}  # a text's first word (no space before it)
        self.rest: dict[bytes, bytes] = {}  # a later word, keyed without the space before it

    def _miss(self, table: dict[bytes, bytes], word: bytes, prefix: str) -> bytes:
        if len(table) >= self.LIMIT:
            table.clear()
        ids = table[word] = self.enc.encode_to_numpy(prefix + word.decode("utf-8"), allowed_special="all").tobytes()
        return ids

    def encode(self, text: str) -> np.ndarray:
        """The ids of `text`, as `enc.encode_to_numpy(text, allowed_special="all")` (uint32)."""
        if (not text or not text.isprintable() or "  " in text or text[0] == " " or text[-1] == " "
                or (any(map(text.__contains__, self.heads)) and any(map(text.__contains__, self.specials)))):
            return self.enc.encode_to_numpy(text, allowed_special="all")
        words = text.encode("utf-8").split(b" ")  # (a space never occurs inside a multi-byte UTF-8 character)
        head = self.first.get(words[0])
        if head is None:
            head = self._miss(self.first, words[0], "")
        rest = self.rest
        # a dict lookup per word in C; misses (None) are filled in by the slower path below
        parts = list(map(rest.get, itertools.islice(words, 1, None)))
        if None in parts:
            parts = [p if p is not None else self._miss(rest, w, " ")
                     for p, w in zip(parts, itertools.islice(words, 1, None))]
        return np.frombuffer(head + b"".join(parts), dtype=np.uint32)
