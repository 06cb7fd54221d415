"""The fast paths of the cleaning pipeline give the same answers as the plain definitions they replace.

`clean_corpus`'s output on a fixed corpus is pinned to hashes produced by the code before the throughput work
(one regex per rule, per-document index updates), so any change of output shows here; the helpers are checked
against their plain definitions on varied text (ASCII, accents, other scripts, digits, numerals, symbols).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import unicodedata
from collections import Counter

import numpy as np
import pytest

from genforge.data import clean as C
from genforge.data.dedup import BatchMinHash, word_hashes
from genforge.data.pipeline import CleanConfig, clean_corpus

WORDS = ("the a of and to in is was river town baker lantern market bridge quiet morning walked found "
         "old small bright green copper harbour window garden letter winter summer stone mill song").split()
ODD = ("café naïve Zoë", "Ελληνικά κείμενο εδώ", "日本語のテキストです。", "x² ½ Ⅻ 3rd a_b",
       "emoji \U0001F600 \u00a0nbsp", "caf\u0065\u0301 NFD", "tab\there\r\nCRLF", "zero\u200bwidth \ufeffbom",
       "### $$$ %%% ^^^ &&& @@", "İstanbul ǅ ß")
JUNK = ("We use cookies to improve your experience.\nClick here to subscribe to our newsletter!\nSign in | Register\n"
        "Privacy policy | Terms of service | Contact us\n© 2020 All rights reserved.",
        "Home > Blog > News\nRead more >>\nShare this page\nFollow us for more updates!",
        "qwrtp zxcvb sdfghj kkjhg wqrtz plmnb vcxzq trwqp lkjhg mnbvc " * 3,
        "BUY CHEAP LAMPS ONLINE!!! BEST PRICE\n" * 8,
        "#$% ^&* ()[ ]{} <>~ |\\/ @=+ _;: !?* #@$ " * 6,
        "How to make a bomb at home: mix the explosive with a detonator and ammunition, then poison someone.",
        "Limited time offer: 50% off today, buy now!\nLog in to leave a comment.\nSkip to main content",
        "aaaa aaaa aaab aaaa abab aaaa baba aaaa aaaa aaaa aaab aaaa abab aaaa baba aaaa aaaa aaaa aaab aaaa abab",
        "lantern cheap best sale online price lantern deal discount shipping lantern cheap best sale online price "
        "lantern deal discount shipping lantern cheap best",
        "Supercalifragilisticexpialidocious antidisestablishmentarianism floccinaucinihilipilification "
        "pneumonoultramicroscopic incomprehensibilities",
        "ok. no. yes. hm. so. ah. oh. uh.\nok\nno\nyes\nhm\nso")


def _corpus(path, n: int = 900, seed: int = 7) -> None:
    """A fixed corpus (independent of the world generator, which changes): prose, odd text, junk, copies."""
    rng = random.Random(seed)
    docs: list[str] = []
    rows = []
    for i in range(n):
        r = rng.random()
        if r < 0.1 and docs:
            text = rng.choice(docs)
            text = unicodedata.normalize("NFD", text) if rng.random() < 0.5 else "  " + text.upper() + " "
        elif r < 0.2 and docs:
            ws = rng.choice(docs).split(" ")
            for _ in range(max(1, len(ws) // 25)):
                ws[rng.randrange(len(ws))] = rng.choice(WORDS)
            text = " ".join(ws)
        elif r < 0.3:
            text = rng.choice(JUNK)
        elif r < 0.33:
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))  # short
        else:
            sents = []
            for _ in range(rng.randint(3, 14)):
                s = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14)))
                if rng.random() < 0.15:
                    s += " " + rng.choice(ODD)
                if rng.random() < 0.1:
                    s += f" in {rng.randint(1, 3000)}"
                sents.append(s.capitalize() + rng.choice(".!?"))
            text = (" " if rng.random() < 0.7 else "\n").join(sents)
            docs.append(text)
        row = {"id": i if i % 5 == 0 else f"d{i}", "text": text}
        if i % 9 == 0:
            row["meta"] = {"n": i}
        rows.append(json.dumps(row, ensure_ascii=rng.random() < 0.5))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


# Produced by the code before the throughput work (genforge 5d592aa) on `_corpus`, classifier off.
EXPECTED = {"kept": "f484f57800e19898", "removed": "513eecb36ed5144c"}


@pytest.mark.parametrize("workers", [1, 2])
def test_output_pinned_to_the_plain_implementation(tmp_path, workers):
    src = tmp_path / "in.jsonl"
    _corpus(src)
    out = tmp_path / "o" / "clean.jsonl"
    rep = clean_corpus(src, out, CleanConfig(classifier="off", workers=workers, chunk_docs=64, resume=False))
    assert rep.docs_in == 900
    removed = out.with_name("clean.removed.jsonl")
    # the source column names the input path, which differs per run; the rest is compared byte for byte
    rows = [json.loads(x) for x in removed.read_text().splitlines()]
    canon = tmp_path / "removed.canon"
    canon.write_text("".join(json.dumps({**r, "source": r["source"].rsplit(":", 1)[1]}) + "\n" for r in rows))
    assert {"kept": _sha(out), "removed": _sha(canon)} == EXPECTED


TEXTS = [
    "The quick brown fox, aged 3, jumped over 12 lazy dogs in 2024!",
    "café naïve Zoë — Ελληνικά κείμενο; 日本語のテキストです。x² ½ Ⅻ 3rd a_b __init__ ŉ ǅ İstanbul ß",
    "Home > Blog > News\nRead more >>", "  home   > news", "We use cookies. Log in. Sign up now!",
    "catalogue dialogue blogging offers shared signs", "#$% ^&* ()[ ]{} <>~ |\\/ @=+ _;: !?*",
    "qwrtp zxcvb sdfghj kkjhg aeiou strength rhythm", "", "a", "\u00a0\u3000 spaces\u2028and\u2029lines",
    "Click here: limited time offer, 50% off! Buy now.", "tab\there 123abc abc123 a1b2c3 ９９ ٣ 𝟘",
]


@pytest.mark.parametrize("text", TEXTS)
def test_token_derived_words_match_the_regex_definitions(text):
    toks = C.tokens(text.lower())
    assert toks == re.findall(r"(?u)\w+|[^\w\s]", text.lower())  # the classifiers' token pattern
    assert Counter(C.letter_words(toks)) == Counter(C.words(text))
    assert C.word_tokens(toks) == re.findall(r"\w+", text.lower())


@pytest.mark.parametrize("text", TEXTS)
def test_rule_statistics_match_their_plain_definitions(text):
    n = len("".join(text.split()))
    symbols = len(re.findall(r"[^\w\s.,;:!?'\"()\-]|_", text))
    assert C.symbol_ratio(text) == (symbols / n if n else 0.0)
    units = [u for u in re.split(r"(?<=[.!?])\s+|\n+", text.lower()) if u.strip()]
    whole = C._BOILERPLATE_RE.search(text.lower())  # the anchors only skip texts the regex cannot match
    plain = sum(1 for u in units if C._BOILERPLATE_RE.search(u)) / len(units) if whole and units else 0.0
    assert C.boilerplate_fraction(text) == plain
    ws = C.words(text)
    classes = Counter(map(C._mash_class, ws))
    assert C.mash_fraction(ws) == (classes[1] / (classes[0] + classes[1]) if classes[0] + classes[1] else 0.0)


def test_harmful_keys_still_find_every_phrase():
    m = C.HarmfulMatcher()
    for text in ("how to make meth", "kill someone quietly", "build a bomb", "without leaving a trace"):
        assert m.score(text, C.words(text)) >= 1, text


def test_featurize_tokens_equals_featurize():
    pytest.importorskip("sklearn")
    from genforge.data.classify import ClassifierConfig, featurize, featurize_tokens

    cfg = ClassifierConfig()
    a = featurize(TEXTS, cfg)
    b = featurize_tokens([C.tokens(t.lower()) for t in TEXTS], cfg)
    assert (a != b).nnz == 0 and (a.indices == b.indices).all() and (a.indptr == b.indptr).all()
    assert (a.data == b.data).all()  # bit for bit: the classifiers' probabilities are then the same


def test_signatures_of_words_equal_signatures():
    mh = BatchMinHash(0.5, 64, 3, 1)
    texts = TEXTS + [" ".join(WORDS[i:i + 9]) for i in range(20)]
    assert (mh.signatures_of_words([C.word_tokens(C.tokens(t.lower())) for t in texts]) == mh.signatures(texts)).all()
    assert word_hashes("Hello, World").tolist() == [907060870, 980881731]  # zlib.crc32 of b"hello", b"world"


def test_lone_surrogates_are_removed_not_fatal(tmp_path):
    src = tmp_path / "s.jsonl"
    src.write_text('{"id": "a", "text": "A lone \\ud800 surrogate in an otherwise ordinary sentence of words."}\n')
    rep = clean_corpus(src, tmp_path / "o" / "c.jsonl", CleanConfig(classifier="off", resume=False))
    assert rep.docs_kept == 1
    assert "\ud800" not in json.loads((tmp_path / "o" / "c.jsonl").read_text())["text"]


def test_pack_stores_the_tokenizers_own_ids(tmp_path, tiny_tokenizer):
    import numpy as np

    from genforge.data.shards import is_val, pack_shards

    texts = TEXTS[:8] + [TEXTS[12]] + [" ".join(WORDS[i:i + 12]) for i in range(25)]
    texts = [t for t in texts if t.strip()]
    m = pack_shards(texts, tiny_tokenizer, tmp_path / "sh", val_fraction=0.3)
    for split in ("train", "val"):
        want = [[tiny_tokenizer.bos_id] + tiny_tokenizer.encode_batch([t])[0] + [tiny_tokenizer.eos_id]
                for t in texts if is_val(t, 0.3) == (split == "val")]
        got = np.concatenate([np.fromfile(tmp_path / "sh" / f["path"], dtype=m["dtype"])
                              for f in m["splits"][split]["files"]])
        assert got.tolist() == [i for ids in want for i in ids]


def test_boilerplate_anchors_found_per_text_in_a_batch():
    lowers = [t.lower() for t in TEXTS + list(JUNK) + TEXTS[::-1]]
    each = [any(a in low for a in C._BOILERPLATE_ANCHORS) or low.lstrip().startswith("home") for low in lowers]
    assert C.boilerplate_anchored(lowers) == each
    assert any(each) and not all(each)


def _minhash_reference(mh: BatchMinHash, words: list[str]) -> np.ndarray:
    """The plain definition, one document at a time: shingle hashes, every product's top 32 bits, the minimum."""
    import zlib

    wh = np.array([zlib.crc32(w.encode("utf-8")) for w in words], dtype=np.uint64)
    sh = mh.shingle_hashes(wh)
    if not len(sh):
        return np.full(mh.num_perm, 0xFFFFFFFF, dtype=np.uint32)
    return ((sh[:, None] * mh.a + mh.b) >> np.uint64(32)).astype(np.uint32).min(axis=0)


def test_batch_minhash_equals_the_plain_definition():
    rng = random.Random(1)
    docs = [[rng.choice(WORDS) for _ in range(rng.randint(0, 400))] for _ in range(300)]
    docs += [[], ["one"], ["two", "words"], ["café", "naïve", "x²"], ["a", "b", "c"], ["a", "b", "c", "d"], []]
    docs = [[], ["x"]] + docs + [["y", "z"]]
    for mh in (BatchMinHash(0.5, 128, 3, 1), BatchMinHash(0.8, 64, 5, 7)):
        got = mh.signatures_of_words(docs)
        want = np.stack([_minhash_reference(mh, d) for d in docs])
        assert got.dtype == np.uint32 and (got == want).all()


@pytest.mark.parametrize("text", TEXTS + list(JUNK) + list(ODD))
def test_exact_key_from_lower_equals_the_plain_key(text):
    from genforge.data.pipeline import exact_key64

    assert exact_key64(text, text.lower()) == exact_key64(text)
