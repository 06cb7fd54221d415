"""The rules, the classifiers' features and MinHash's words for a whole chunk of documents in a few numpy ops.

`clean.reject_reason` judges one text at a time with Python-level work per word; here a chunk of normalised
texts is judged at once:

* **tokens**: one `TOKEN_RE.findall` over the chunk's lower-cased texts joined by NUL (a one-character token of
  its own, which normalised text never holds), each token mapped to an integer id by one dict lookup
  (`_Vocab`). Everything the rules, the classifiers and MinHash ask of a token (its letter runs, their
  lengths, stopwords, keyboard-mash codes, harmful keys, its CRC-32 and hashed-feature column) is computed
  once per distinct token and then read from arrays by id; per-document sums are `np.bincount`s;
* **characters**: the chunk's texts as one array of code points: spaces, symbols, whitespace-separated words,
  the last character (for the quality score's "ends in punctuation") and a (document, character) histogram
  for the character entropy come from flag tables over the Basic Multilingual Plane.

Every statistic is the same number `reject_reason` computes (counts are exact integers and each ratio is the
same float division), except the character entropy and the quality score, which are sums of floats in
another order; those are trusted only away from their thresholds (`MARGIN`). The vectorised pass only
*clears* documents: every document it does not clear (rejected, within the margin of a float threshold,
multi-line statistics aside, or holding characters the tables do not cover) is judged by `reject_reason`
itself, so the reasons and details written are exactly those of the one-document code
(tests/data/test_batch.py compares them document by document).
"""

from __future__ import annotations

import functools
import zlib

import numpy as np

from genforge.data import clean as C

SEP = "\x00"  # joins a chunk's texts: a token of its own (not \w, not \s); `normalize` removes it from texts
MARGIN = 1e-9  # a float statistic this close to its threshold is decided by the one-document code
_SPACE, _SYMBOL, _UNSAFE = 1, 2, 4
_ENDERS = np.array([ord(c) for c in ".!?\"')"], dtype=np.uint32)
_VOCAB_LIMIT = 1 << 19  # distinct tokens remembered per worker (~60 MB); cleared between chunks beyond it


@functools.lru_cache(maxsize=1)
def char_flags() -> np.ndarray:
    """uint8 flags of every BMP code point: space (`str.isspace`), symbol (`clean._SYMBOL_RE`), and "unsafe" (its
    lower case is not one character of the same spacing, or depends on context like Σ; surrogates): a text with
    an unsafe character, or one beyond the BMP, is left to the one-document code."""
    chars = "".join(map(chr, range(0x10000)))
    t = np.zeros(0x10000, dtype=np.uint8)
    for i, c in enumerate(chars):
        if c.isspace():
            t[i] |= _SPACE
        low = c.lower()
        if len(low) != 1 or low.isspace() != c.isspace():
            t[i] |= _UNSAFE
    for m in C._SYMBOL_RE.finditer(chars):
        t[m.start()] |= _SYMBOL
    t[0x3A3] |= _UNSAFE  # Σ lower-cases to σ or ς depending on what follows it
    t[0xD800:0xE000] |= _UNSAFE
    return t


def _anchor_pieces() -> tuple[str, ...]:
    """For each boilerplate anchor its longest space-free piece: a text can hold the anchor only if one of its
    whitespace-separated words holds that piece."""
    return tuple(sorted({max(a.split(), key=len) for a in C._BOILERPLATE_ANCHORS}))


class _Vocab(dict):
    """Whitespace-separated word of the text -> id, with what the rules, the classifiers and MinHash need of it in
    arrays indexed by id, computed once per distinct word (`flush`). Lists (its tokens' feature columns, its
    `\\w+` tokens' CRC-32s) are stored flat, each word's run given by a start and a count."""

    FIELDS = ("nch", "sym", "endp", "lw_n", "lw_letters", "lw_stop", "mash_judged", "mash_bad", "harm", "anchor",
              "home", "col_start", "col_n", "crc_start", "crc_n")

    def __init__(self, harm_keys: frozenset[str], n_features: int | None) -> None:
        super().__init__()
        self.harm_keys, self.n_features = harm_keys, n_features
        self.pieces = _anchor_pieces()
        if n_features is not None:
            from genforge.data.classify import column_of

            self.column = functools.partial(column_of, n_features=n_features)
        self.reset()

    def reset(self) -> None:
        self.clear()
        self.new: list[str] = []
        cap = 1 << 12
        self.a = {f: np.zeros(cap, dtype=np.int64) for f in self.FIELDS}
        self.flat = {"col": np.zeros(cap, dtype=np.int32), "crc": np.zeros(cap, dtype=np.uint64)}
        self.used = {"col": 0, "crc": 0}
        self[SEP]  # id 0: the separator between texts (no characters counted, no tokens)
        self.new = []

    def __missing__(self, word: str) -> int:
        i = self[word] = len(self)
        self.new.append(word)
        return i

    def _append(self, name: str, values: list) -> int:
        start, end = self.used[name], self.used[name] + len(values)
        while end > len(self.flat[name]):
            self.flat[name] = np.concatenate([self.flat[name], np.zeros_like(self.flat[name])])
        self.flat[name][start:end] = values
        self.used[name] = end
        return start

    def flush(self) -> None:
        """Compute the properties of the words added since the last flush."""
        if not self.new:
            return
        new, self.new = self.new, []
        first, end = self[new[0]], self[new[0]] + len(new)
        rows = []
        for w in new:
            low = w.lower()  # = this word's part of text.lower(): lower-casing never looks across whitespace
            toks = C.TOKEN_RE.findall(low)
            lws = C._WORD_RE.findall(low)  # its letter runs (`clean.letter_words`: runs never cross tokens)
            mash = sum(map(C._MASH.__getitem__, lws))
            crcs = [zlib.crc32(t.encode("utf-8")) for t in toks if t.isalnum() or "_" in t]  # `clean.word_tokens`
            cols = list(map(self.column, toks)) if self.n_features is not None else []
            rows.append((len(w), len(C._SYMBOL_RE.findall(w)), w[-1] in ".!?\"')", len(lws), sum(map(len, lws)),
                         sum(map(C.STOPWORDS.__contains__, lws)), mash & 0xFFFFFFFF, mash >> 32,
                         any(x in self.harm_keys for x in lws), any(p in low for p in self.pieces),
                         low.startswith("home"), self._append("col", cols), len(cols), self._append("crc", crcs),
                         len(crcs)))
        while end > len(self.a["nch"]):
            self.a = {f: np.concatenate([v, np.zeros_like(v)]) for f, v in self.a.items()}
        for f, col in zip(self.FIELDS, zip(*rows)):
            self.a[f][first:end] = col

    def expand(self, name: str, wids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The stored lists of the words `wids`, concatenated, and each word's count."""
        start, cnt = self.a[name + "_start"][wids], self.a[name + "_n"][wids]
        total = int(cnt.sum())
        pos = np.repeat(start - (np.cumsum(cnt) - cnt), cnt) + np.arange(total)
        return self.flat[name][pos], cnt


class ChunkRules:
    """`reject_reason` for a chunk of normalised texts, and the classifiers' and MinHash's inputs from the same pass.

    Usage: `why = rules.judge(texts, lowers)`, then `rules.columns(docs)` (hashed-feature columns and tokens per
    document, for `classify.features_from_columns`) and `rules.word_crcs(docs)` (for
    `BatchMinHash.signatures_of_hashes`) of any subset of the chunk's documents.
    """

    def __init__(self, cfg: C.CleanConfig, harmful: C.HarmfulMatcher, n_features: int | None) -> None:
        self.cfg, self.harmful = cfg, harmful
        self.vocab = _Vocab(harmful._keys, n_features)
        self.flags = char_flags()
        self.wids = self.doc_w = np.zeros(0, dtype=np.int64)
        self.sep = np.zeros(0, dtype=bool)
        self.n = 0
        self.n_scalar = 0  # documents left to the one-document code (for tests and the benchmark)

    def judge(self, texts: list[str], lowers: list[str]) -> list[tuple[str, str] | None]:
        """(reason, detail) or None per text, exactly as `reject_reason(text, cfg, harmful, lower)`."""
        cfg, n, v = self.cfg, len(texts), self.vocab
        if len(v) >= _VOCAB_LIMIT:
            v.reset()
        words = f" {SEP} ".join(texts).split()  # str.split's whitespace is the regexes' \\s: tokens never cross it
        wids = np.fromiter(map(v.__getitem__, words), dtype=np.int64, count=len(words))
        v.flush()
        sep = wids == 0
        bounds = np.concatenate([[-1], np.flatnonzero(sep), [len(wids)]])
        if len(bounds) != n + 1:
            raise ValueError("a text holds NUL: batch rules need normalised texts")
        self.wids, self.sep, self.n = wids, sep, n
        self.doc_w = doc_w = np.cumsum(sep)  # document of each word (a separator's properties are all 0)
        a = v.a

        def word_sum(field: str) -> np.ndarray:
            return np.bincount(doc_w, weights=a[field][wids], minlength=n).astype(np.int64)

        n_ws, n_letters, n_stop = word_sum("lw_n"), word_sum("lw_letters"), word_sum("lw_stop")
        judged, bad, harm_hits = word_sum("mash_judged"), word_sum("mash_bad"), word_sum("harm")
        nonspace, symbols, anchor = word_sum("nch"), word_sum("sym"), word_sum("anchor")
        ws_count = np.diff(bounds) - 1  # len(text.split())
        first_w, last_w = bounds[:-1] + 1, bounds[1:] - 1
        has = ws_count > 0
        endp, home = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        endp[has] = a["endp"][wids[last_w[has]]] != 0
        home[has] = a["home"][wids[first_w[has]]] != 0
        lens = np.fromiter(map(len, texts), dtype=np.int64, count=n)
        multi = np.fromiter(("\n" in t for t in texts), dtype=bool, count=n)

        ok = has & (ws_count >= cfg.min_words)
        anchored = np.zeros(n, dtype=bool)
        cand = np.flatnonzero((anchor > 0) | home).tolist()
        if cand:
            anchored[cand] = C.boilerplate_anchored([lowers[i] for i in cand])
        self.anchored = anchored
        with np.errstate(divide="ignore", invalid="ignore"):
            r_sym = np.where(nonspace > 0, symbols / nonspace, 0.0)
            mean_len = np.where(n_ws > 0, n_letters / n_ws, 0.0)
            r_mash = np.where(judged > 0, bad / judged, 0.0)
            ok &= ~(r_sym > cfg.max_symbol_ratio)
            ok &= (cfg.min_mean_word_len <= mean_len) & (mean_len <= cfg.max_mean_word_len)
            ok &= ~(r_mash > cfg.max_mash_frac)
            ok &= ~((n_ws >= 20) & (n_stop < cfg.min_stopwords))
            if not (cfg.max_repeated_line_frac >= 0.0 and cfg.max_boilerplate_frac > 0.0):
                ok[:] = False  # a one-line, boilerplate-free text fails these: let the one-document code say so
            # harmful keys, repeated lines, boilerplate and line endings: Python only where they can matter
            ended = endp.astype(np.float64)  # one line: all its words end in punctuation, or none does
            harm_all = not self.harmful._alpha_keys  # keys with digits: letter runs are no gate, score every text
            for i in np.flatnonzero(ok & ((harm_hits > 0) | harm_all | multi | anchored)).tolist():
                t = texts[i]
                if (harm_all or harm_hits[i]) and self.harmful.score(t, None, lowers[i]) >= cfg.harmful_threshold:
                    ok[i] = False
                    continue
                if multi[i]:
                    lines = [ln for ln in t.split("\n") if ln.strip()]
                    line_words = [len(ln.split()) for ln in lines]
                    ended[i] = sum(k for ln, k in zip(lines, line_words) if ln.rstrip()[-1] in ".!?\"')") / \
                        max(1, sum(line_words))
                    if C.repeated_line_fraction(t) > cfg.max_repeated_line_frac:
                        ok[i] = False
                        continue
                if anchored[i] and C.boilerplate_fraction(t, lowers[i], True) >= cfg.max_boilerplate_frac:
                    ok[i] = False
            long = ok & (lens >= 100)
            if long.any():
                e = self._entropy(lowers, long)
                ok &= ~(long & (e < cfg.min_char_entropy + MARGIN))
            # the quality score (`clean._quality`) without its distinct-word part, which lies in [0, 1]: a text
            # passes whatever that part is, fails whatever it is, or (rarely) is left to the one-document code
            alpha = np.where(nonspace > 0, n_letters / nonspace, 0.0)
            stop = np.where(n_ws > 0, n_stop / n_ws, 0.0)
            length = np.where((mean_len >= 3) & (mean_len <= 8), 1.0,
                              np.maximum(0.0, 1 - np.minimum(np.abs(mean_len - 3), np.abs(mean_len - 8)) / 3))
            four = (np.minimum(1.0, np.maximum(0.0, (alpha - 0.5) / 0.3)) + np.minimum(1.0, stop / 0.25) + ended
                    + length) / 5
            ok &= (nonspace > 0) & (n_ws > 0) & ~(four < cfg.min_quality + MARGIN)

        why: list[tuple[str, str] | None] = [None] * n
        rest = np.flatnonzero(~ok).tolist()
        self.n_scalar += len(rest)
        for i in rest:
            why[i] = C.reject_reason(texts[i], cfg, self.harmful, lowers[i], None, bool(anchored[i]))
        return why

    def _entropy(self, lowers: list[str], which: np.ndarray) -> np.ndarray:
        """Character entropy (bits, spaces left out) of the lower-cased texts where `which`, as `clean.char_entropy`
        up to float summation order: one (document, character) histogram of the chunk."""
        n = len(lowers)
        sel = np.flatnonzero(which)
        part = [lowers[i] for i in sel.tolist()]
        llens = np.fromiter(map(len, part), dtype=np.int64, count=len(part))
        lcp = np.frombuffer("".join(part).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        out = np.zeros(n)
        if len(lcp) and int(lcp.max()) > 0xFFFF:  # beyond the BMP: one text at a time
            out[sel] = [C.char_entropy(lowers[i], lowers[i]) for i in sel.tolist()]
            return out
        counts = np.bincount(lcp, minlength=0x10000)
        seen = counts > 0
        seen &= (self.flags & _SPACE) == 0  # spaces are left out of the distribution
        width = int(seen.sum())
        if len(part) * width > 1 << 22:  # a chunk of many scripts: one text at a time
            out[sel] = [C.char_entropy(lowers[i], lowers[i]) for i in sel.tolist()]
            return out
        rank = np.where(seen, np.cumsum(seen) - 1, width)  # spaces go to a column of their own, dropped below
        key = rank[lcp] + np.repeat(np.arange(len(part), dtype=np.int64) * (width + 1), llens)
        h = np.bincount(key, minlength=len(part) * (width + 1)).reshape(len(part), width + 1)[:, :width]
        p = h / np.maximum(h.sum(axis=1, keepdims=True), 1)
        out[sel] = -np.where(h > 0, p * np.log2(np.where(h > 0, p, 1.0)), 0.0).sum(axis=1)
        return out

    def _words_of(self, docs: list[int]) -> np.ndarray:
        m = np.zeros(self.n, dtype=bool)
        m[docs] = True
        return m[self.doc_w] & ~self.sep

    def columns(self, docs: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Hashed-feature columns of the tokens of `docs` (in order) and the token count of each, from the last
        `judge` (the tokens `featurize_tokens` would see for these texts)."""
        sel = self._words_of(docs)
        cols, cnt = self.vocab.expand("col", self.wids[sel])
        return cols, np.bincount(self.doc_w[sel], weights=cnt, minlength=self.n).astype(np.int64)[docs]

    def word_crcs(self, docs: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """CRC-32 of the `\\w+` words of `docs` (in order) and the word count of each, from the last `judge`."""
        sel = self._words_of(docs)
        crcs, cnt = self.vocab.expand("crc", self.wids[sel])
        return crcs, np.bincount(self.doc_w[sel], weights=cnt, minlength=self.n).astype(np.int64)[docs]
