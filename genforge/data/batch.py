"""The rules, the classifiers' features and MinHash's words for a whole chunk of documents in a few numpy ops.

`clean.reject_reason` judges one text at a time with Python work per word; `ChunkRules.judge` judges a chunk of
normalised texts at once:

* **words**: the chunk's texts, joined by NUL (which `normalize` removes from texts), are split on whitespace
  once (`str.split`, in C), and each whitespace-separated word mapped to an integer id by one dict lookup
  (`_Vocab`). Tokens (`\\w+` runs and single punctuation marks) and letter runs never cross whitespace, and
  lower-casing never looks across it, so everything the rules, the classifiers and MinHash ask of a text is a
  sum over its words: characters, symbols, letter runs and their letters, stopwords, keyboard-mash codes,
  ambiguous harmful words, boilerplate-anchor pieces, and the lists of its tokens' hashed-feature columns and
  CRC-32s. Those are computed once per distinct word and read from arrays by id; per-text sums are one
  `np.add.reduceat` over the chunk's (word, property) matrix, and the lists are gathered with `np.repeat`;
* **bit masks** rule out the slow checks: a harmful phrase can match only where a text holds both of its two
  longest tokens, a boilerplate anchor of several words only where a word ends with its first piece and the
  next starts with its second (the one-document code runs on the few texts that pass);
* **character entropy**: one (text, character) histogram of the chunk's code points (`np.bincount`);
* **token ids** (for `clean_corpus`'s `pack_to`): with a tiktoken encoding that gives the tokenizer's ids
  (`fast_tokenize.build_tiktoken`), each distinct word's ids with and without the space before it are stored like
  its CRC-32s, so a text whose only whitespace is single spaces and which holds no special token (most normalised
  one-line texts) is tokenised by one gather over the chunk's word ids (`fast_tokenize.WordCache` explains why a
  text's ids are its words' ids; it does the same with a dict lookup per word and text).

Counts are exact integers and each ratio is the same float division as in `reject_reason`; the entropy is a
sum in another order, and the quality score is bounded without its distinct-word share, so those two are
trusted only away from their thresholds (`MARGIN`). The vectorised pass only *clears* texts: every text it does
not clear (rejected, near a float threshold, or holding a harmful phrase's tokens) is judged by `reject_reason`
itself, so the reasons and details written are exactly those of the one-document code (tests/data/test_batch.py
compares every field of a chunk's result with `_Worker.process_plain`).
"""

from __future__ import annotations

import functools
import zlib

import numpy as np

from genforge.data import clean as C

SEP = "\x00"  # joins a chunk's texts: a word of its own (not whitespace); `normalize` removes it from texts
MARGIN = 1e-9  # a float statistic this close to its threshold is decided by the one-document code
_VOCAB_LIMIT = 1 << 18  # distinct words remembered per worker (~90 MB at most); cleared between chunks beyond it


@functools.lru_cache(maxsize=1)
def space_flags() -> np.ndarray:
    """bool per BMP code point: `str.isspace` (what `char_entropy` leaves out)."""
    return np.array([chr(c).isspace() for c in range(0x10000)], dtype=bool)


def _anchor_parts() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The boilerplate anchors as whitespace-free pieces: those of one piece, and the first two pieces of the others.

    A text can hold a one-piece anchor only if one of its whitespace-separated words does, and an anchor of
    several pieces only where a word ends with its first piece and the next word starts with its second."""
    one = tuple(a for a in C._BOILERPLATE_ANCHORS if len(a.split()) == 1 and a == a.strip())
    trailing = tuple(a.strip() for a in C._BOILERPLATE_ANCHORS if len(a.split()) == 1 and a != a.strip())
    pairs = tuple((a.split()[0], a.split()[1]) for a in C._BOILERPLATE_ANCHORS if len(a.split()) > 1)
    # "terms " and "limited ": a word ending with the piece, followed by any word
    return one, pairs + tuple((t, "") for t in trailing)


class _Vocab(dict):
    """Whitespace-separated word of the text -> id, with what the rules, the classifiers and MinHash need of it in a
    matrix row (`m`, one column per `COLS` entry), computed once per distinct word (`flush`). Lists (its tokens'
    feature columns, its `\\w+` tokens' CRC-32s) are stored flat, each word's run given by a start and a count."""

    COLS = ("nch", "sym", "lw_n", "lw_letters", "lw_stop", "mash_judged", "mash_bad", "harm_words", "anchor")
    MASKS = ("harm_a", "harm_b", "anchor_end", "anchor_start")  # bit masks (OR-reduced, not summed)
    EXTRA = ("endp", "home", "col_start", "col_n", "crc_start", "crc_n",
             "plain", "tf_start", "tf_n", "tr_start", "tr_n")  # tokens: as a text's first word (tf), after a space

    def __init__(self, harmful: C.HarmfulMatcher, n_features: int | None, enc=None, bos: int = 0,
                 eos: int = 0) -> None:
        super().__init__()
        self.harmful, self.n_features = harmful, n_features
        self.enc, self.bos, self.eos = enc, bos, eos
        self.specials = tuple(enc.special_tokens_set) if enc is not None else ()
        self.one, self.pairs = _anchor_parts()
        # each harmful phrase: a bit set on words holding its longest token (a), and on words holding its second
        # longest (b; the longest again for one-token phrases): a phrase can match only where both bits occur
        self.phrases = [p for ps in harmful._by_first.values() for p in ps]
        self.phrase_bits = len(self.phrases) <= 63
        self.key_a: dict[str, int] = {}
        self.key_b: dict[str, int] = {}
        for i, ph in enumerate(self.phrases if self.phrase_bits else []):
            ranked = sorted(ph, key=len, reverse=True)
            self.key_a[ranked[0]] = self.key_a.get(ranked[0], 0) | 1 << i
            k = ranked[1] if len(ranked) > 1 else ranked[0]
            self.key_b[k] = self.key_b.get(k, 0) | 1 << i
        if n_features is not None:
            from genforge.data.classify import column_of

            self.column = functools.partial(column_of, n_features=n_features)
        self.reset()

    def reset(self) -> None:
        self.clear()
        self.new: list[str] = []
        cap = 1 << 12
        self.m = np.zeros((cap, len(self.COLS)), dtype=np.int64)
        self.a = {f: np.zeros(cap, dtype=np.int64) for f in self.MASKS + self.EXTRA}
        self.flat = {"col": np.zeros(cap, dtype=np.int32), "crc": np.zeros(cap, dtype=np.uint64),
                     "tok": np.zeros(cap, dtype=np.uint32)}
        self.used = {"col": 0, "crc": 0, "tok": 0}
        self[SEP]  # id 0: the separator between texts (no characters counted, no tokens, no bits)
        self.new = []
        # ... but in a token stream <|eos|> <|bos|>: the end of the text before and the start of its own
        self.a["tr_start"][0], self.a["tr_n"][0], self.a["plain"][0] = self._append("tok", [self.eos, self.bos]), 2, 1

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
        rows, masks, extra = [], [], []
        hwords = self.harmful._words
        for w in new:
            low = w.lower()  # = this word's part of text.lower(): lower-casing never looks across whitespace
            toks = C.TOKEN_RE.findall(low)
            lws = C._WORD_RE.findall(low)  # its letter runs (`clean.letter_words`: runs never cross tokens)
            htoks = C._HARM_TOKEN_RE.findall(low)  # `HarmfulMatcher.score`'s tokens (they never cross whitespace)
            mash = sum(map(C._MASH.__getitem__, lws))
            crcs = [zlib.crc32(t.encode("utf-8")) for t in toks if t.isalnum() or "_" in t]  # `clean.word_tokens`
            cols = list(map(self.column, toks)) if self.n_features is not None else []
            ha = hb = 0
            for t in htoks:
                ha |= self.key_a.get(t, 0)
                hb |= self.key_b.get(t, 0)
            ae = sum(1 << i for i, (p, _) in enumerate(self.pairs) if low.endswith(p))
            st = sum(1 << i for i, (_, q) in enumerate(self.pairs) if low.startswith(q))
            rows.append((len(w), len(C._SYMBOL_RE.findall(w)), len(lws), sum(map(len, lws)),
                         sum(map(C.STOPWORDS.__contains__, lws)), mash & 0xFFFFFFFF, mash >> 32,
                         sum(map(hwords.__contains__, htoks)), any(p in low for p in self.one)))
            masks.append((ha, hb, ae, st))
            extra.append((w[-1] in ".!?\"')", low.startswith("home"), self._append("col", cols), len(cols),
                          self._append("crc", crcs), len(crcs), *self._tokens(w)))
        while end > len(self.m):
            self.m = np.concatenate([self.m, np.zeros_like(self.m)])
            self.a = {f: np.concatenate([v, np.zeros_like(v)]) for f, v in self.a.items()}
        self.m[first:end] = rows
        for f, col in zip(self.MASKS + self.EXTRA, zip(*(mk + ex for mk, ex in zip(masks, extra)))):
            self.a[f][first:end] = col

    def _tokens(self, w: str) -> tuple[int, int, int, int, int]:
        """(plain, first start, first count, rest start, rest count) of a word's token ids; plain: printable and
        no special token inside, so a text of such words one space apart is tokenised word by word."""
        if self.enc is None or not w.isprintable() or any(t in w for t in self.specials):
            return 0, 0, 0, 0, 0
        first = self.enc.encode_ordinary(w)
        rest = self.enc.encode_ordinary(" " + w)
        return 1, self._append("tok", first), len(first), self._append("tok", rest), len(rest)

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

    def __init__(self, cfg: C.CleanConfig, harmful: C.HarmfulMatcher, n_features: int | None, enc=None,
                 bos: int = 0, eos: int = 0) -> None:
        """enc: a tiktoken encoding equal to the tokenizer's (`fast_tokenize.build_tiktoken`) for `doc_tokens`."""
        self.cfg, self.harmful = cfg, harmful
        self.vocab = _Vocab(harmful, n_features, enc, bos, eos)
        self.space = space_flags()
        self.wids = self.doc_w = np.zeros(0, dtype=np.int64)
        self.sep = np.zeros(0, dtype=bool)
        self.n = 0
        self.n_scalar = 0  # documents left to the one-document code (for tests and the benchmark)

    def judge(self, texts: list[str], lowers: list[str]) -> list[tuple[str, str] | None]:
        """(reason, detail) or None per text, exactly as `reject_reason(text, cfg, harmful, lower)`."""
        cfg, n, v = self.cfg, len(texts), self.vocab
        if len(v) >= _VOCAB_LIMIT:
            v.reset()
        # str.split's whitespace is the regexes' \\s; 256 texts at a time, as the words of a whole chunk are a str
        # object each (~15 MB for 1,024 pages; the same ids, in the same order, as one split of the chunk)
        wids = np.concatenate([np.zeros(0, dtype=np.int64)] + [
            np.fromiter(map(v.__getitem__, ws), dtype=np.int64, count=len(ws))
            for ws in (f"{SEP} {f' {SEP} '.join(texts[lo:lo + 256])}".split() for lo in range(0, n, 256))])
        v.flush()
        sep = wids == 0
        seps = np.flatnonzero(sep)  # each text's words follow its separator: segments are never empty
        if len(seps) != n:
            raise ValueError("a text holds NUL: batch rules need normalised texts")
        self.wids, self.sep, self.n = wids, sep, n
        self.doc_w = doc_w = np.cumsum(sep) - 1  # text of each word (a separator's properties are all 0)
        a = v.a
        sums = np.zeros((n, len(v.COLS)), dtype=np.int64)
        for c in range(len(v.COLS) if n else 0):
            # a column at a time: ~3x faster than `reduceat(v.m[wids], axis=0)` here, and no (n_words, 9) temporary
            sums[:, c] = np.add.reduceat(v.m[:, c][wids], seps)
        n_ws, n_letters, n_stop, judged, bad, harm_words, nonspace, symbols, anchor = (
            sums[:, v.COLS.index(c)] for c in ("lw_n", "lw_letters", "lw_stop", "mash_judged", "mash_bad",
                                                "harm_words", "nch", "sym", "anchor"))
        ha = np.bitwise_or.reduceat(a["harm_a"][wids], seps) if n else np.zeros(0, dtype=np.int64)
        hb = np.bitwise_or.reduceat(a["harm_b"][wids], seps) if n else np.zeros(0, dtype=np.int64)
        phrase = (ha & hb) != 0 if v.phrase_bits else harm_words >= 0
        # a multi-piece boilerplate anchor: a word ending with its first piece before one starting with its second
        pair = (a["anchor_end"][wids[:-1]] & a["anchor_start"][wids[1:]]) != 0
        anchor = anchor + np.bincount(doc_w[:-1][pair], minlength=n)
        bounds = np.append(seps, len(wids))
        ws_count = np.diff(bounds) - 1  # len(text.split())
        first_w, last_w = seps + 1, bounds[1:] - 1
        has = ws_count > 0
        endp, home = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        endp[has] = a["endp"][wids[last_w[has]]] != 0
        home[has] = a["home"][wids[first_w[has]]] != 0
        lens = np.fromiter(map(len, texts), dtype=np.int64, count=n)
        self.multi = multi = np.fromiter(("\n" in t for t in texts), dtype=bool, count=n)
        self.ws_count = ws_count

        ok = has & (ws_count >= cfg.min_words)
        # without a phrase, the harmful score is 0.5 per ambiguous word (`HarmfulMatcher.score`, exactly)
        ok &= phrase | ~(0.5 * harm_words >= cfg.harmful_threshold)
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
            for i in np.flatnonzero(ok & (phrase | multi | anchored)).tolist():
                t = texts[i]
                if phrase[i] and self.harmful.score(t, None, lowers[i]) >= cfg.harmful_threshold:
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
        if len(sel) > 256:  # a block of texts at a time: the temporaries are ~30 bytes a character
            out = np.zeros(n)
            for lo in range(0, len(sel), 256):
                part_of = np.zeros(n, dtype=bool)
                part_of[sel[lo:lo + 256]] = True
                out += self._entropy(lowers, part_of)
            return out
        part = [lowers[i] for i in sel.tolist()]
        llens = np.fromiter(map(len, part), dtype=np.int64, count=len(part))
        lcp = np.frombuffer("".join(part).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        out = np.zeros(n)
        if len(lcp) and int(lcp.max()) > 0xFFFF:  # beyond the BMP: one text at a time
            out[sel] = [C.char_entropy(lowers[i], lowers[i]) for i in sel.tolist()]
            return out
        counts = np.bincount(lcp, minlength=0x10000)
        seen = counts > 0
        seen &= ~self.space  # spaces are left out of the distribution
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

    def doc_tokens(self, docs: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token ids of `docs` (texts of the last `judge`, ascending) that are plain: one line of words one space
        apart, each printable and free of special tokens. Returns (is_plain per doc, <|bos|> ids <|eos|> of the
        plain ones concatenated (uint32), each plain one's length); the others are left to the caller.

        ids(text) = ids(w0) + ids(" " + w1) + ... (`fast_tokenize.WordCache`), read from the vocabulary: the words'
        stored token runs are gathered in one `np.repeat`, each text's separator standing for <|eos|> <|bos|>."""
        v, d = self.vocab, np.asarray(docs, dtype=np.int64)
        seps = np.flatnonzero(self.sep)
        plain_w = np.minimum.reduceat(v.a["plain"][self.wids], seps) if self.n else np.zeros(0, dtype=np.int64)
        plain = (plain_w[d] > 0) & ~self.multi[d] & (self.ws_count[d] > 0)
        pick = np.zeros(self.n, dtype=bool)
        pick[d[plain]] = True
        at = np.flatnonzero(pick[self.doc_w])  # the picked texts' separators and words, in order
        if not len(at):
            return plain, np.zeros(0, dtype=np.uint32), np.zeros(0, dtype=np.int64)
        w, is_sep = self.wids[at], self.sep[at]
        first = np.concatenate([[False], is_sep[:-1]])  # the word right after a separator
        start = np.where(first, v.a["tf_start"][w], v.a["tr_start"][w])
        cnt = np.where(first, v.a["tf_n"][w], v.a["tr_n"][w])
        total = int(cnt.sum())
        pos = np.repeat(start - (np.cumsum(cnt) - cnt), cnt) + np.arange(total)
        stream = v.flat["tok"][pos]  # <|eos|> <|bos|> text0 <|eos|> <|bos|> text1 ...
        lens = np.add.reduceat(cnt, np.flatnonzero(is_sep))
        return plain, np.append(stream[1:], np.uint32(v.eos)), lens

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
