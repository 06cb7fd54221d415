"""Scores: exact match (with answer extraction), ROUGE, BLEU, perplexity / bits-per-byte, and
multiple choice by log-likelihood (acc, acc_norm, option-order sensitivity).

ROUGE and BLEU are thin wrappers over `rouge-score` and `sacrebleu` (the reference
implementations papers report), never re-implemented here. Multiple choice follows
lm-evaluation-harness: each option is scored as a continuation of the question; `acc` takes the
option with the highest summed log-probability, `acc_norm` divides it by the option's length in
bytes so long options are not penalised for having more tokens. Repetition (distinct-n, loops in
greedy samples) is counted on whitespace words unless a tokenizer is passed.
"""

from __future__ import annotations

import functools
import math
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from genforge.errors import DataError
from genforge.extras import require

if TYPE_CHECKING:  # torch stays unimported until a model is used
    from genforge.eval.lm import LM

# ---- answer extraction and exact match ------------------------------------------------------------

_ANSWER_IS = re.compile(r"answer is\s*:?\s*(.+?)\s*(?:\.(?=\s|$)|\n|$)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = "".join(c for c in string.punctuation if c not in ".-:/")


def extract_answer(text: str) -> str:
    """The default answer extraction: the X of the last "The answer is X.", else the last number,
    else the last word. Chain-of-thought outputs end with that phrase by convention (Wei et al. 2022).
    """
    found = _ANSWER_IS.findall(text)
    if found:
        return found[-1].strip()
    numbers = _NUMBER.findall(text)
    if numbers:
        return numbers[-1]
    words = text.split()
    return words[-1].strip(string.punctuation) if words else ""


def normalize_answer(s: str) -> str:
    """Lowercase, drop articles and most punctuation, unify numbers ("1,000.0" -> "1000").

    Like SQuAD's normaliser, but '.', '-', ':' and '/' survive inside tokens so decimals, negative
    numbers, times and dates keep their meaning.
    """
    s = s.lower().strip()
    s = re.sub(r"(?<=\d),(?=\d{3})", "", s)  # thousands separators
    s = s.translate(str.maketrans(_PUNCT, " " * len(_PUNCT)))
    s = _ARTICLES.sub(" ", s)
    s = " ".join(tok.strip(".:") for tok in s.split())
    s = " ".join(s.split())
    try:
        x = float(s)
        if math.isfinite(x):
            return str(int(x)) if x.is_integer() else repr(x)
    except ValueError:
        pass
    return s


def exact_match(prediction: str, reference: str, extract: Callable[[str], str] | None = extract_answer) -> float:
    """1.0 if the (extracted, normalised) prediction equals the normalised reference."""
    pred = extract(prediction) if extract is not None else prediction
    return float(normalize_answer(pred) == normalize_answer(reference))


# ---- overlap metrics (library wrappers) ----------------------------------------------------------

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge_scores(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F1 of one prediction (rouge-score, Porter stemming as in the original ROUGE)."""
    scores = _rouge_scorer().score(reference, prediction)
    return {k: scores[k].fmeasure for k in ROUGE_TYPES}


@functools.cache
def _rouge_scorer():
    rouge_scorer = require("rouge_score.rouge_scorer", "eval")  # imported late: it pulls in nltk

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 over pairs."""
    _check_pairs(predictions, references)
    per = [rouge_scores(p, r) for p, r in zip(predictions, references)]
    return {k: sum(s[k] for s in per) / len(per) for k in ROUGE_TYPES}


def sentence_bleu(prediction: str, reference: str) -> float:
    """sacrebleu's smoothed sentence BLEU (0-100), for per-item records."""
    sacrebleu = require("sacrebleu", "eval")

    return float(sacrebleu.sentence_bleu(prediction, [reference]).score)


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0-100) with sacrebleu's defaults (13a tokenisation, one reference per item)."""
    sacrebleu = require("sacrebleu", "eval")

    _check_pairs(predictions, references)
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")


# ---- perplexity -------------------------------------------------------------------------------------

def perplexity(lm: LM, text: str) -> dict[str, float]:
    """Per-token perplexity and bits per byte of a text under the model (needs `loglikelihood_rolling`).

    Bits per byte (-log2 P(text) / bytes) compares models with different tokenizers; perplexity
    does not, because it depends on how many tokens the text was cut into.
    """
    logprob, n_tokens = lm.loglikelihood_rolling([text])[0]
    n_bytes = len(text.encode("utf-8"))
    nll = -logprob
    return {"perplexity": math.exp(nll / max(n_tokens, 1)), "nll_per_token": nll / max(n_tokens, 1),
            "bits_per_byte": nll / math.log(2) / max(n_bytes, 1), "n_tokens": n_tokens, "n_bytes": n_bytes}


def perplexity_file(lm: LM, path: str | Path) -> dict[str, float]:
    """`perplexity` of a UTF-8 text file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read text ({e})") from None
    if not text.strip():
        raise DataError(f"{path}: file is empty; nothing to score")
    return perplexity(lm, text)


# ---- multiple choice ----------------------------------------------------------------------------------

@dataclass
class MCItem:
    """A question, its options and the index of the right one."""

    context: str
    options: list[str]
    gold: int
    extra: dict = field(default_factory=dict)


@dataclass
class MCScore:
    pred: int  # argmax of summed log-likelihood
    pred_norm: int  # argmax of log-likelihood per byte of the option
    logprobs: list[float]

    def as_dict(self, gold: int) -> dict:
        return {"pred": self.pred, "pred_norm": self.pred_norm, "gold": gold, "logprobs": self.logprobs,
                "acc": float(self.pred == gold), "acc_norm": float(self.pred_norm == gold)}


def _argmax(xs: Sequence[float]) -> int:
    return max(range(len(xs)), key=lambda i: xs[i])  # first index on ties, like numpy


def score_options(lm: LM, items: Sequence[MCItem], delimiter: str = " ") -> list[MCScore]:
    """Score every option of every item as `delimiter + option` after the item's context.

    All (context, option) pairs go to the model in one `loglikelihood` call so it can batch them.
    """
    pairs = [(it.context, delimiter + opt) for it in items for opt in it.options]
    results = lm.loglikelihood(pairs)
    out, k = [], 0
    for it in items:
        lps = [results[k + j][0] for j in range(len(it.options))]
        k += len(it.options)
        norm = [lp / max(len(opt.encode("utf-8")), 1) for lp, opt in zip(lps, it.options)]
        out.append(MCScore(_argmax(lps), _argmax(norm), lps))
    return out


def multiple_choice(lm: LM, items: Sequence[MCItem], delimiter: str = " ") -> dict:
    """acc and acc_norm over items, plus per-item records."""
    scores = score_options(lm, items, delimiter)
    per = [s.as_dict(it.gold) for s, it in zip(scores, items)]
    n = max(len(per), 1)
    return {"acc": sum(p["acc"] for p in per) / n, "acc_norm": sum(p["acc_norm"] for p in per) / n,
            "n": len(per), "items": per}


LETTERS = "ABCDEFGHIJ"


def letter_prompt(question: str, options: Sequence[str]) -> str:
    """The letter-answer formulation: options listed as "A. ...", answered by a letter."""
    lines = [question.rstrip()] + [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]
    return "\n".join(lines) + "\nAnswer:"


def option_order_test(lm: LM, items: Sequence[MCItem], delimiter: str = " ") -> dict:
    """How often the chosen *content* changes when the options are cyclically rotated.

    Each item is asked in the letter formulation under every rotation of its options (so each
    option appears once in each position) and answered by the most likely letter. `flip_rate` is the
    fraction of rotated askings whose chosen option differs from the original order's choice;
    `consistency` the fraction of items answered identically under all rotations. A model that
    reads the options has flip_rate 0; one that always says "A" has flip_rate 1.
    Position preference (Zheng et al. 2023 report it for LLM judges; Pezeshkpour & Hruschka 2023
    for multiple choice) shows in `letter_rate`, the share of answers per letter.
    """
    asks: list[MCItem] = []
    perms: list[list[int]] = []
    for it in items:
        k = len(it.options)
        for r in range(k):
            perm = [(j + r) % k for j in range(k)]  # position j shows original option perm[j]
            opts = [it.options[p] for p in perm]
            asks.append(MCItem(letter_prompt(it.context, opts), list(LETTERS[:k]), perm.index(it.gold)))
            perms.append(perm)
    scores = score_options(lm, asks, delimiter)
    flips, consistent, correct, letters, i = 0, 0, 0, {}, 0
    for it in items:
        k = len(it.options)
        chosen = [perms[i + r][scores[i + r].pred] for r in range(k)]  # original option index per rotation
        for r in range(k):
            letter = LETTERS[scores[i + r].pred]
            letters[letter] = letters.get(letter, 0) + 1
        flips += sum(c != chosen[0] for c in chosen[1:])
        consistent += len(set(chosen)) == 1
        correct += sum(c == it.gold for c in chosen)
        i += k
    n_asks = max(len(asks), 1)
    n_rotated = max(len(asks) - len(items), 1)
    return {"flip_rate": flips / n_rotated, "consistency": consistent / max(len(items), 1),
            "acc_letter": correct / n_asks, "letter_rate": {k: v / n_asks for k, v in sorted(letters.items())},
            "n": len(items)}


# ---- repetition: distinct-n and loops in greedy samples ---------------------------------------------


def _words(text: str) -> list[str]:
    return text.split()


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The n-grams of a token list, in order (none when it is shorter than n)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: str | Sequence[str], n: int = 4, tokenize: Callable[[str], list[str]] = _words) -> float:
    """Unique n-grams / total n-grams over all texts (distinct-n, Li et al. 2016), words by default.

    Pooled over the texts as in the paper, so it falls both when one sample loops and when every sample
    says the same thing. 1.0 means no n-gram occurs twice; with no n-grams at all (texts shorter than
    n) nothing repeats, so it is 1.0 too.
    """
    grams = [g for t in ([texts] if isinstance(texts, str) else texts) for g in ngrams(tokenize(t), n)]
    return len(set(grams)) / len(grams) if grams else 1.0


def repeated_ngram_share(text: str, n: int = 4, tokenize: Callable[[str], list[str]] = _words) -> float:
    """Share of a text's n-gram occurrences that repeat an n-gram seen earlier in the same text."""
    grams = ngrams(tokenize(text), n)
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


@dataclass
class Loop:
    """A text's tail that repeats one unit: `repeats` copies (fractional: a cut-off last copy) of `unit`."""

    unit: str
    period: int  # tokens per copy
    start: int  # token index where the repeating tail starts
    repeats: float


def find_loop(text: str, min_repeats: int = 2, min_tokens: int = 8,
              tokenize: Callable[[str], list[str]] = _words) -> Loop | None:
    """The repeating tail of a (greedy) sample, or None.

    Greedy decoding that repeats itself cannot escape (the same context gives the same next token), so
    a loop shows as a tail where token i equals token i - period. Reported when the tail holds at least
    `min_repeats` full copies and `min_tokens` tokens (so "very very" is not a loop); the last copy may be
    cut off by the token budget. The longest tail wins, then the shortest period.
    """
    toks = tokenize(text)
    best: Loop | None = None
    for p in range(1, len(toks) // 2 + 1):
        i = len(toks) - 1
        while i >= p and toks[i] == toks[i - p]:
            i -= 1
        start = i + 1 - p  # toks[start:] has period p
        span = len(toks) - start
        if span >= min_repeats * p and span >= min_tokens and (best is None or start < best.start):
            best = Loop(" ".join(toks[start:start + p]), p, start, span / p)
    return best


def loop_rate(texts: Sequence[str], **kwargs) -> float:
    """Share of texts whose tail loops (see `find_loop`)."""
    return sum(find_loop(t, **kwargs) is not None for t in texts) / len(texts) if texts else 0.0
