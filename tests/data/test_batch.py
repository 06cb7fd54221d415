"""The vectorised chunk path (`batch.ChunkRules` in `_Worker.process`) gives exactly what the one-document code gives.

`_Worker.process_plain` is the reference (`clean.reject_reason`, `featurize_tokens`, `signatures_of_words` per
document); every field a chunk's result carries is compared on corpora with every planted kind, odd Unicode,
multi-line junk, and configs that move every threshold.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from genforge.data import clean as C
from genforge.data.pipeline import CleanConfig, _Worker, exact_key64, exact_key64_normalised
from genforge.data.readers import iter_documents
from tests.data.test_fast_paths import JUNK, ODD, TEXTS, WORDS, _corpus

EXTRA = ["\x00nul and words here to make five", " a\u00a0b c d e f ", "a\u2028b c d e f", "x\t y z w v u",
         "a\u200bb c d e f g", "e\u0301 c d e f g", " lead ing words are here", "trail ing words are here ",
         "two  spaces  between words here", "\ufeffbom at the start of words", "\u3000ideographic space words",
         "ΣΑΣ ΟΔΟΣ Σ words here ok", "İstanbul İİ words here ok now", "emoji \U0001F600 text with words here",
         "Mr. Smith bought a ghost story about someone leaving without a trace today.",
         "without leaving a trace, he would kill someone and poison the ghost gun explosive",
         "Read more about our terms and conditions. Share this.\nFollow us on the web.",
         "all rights\nreserved here and there and everywhere we go", "home > news > today is a fine day",
         "line one here.\n\nline one here.\nline two there!\n\n\nline three ok", "2024 1999 3000 ½ ² ٣ 12 13 14"]


def _rows(texts: list[str]) -> list[tuple[str, str, str]]:
    return [(f"d{i}", t, f"f:{i}") for i, t in enumerate(texts)]


def _assert_same(w: _Worker, rows: list[tuple[str, str, str]], chunk: int = 64) -> int:
    cleared = 0
    for lo in range(0, len(rows), chunk):
        part = rows[lo:lo + chunk]
        a, b = w.process(part, all_texts=True), w.process_plain(part, all_texts=True)
        for k in ("why", "keep", "lines", "kept_bytes", "in_bytes", "heads", "all_texts"):
            assert a[k] == b[k], (k, [(x, y) for x, y in zip(a[k], b[k]) if x != y][:3])
        assert a["keys"].dtype == b["keys"].dtype and (a["keys"] == b["keys"]).all()
        assert (a["tokens"] is None) == (b["tokens"] is None)
        if a["tokens"] is not None:  # pack_to: the rules' word-id tokens against batch_encoder text by text
            for k in ("buf", "lens", "val"):
                x, y = a["tokens"][k], b["tokens"][k]
                assert x.dtype == y.dtype and x.tolist() == y.tolist(), k
        assert (a["sigs"] is None) == (b["sigs"] is None)
        if a["sigs"] is not None:
            assert a["sigs"].shape == b["sigs"].shape and (a["sigs"] == b["sigs"]).all()
        cleared += sum(w is None for w in a["why"])
    return cleared


def _odd_texts(n: int = 600, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    pool = TEXTS + list(JUNK) + list(ODD) + EXTRA
    out = []
    for _ in range(n):
        k = rng.random()
        if k < 0.5:
            out.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 60))).capitalize() + rng.choice(".!?,"))
        elif k < 0.8:
            out.append(rng.choice(pool))
        else:  # mixtures, with odd separators
            out.append(rng.choice(["\n", " ", "\n\n", "\r\n", "\t"]).join(rng.sample(pool, 3)))
    return out


def test_chunk_path_equals_the_one_document_code(tmp_path):
    src = tmp_path / "in.jsonl"
    _corpus(src, n=900)
    rows = [(d.id, d.text, d.source) for d in iter_documents(src)] + _rows(_odd_texts())
    w = _Worker(CleanConfig(classifier="off"), None)
    cleared = _assert_same(w, rows)
    # the vectorised pass decides most kept documents itself (else it would be the old code, slower)
    assert w.rules.n_scalar < len(rows) - cleared * 0.8, (w.rules.n_scalar, cleared, len(rows))


@pytest.mark.parametrize("change", [
    {"min_words": 12, "max_symbol_ratio": 0.05, "min_quality": 0.85},
    {"max_mean_word_len": 5.0, "min_mean_word_len": 4.0, "min_stopwords": 6, "min_char_entropy": 4.1},
    {"max_repeated_line_frac": 0.0, "max_boilerplate_frac": 0.0, "max_mash_frac": 0.0, "harmful_threshold": 0.5},
    {"harmful_terms": ["fine day", "words here", "x2 y3", "2024"], "use_default_harmful": False,
     "dedup_near": False},
    {"num_perm": 64, "shingle_size": 5, "near_threshold": 0.8, "harmful_threshold": 3.0},
])
def test_chunk_path_equals_the_one_document_code_under_other_settings(change):
    w = _Worker(dataclasses.replace(CleanConfig(classifier="off"), **change), None)
    _assert_same(w, _rows(_odd_texts(400, seed=5)), chunk=37)


def test_chunk_path_with_the_learned_filters(tmp_path):
    pytest.importorskip("sklearn")
    from genforge.data.pipeline import prepare_filters
    from genforge.data.synth import write_synthetic_corpus

    write_synthetic_corpus(tmp_path / "c.jsonl", 1.5, seed=4)
    cfg = CleanConfig(classifier="world")
    prepare_filters(cfg, [tmp_path / "c.jsonl"], tmp_path / "f")
    w = _Worker(dataclasses.replace(cfg, classifier=str(tmp_path / "f")), str(tmp_path / "f"))
    rows = [(d.id, d.text, d.source) for d in iter_documents(tmp_path / "c.jsonl")] + _rows(_odd_texts(200))
    _assert_same(w, rows, chunk=256)


def test_normalize_many_and_the_normalised_exact_key():
    texts = TEXTS + list(JUNK) + list(ODD) + EXTRA + _odd_texts(300, seed=9)
    for lo in range(0, len(texts), 50):  # batches with and without odd bytes
        part = texts[lo:lo + 50]
        assert C.normalize_many(part) == [C.normalize(t) for t in part]
    assert C.normalize_many(["plain words here", "more plain words"]) == ["plain words here", "more plain words"]
    for t in texts + [C.normalize(t) for t in texts]:
        assert exact_key64_normalised(t, t.lower()) == exact_key64(t), repr(t)


def test_entropy_of_a_chunk_matches_char_entropy():
    w = _Worker(CleanConfig(classifier="off", dedup_near=False), None)
    lowers = [C.normalize(t).lower() for t in TEXTS + list(JUNK) + list(ODD) + EXTRA]
    got = w.rules._entropy(lowers, np.ones(len(lowers), dtype=bool))
    want = [C.char_entropy(t, t) for t in lowers]
    assert np.allclose(got, want, rtol=0, atol=1e-12)


def test_chunk_tokens_equal_the_tokenizers_text_by_text(tmp_path):
    """With pack_to, plain texts are tokenised from the rules' word ids (`ChunkRules.doc_tokens`); the rest (more
    lines, special tokens, unprintable words) text by text: both equal `batch_encoder` on every text."""
    from genforge.tokenizer import TokenizerConfig, train_tokenizer

    src = tmp_path / "in.jsonl"
    _corpus(src, n=600)
    special = ["the <|bos|> token sits here among words", "a word<|end|>x sits here now and then",
               "<|user|> asks a question about the river today", "plain words but one\u2060joiner here ok"]
    rows = [(d.id, d.text, d.source) for d in iter_documents(src)] + _rows(_odd_texts(400) + special * 3)
    train_tokenizer([t for _, t, _ in rows[::3]], TokenizerConfig(vocab_size=600)).save(tmp_path / "tok")
    cfg = CleanConfig(classifier="off", pack_to=str(tmp_path / "shards"), pack_tokenizer=str(tmp_path / "tok"),
                      pack_val_fraction=0.3)
    w = _Worker(cfg, None)
    assert getattr(w.packer.encode_many, "enc", None) is not None  # the word path is on
    assert _assert_same(w, rows, chunk=97) > 300
    res = w.process(rows[:200])
    plain, _, _ = w.rules.doc_tokens(res["keep"])
    assert 0.3 < plain.mean() < 1, plain.mean()  # both paths ran in one chunk
    w.rules.vocab.reset()  # a full vocabulary is cleared between chunks: the separator's tokens come back
    assert _assert_same(w, rows[:300], chunk=97) > 0
