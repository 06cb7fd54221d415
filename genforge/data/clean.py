"""Normalise text and decide whether a document is junk, harmful or low quality.

The filters are the classic web-corpus heuristics (in the spirit of the C4 and Gopher rules, Raffel
et al. 2020 and Rae et al. 2021), each a small measurable statistic with a threshold in `CleanConfig`:

* ``symbols``: too many characters that are neither letters, digits, spaces nor common punctuation;
* ``word_length``: mean word length outside a plausible range for prose;
* ``repeated_lines``: a large share of lines repeat an earlier line (spam, scraped navigation);
* ``boilerplate``: a large share of lines/sentences are web boilerplate (cookies, subscribe, log in ...);
* ``keyboard_mash``: many words that are unpronounceable (no vowels, long consonant runs);
* ``low_entropy``: character entropy far below that of prose ("aaaa ...");
* ``no_stopwords``: a long text with (almost) no function words is a keyword list, not prose;
* ``harmful``: weighted hits from the harmful vocabulary (`genforge.world.harmful` plus a user list);
* ``low_quality``: `quality_score` below a threshold.

Like Gopher's rules these assume English prose; for other languages relax `min_stopwords`,
`max_mean_word_len` and `min_quality` in the config (keyboard-mash checks skip non-Latin words).

`quality_score(text)` is a 0-1 heuristic: the mean of five sub-scores, each 1 for ordinary prose -
letter share (>= 0.8 of non-space characters), stopword share (>= 0.25 of words), share of words in
lines ending in sentence punctuation, mean word length in [3, 8], and distinct-word share (>= 0.3).
"""

from __future__ import annotations

import bisect
import itertools
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from genforge.world.harmful import HARMFUL_PHRASES, HARMFUL_WORDS


@dataclass
class CleanConfig:
    """Settings of `clean_corpus`; the defaults are tuned on the tiny world but use no knowledge of it."""

    text_field: str = "text"
    """JSONL/parquet field holding the document text."""
    id_field: str = "id"
    """Field holding a document id (falls back to `file:line`)."""
    min_words: int = 5
    """Documents with fewer whitespace-separated words are dropped ("too_short")."""
    max_symbol_ratio: float = 0.2
    """Largest share of non-space characters that are not alphanumeric or common punctuation."""
    min_mean_word_len: float = 2.5
    """Smallest plausible mean word length (letters)."""
    max_mean_word_len: float = 12.0
    """Largest plausible mean word length (letters)."""
    max_repeated_line_frac: float = 0.3
    """Largest share of lines that repeat an earlier line (Gopher uses 0.3)."""
    max_boilerplate_frac: float = 0.4
    """Share of lines/sentences matching web-boilerplate patterns at which a document is dropped."""
    max_mash_frac: float = 0.3
    """Largest share of unpronounceable words (keyboard mash)."""
    min_char_entropy: float = 3.0
    """Smallest character entropy in bits for texts of 100+ characters (prose is ~4)."""
    min_stopwords: int = 2
    """Texts of 20+ words need at least this many function words (Gopher's stopword rule)."""
    min_quality: float = 0.6
    """Smallest `quality_score` (0-1) kept."""
    harmful_threshold: float = 1.0
    """Harmful-vocabulary score at which a document is dropped (a phrase counts 1, an ambiguous word 0.5)."""
    harmful_terms: list[str] = field(default_factory=list)
    """Extra harmful phrases (each hit counts 1), added to `genforge.world.harmful`'s lists."""
    harmful_terms_file: str | None = None
    """A file of extra harmful phrases, one per line (# comments allowed)."""
    use_default_harmful: bool = True
    """Use the built-in harmful vocabulary (turn off to use only your own list)."""
    dedup_exact: bool = True
    """Drop documents identical (after normalising case, spacing and Unicode) to an earlier one."""
    dedup_near: bool = True
    """Drop documents whose estimated Jaccard similarity to an earlier one reaches `near_threshold`."""
    near_threshold: float = 0.5
    """Jaccard similarity of word-shingle sets at which two documents are near duplicates."""
    num_perm: int = 128
    """MinHash permutations: more is more accurate and slower."""
    shingle_size: int = 3
    """Words per shingle (smaller catches looser copies, and more false matches)."""
    minhash_seed: int = 1
    """Seed of the MinHash permutations."""
    dedup_backend: str = "auto"
    """"auto"/"builtin": batch numpy MinHash with a compact index (fastest; resumable); "datasketch": its
    MinHash + MinHashLSH, one document at a time (slower; kept as an oracle)."""
    classifier: str = "auto"
    """Learned filters: "world" (train on a generated tiny world's planted labels), "auto" ("world" when
    scikit-learn, from the `data` extra, is installed, else "off"), "off", a labelled JSONL
    (`{"text" or "id", "label"}` with labels clean/junk/harmful; ids are looked up in the inputs), or a
    folder holding quality.pkl and harm.pkl from an earlier run."""
    quality_threshold: float = 0.5
    """P(junk) from the quality classifier at which a document is dropped ("quality_classifier")."""
    harm_classifier_threshold: float = 0.5
    """P(harmful) from the harm classifier at which a document is dropped ("harm_classifier")."""
    classifier_holdout: float = 0.25
    """Share of labelled documents held out (by text hash) to measure the classifiers against the heuristics."""
    classifier_world_seed: int = 1000
    """Seed of the world generated for classifier="world" (not the seed of your own world, to avoid leakage)."""
    skip_bad: bool = False
    """Skip malformed JSONL lines (bad JSON, missing/non-string text, bad UTF-8), counting and sampling them in
    the report, instead of stopping at the first with a file:line error."""
    workers: int = 1
    """Processes for normalise/filters/classifiers/MinHash (dedup decisions stay in order in the main one)."""
    chunk_docs: int = 512
    """Documents per work item (bigger amortises overhead; memory in flight is ~2 x workers x chunk)."""
    resume: bool = True
    """Continue an interrupted run from its last checkpoint (the `<out>.work` folder) when inputs and config match."""
    checkpoint_docs: int = 20_000
    """Input documents between checkpoints of a resumable run."""
    progress: bool | None = None
    """Show progress (a bar on a terminal, a line every 10 % in a log); None shows it for inputs over 20 MB."""
    pack_to: str = ""
    """A shard folder to tokenise and pack the kept documents into while cleaning (needs `pack_tokenizer`): the
    same shards as `genforge data pack` of the cleaned output, but each worker tokenises its chunk beside the
    filters, so packing overlaps cleaning. Empty: no packing."""
    pack_tokenizer: str = ""
    """The folder holding tokenizer.json for `pack_to`."""
    pack_val_fraction: float = 0.05
    """Share of kept documents (by text hash) packed into the validation split (`genforge data pack`'s default)."""


# Generic web boilerplate (not tied to any one site or to the tiny world); lower-case regexes.
BOILERPLATE_PATTERNS = (
    r"\bcookies?\b", r"\bsubscribe\b", r"\bnewsletter\b", r"privacy policy", r"terms (of|and) (use|service|conditions)",
    r"all rights reserved", r"©", r"\bsign (in|up)\b", r"\blog ?in\b", r"\bregister\b", r"javascript",
    r"click (here|now)", r"read more", r"\bshare (this|on)\b", r"follow us", r"skip to (main )?content",
    r"accept all", r"forgot (your )?password", r"contact us", r"manage preferences", r"\d+% off",
    r"limited (time )?offer", r"\bbuy now\b", r"^\s*home\s*>", r"leave a comment",
)
# Matched against lower-cased text: IGNORECASE makes this alternation about twice as slow.
_BOILERPLATE_RE = re.compile("|".join(BOILERPLATE_PATTERNS))
# A literal that every pattern above needs: `str.__contains__` scans for these ~50x faster than the regex
# alternation tries its 25 branches at every position, and most prose contains none of them.
# Each is a substring that every match of its pattern contains ("log in"/"login" for "\blog ?in\b"), as narrow
# as that allows: "log", "sign " or ">" alone sent ~20 % of prose ("catalogue", "dialogue") to the regex.
_BOILERPLATE_ANCHORS = ("cookie", "subscribe", "newsletter", "privacy policy", "terms ", "all rights reserved", "©",
                        "sign in", "sign up", "log in", "login", "register", "javascript", "click here", "click now",
                        "read more", "share this", "share on", "follow us", "skip to", "accept all", "forgot",
                        "contact us", "manage preferences", "% off", "limited ", "buy now", "leave a comment")
# ASCII characters that are not symbols (alphanumeric, whitespace, common punctuation), for bytes.translate
_ASCII_OK = bytes(c for c in range(128) if chr(c).isalnum() or chr(c).isspace() or chr(c) in ".,;:!?'\"()-")
_ASCII_SPACE = bytes(c for c in range(128) if chr(c).isspace())
_HARM_TOKEN_RE = re.compile(r"[^\W_]+")

STOPWORDS = frozenset(
    "a an the and or but of to in on at by for with from as is are was were be been it its this that these "
    "those he she they we you i his her their our my your not no so if then there here who which what when "
    "has have had do does did will would can could".split()
)

_WORD_RE = re.compile(r"[^\W\d_]+", re.UNICODE)  # runs of letters
_SENT_SPLIT_RE = re.compile(r"(?<=[.!?])\s+|\n+")
_SYMBOL_RE = re.compile(r"[^\w\s.,;:!?'\"()\-]|_")  # not alphanumeric, space or common punctuation
_VOWEL_RE = re.compile(r"[aeiouyàáâäèéêëìíîïòóôöùúûüÿ]")
_CONSONANT_RUN_RE = re.compile(r"[b-df-hj-np-tv-xz]{5,}")
# Control characters (except newline and tab) and invisible format characters such as zero-width spaces.
# Lone surrogates (a JSON "\ud800" escape decodes to one) are not characters: UTF-8 cannot encode them.
_INVISIBLE_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff"
                           "\ud800-\udfff]")
# The classifiers' tokens (word runs and single punctuation marks); the rules' letter runs and MinHash's words
# are derived from one pass of this over the lower-cased text (`tokens`, `letter_words`, `word_tokens`).
TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def normalize(text: str) -> str:
    """NFC Unicode, no control, zero-width or lone-surrogate characters, tidy whitespace (blank lines collapsed)."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _INVISIBLE_RE.sub("", text)
    lines = [" ".join(line.split()) for line in text.split("\n")]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):  # keep at most one empty line between paragraphs
            out.append(line)
    return "\n".join(out).strip()


# The first UTF-8 byte of every character `_INVISIBLE_RE` removes: ASCII controls, then the lead bytes of the C1
# controls and soft hyphen (\xc2), zero-width and direction marks (\xe2), the BOM (\xef) and surrogates (\xed).
_INVISIBLE_LEADS = bytes([*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F, 0xC2, 0xE2, 0xEF, 0xED])
# ... and of every whitespace character but space and newline (tab, \x85 and no-break space under \xc2, \u1680
# under \xe1, \u2000-\u205f under \xe2, \u3000 under \xe3; \r is replaced first).
_ODD_LEADS = bytes(sorted(set(_INVISIBLE_LEADS) | {0x09, 0xE1, 0xE3}))


def normalize_many(texts: list[str]) -> list[str]:
    """`[normalize(t) for t in texts]`, faster: a text none of whose UTF-8 bytes can begin an invisible character or
    an odd whitespace character (one `bytes.translate` of the whole batch, then of each text, finds them) needs
    no regex, and if it is one line without double, leading or trailing spaces, no change at all."""
    blob = "".join(texts).encode("utf-8", "surrogatepass")
    suspect = len(blob.translate(None, _ODD_LEADS)) != len(blob)
    out = []
    for t in texts:
        if "\r" in t:
            t = t.replace("\r\n", "\n").replace("\r", "\n")
        t = unicodedata.normalize("NFC", t)
        # NFC never makes an invisible or space character of others, so the raw bytes were a fair gate
        if suspect:
            b = t.encode("utf-8", "surrogatepass")
            if len(b.translate(None, _ODD_LEADS)) != len(b):
                out.append(normalize(t))
                continue
        if "\n" in t or "  " in t or t.startswith(" ") or t.endswith(" "):
            out.append(normalize(t))  # `normalize` is idempotent on what was done above
        else:
            out.append(t)  # one line, words one space apart: `normalize` would return it unchanged
    return out


def words(text: str) -> list[str]:
    """Lower-cased letter runs (numbers and punctuation dropped)."""
    return _WORD_RE.findall(text.lower())


def tokens(lower: str) -> list[str]:
    """Word runs and single punctuation marks of lower-cased text, in order (the learned filters' tokens)."""
    return TOKEN_RE.findall(lower)


def letter_words(toks: list[str]) -> list[str]:
    """The multiset of `words(text)` from `tokens(text.lower())`, in another order (every rule only counts them).

    A word run that is all letters is one letter run; the others (with digits, "_", numerals such as "½", or
    punctuation marks) are few, and one regex pass over them finds their letter runs. About 3x faster than
    `words`, and the token pass is shared with the classifiers and MinHash.
    """
    ws = [t for t in toks if t.isalpha()]
    rest = [t for t in toks if not (t.isalpha() or t.isdecimal())]
    if rest:
        ws += _WORD_RE.findall(" ".join(rest))  # a space is no letter: runs never join across tokens
    return ws


def word_tokens(toks: list[str]) -> list[str]:
    """The word runs (`\\w+`) of `tokens(...)`, in order: MinHash's words."""
    return [t for t in toks if t.isalnum() or "_" in t]  # a punctuation token is one non-word character


def _non_space(text: str) -> int:
    return len("".join(text.split()))  # in C; str.split's whitespace is the same set as the regex's \s


def symbol_ratio(text: str) -> float:
    """Share of non-space characters that are neither alphanumeric nor common punctuation."""
    n = _non_space(text)
    if not n:
        return 0.0
    if text.isascii():
        return len(text.encode("ascii").translate(None, _ASCII_OK)) / n
    # Deleting the ASCII non-symbols from the UTF-8 bytes keeps every other character whole (multi-byte
    # sequences have no ASCII bytes), so the regex only scans the few characters that can be symbols.
    return len(_SYMBOL_RE.findall(text.encode("utf-8").translate(None, _ASCII_OK).decode("utf-8"))) / n


def repeated_line_fraction(text: str) -> float:
    """Share of non-empty lines that repeat an earlier line."""
    lines = [ln.strip().lower() for ln in text.split("\n") if ln.strip()]
    return 1 - len(set(lines)) / len(lines) if len(lines) > 1 else 0.0


def _units(text: str) -> list[str]:
    return [u for u in _SENT_SPLIT_RE.split(text) if u.strip()]


def boilerplate_fraction(text: str, lower: str | None = None, anchored: bool | None = None) -> float:
    """Share of lines/sentences that contain a web-boilerplate pattern.

    `lower` (text.lower()) and `anchored` (from `boilerplate_anchored`), when the caller has them, save work.
    """
    text = text.lower() if lower is None else lower
    if anchored is None:
        anchored = any(a in text for a in _BOILERPLATE_ANCHORS) or text.lstrip().startswith("home")
    if not anchored or not _BOILERPLATE_RE.search(text):
        return 0.0  # the common case
    units = _units(text)
    return sum(1 for u in units if _BOILERPLATE_RE.search(u)) / len(units) if units else 0.0


def boilerplate_anchored(lowers: list[str]) -> list[bool]:
    """For each lower-cased text, whether it holds a boilerplate anchor, so the patterns could match at all.

    The texts are joined once and each anchor is searched through the join, skipping to the next text at a hit:
    ~5x cheaper than every text searched for every anchor. ("^\\s*home\\s*>" can only match a whole text at
    its start, hence the "home" check.)
    """
    joined = "\x00".join(lowers)  # no anchor contains NUL, so no hit spans two texts
    starts = list(itertools.accumulate((len(low) + 1 for low in lowers), initial=0))
    flags = [low.lstrip().startswith("home") for low in lowers]
    for a in _BOILERPLATE_ANCHORS:
        pos = joined.find(a)
        while pos >= 0:
            d = bisect.bisect_right(starts, pos) - 1
            flags[d] = True
            pos = joined.find(a, starts[d + 1])
    return flags


def mash_fraction(ws: list[str]) -> float:
    """Share of words (3+ letters) that no one could pronounce: no vowel, few vowels, or 5+ consonants in a row."""
    # one C-level sum over remembered per-word codes: (unpronounceable << 32) + judged
    total = sum(map(_MASH.__getitem__, ws))
    n, bad = total & 0xFFFFFFFF, total >> 32
    return bad / n if n else 0.0


class _MashCodes(dict):
    """word -> (1 << 32) + 1 if unpronounceable, 1 if pronounceable, 0 if not judged; bounded, filled on demand."""

    def __missing__(self, w: str) -> int:
        if len(self) >= 1 << 18:
            self.clear()
        c = _mash_class(w)
        v = self[w] = (1 << 32) + 1 if c == 1 else int(c == 0)
        return v


_MASH = _MashCodes()


def _mash_class(w: str) -> int:
    """1 unpronounceable, 0 pronounceable, 2 not judged (under 3 letters or not Latin: vowels are a Latin idea)."""
    if len(w) < 3 or not w.isascii():
        return 2
    v = len(_VOWEL_RE.findall(w))
    return int(v == 0 or v / len(w) < 0.2 or bool(_CONSONANT_RUN_RE.search(w)))


def char_entropy(text: str, lower: str | None = None) -> float:
    """Shannon entropy (bits) of the character distribution; English prose is about 4 bits."""
    lower = text.lower() if lower is None else lower
    if text.isascii():
        b = lower.encode("ascii").translate(None, _ASCII_SPACE)
        if not b:
            return 0.0
        p = np.bincount(np.frombuffer(b, np.uint8), minlength=128)
        p = p[p > 0] / len(b)
        return float(-(p * np.log2(p)).sum())
    chars = np.frombuffer("".join(lower.split()).encode("utf-32-le"), np.uint32)  # code points, no spaces
    if not len(chars):
        return 0.0
    p = np.unique(chars, return_counts=True)[1] / len(chars)
    return float(-(p * np.log2(p)).sum())


class HarmfulMatcher:
    """Counts harmful vocabulary: each phrase hit scores 1, each ambiguous word hit 0.5.

    Matching is on lower-cased word tokens (so "Pipe-bomb" and "pipe bomb" both hit), indexed by first
    word, which costs one set lookup per word instead of a regex alternation over the text.
    """

    def __init__(self, extra_terms: Iterable[str] = (), use_default: bool = True) -> None:
        phrases = (list(HARMFUL_PHRASES) if use_default else []) + list(extra_terms)
        self._by_first: dict[str, list[tuple[str, ...]]] = {}
        for term in phrases:
            toks = tuple(_HARM_TOKEN_RE.findall(term.lower()))
            if toks and toks not in self._by_first.get(toks[0], []):
                self._by_first.setdefault(toks[0], []).append(toks)
        self._words = frozenset(HARMFUL_WORDS) if use_default else frozenset()
        # A phrase can only match where its longest (rarest) word occurs: "make a bomb" needs "bomb", so the
        # common first words ("make", "get", "without") do not send most documents down the slow path.
        # (ties go to the later word: "make meth" is keyed by "meth", as "make" is in a fifth of all prose)
        self._keys = self._words | frozenset(max(reversed(p), key=len) for ps in self._by_first.values() for p in ps)
        self._alpha_keys = all(k.isalpha() for k in self._keys)

    def score(self, text: str, letter_words: list[str] | None = None, lower: str | None = None) -> float:
        """Harmful-vocabulary score; `letter_words` (`words(text)`, already computed) lets most texts skip a scan."""
        if letter_words is not None and self._alpha_keys and self._keys.isdisjoint(letter_words):
            return 0.0  # every key is letters only, so any hit would be among the text's letter runs
        toks = _HARM_TOKEN_RE.findall(text.lower() if lower is None else lower)
        if self._keys.isdisjoint(toks):  # the common case, in C
            return 0.0
        s = 0.0
        for i, t in enumerate(toks):
            if t in self._words:
                s += 0.5
            for phrase in self._by_first.get(t, ()):
                if tuple(toks[i:i + len(phrase)]) == phrase:
                    s += 1.0
        return s


def quality_score(text: str) -> float:
    """A 0-1 prose-likeness score (see module docstring); 1 for ordinary sentences, near 0 for noise."""
    return _quality(text, words(text))


def _quality(text: str, ws: list[str], n_stop: int | None = None, n_chars: int | None = None,
             n_letters: int | None = None) -> float:
    n_chars = _non_space(text) if n_chars is None else n_chars
    if not n_chars or not ws:
        return 0.0
    n_letters = sum(map(len, ws)) if n_letters is None else n_letters
    alpha = n_letters / n_chars
    stop = (sum(map(STOPWORDS.__contains__, ws)) if n_stop is None else n_stop) / len(ws)
    lines = [ln for ln in text.split("\n") if ln.strip()]
    line_words = [len(ln.split()) for ln in lines]
    ended = sum(n for ln, n in zip(lines, line_words) if ln.rstrip()[-1] in ".!?\"')") / max(1, sum(line_words))
    mean_len = n_letters / len(ws)
    length = 1.0 if 3 <= mean_len <= 8 else max(0.0, 1 - min(abs(mean_len - 3), abs(mean_len - 8)) / 3)
    distinct = len(set(ws)) / len(ws)
    parts = (min(1.0, max(0.0, (alpha - 0.5) / 0.3)), min(1.0, stop / 0.25), ended, length, min(1.0, distinct / 0.3))
    return sum(parts) / len(parts)


def reject_reason(text: str, cfg: CleanConfig, harmful: HarmfulMatcher, lower: str | None = None,
                  toks: list[str] | None = None, anchored: bool | None = None) -> tuple[str, str] | None:
    """Return (reason, detail) for the first filter a normalised text fails, or None to keep it.

    `lower` (text.lower()), `toks` (`tokens(lower)`) and `anchored` (`boilerplate_anchored`), when the caller
    has them, are reused rather than recomputed; the answer is the same either way.
    """
    if not text:
        return "empty", "no text after normalisation"
    n_toks = len(text.split(None, cfg.min_words))  # exact below min_words, which is all that is asked
    if n_toks < cfg.min_words:
        return "too_short", f"{n_toks} words < {cfg.min_words}"
    lower = text.lower() if lower is None else lower
    ws = letter_words(tokens(lower) if toks is None else toks)
    h = harmful.score(text, ws, lower)
    if h >= cfg.harmful_threshold:
        return "harmful", f"harmful vocabulary score {h:g}"
    if text.isascii():
        b = text.encode("ascii")
        n_chars = len(b.translate(None, _ASCII_SPACE))  # = _non_space(text)
        r = len(b.translate(None, _ASCII_OK)) / n_chars if n_chars else 0.0
    else:
        n_chars = _non_space(text)
        r = symbol_ratio(text)
    if r > cfg.max_symbol_ratio:
        return "symbols", f"symbol ratio {r:.2f}"
    n_letters = sum(map(len, ws))
    mean_len = n_letters / len(ws) if ws else 0.0
    if not cfg.min_mean_word_len <= mean_len <= cfg.max_mean_word_len:
        return "word_length", f"mean word length {mean_len:.1f}"
    r = repeated_line_fraction(text)
    if r > cfg.max_repeated_line_frac:
        return "repeated_lines", f"{r:.0%} repeated lines"
    r = boilerplate_fraction(text, lower, anchored)
    if r >= cfg.max_boilerplate_frac:
        return "boilerplate", f"{r:.0%} boilerplate sentences"
    r = mash_fraction(ws)
    if r > cfg.max_mash_frac:
        return "keyboard_mash", f"{r:.0%} unpronounceable words"
    if len(text) >= 100:
        e = char_entropy(text, lower)
        if e < cfg.min_char_entropy:
            return "low_entropy", f"character entropy {e:.2f} bits"
    n_stop = sum(map(STOPWORDS.__contains__, ws))
    if len(ws) >= 20 and n_stop < cfg.min_stopwords:
        return "no_stopwords", f"{n_stop} stopwords in {len(ws)} words"
    q = _quality(text, ws, n_stop, n_chars, n_letters)
    if q < cfg.min_quality:
        return "low_quality", f"quality {q:.2f}"
    return None
