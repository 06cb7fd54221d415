"""Detecting AI-written text: an n-gram classifier vs the watermark detector, and how each degrades.

* The classifier is logistic regression on word 1-2-grams and character 3-5-grams (TF-IDF), trained on world
  text vs the model's continuations of the same prefixes (the classic supervised detector, e.g. Solaiman et al.
  2019's baselines). It needs examples of the model's writing and nothing else.
* The watermark (Kirchenbauer et al. 2023, `genforge.infer.watermark`) needs the generator's cooperation and the
  key, and then no training at all: the detector's z-score is the score.

Both are scored by ROC AUC (human = 0, model = 1), before and after the attacker edits the model text: random
word *substitution* (a share of words replaced by words from human text) and a rule-based *paraphrase*
(synonyms and sentence order; a real paraphrasing model would be stronger, Krishna et al. 2023 "DIPPER").
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

import numpy as np

from genforge.extras import require
from genforge.infer.watermark import WatermarkConfig, detect
from genforge.tokenizer import Tokenizer

_SYNONYMS = {
    "said": "told us", "went": "walked", "big": "large", "small": "little", "happy": "glad", "old": "aged",
    "home": "back home", "very": "really", "often": "frequently", "every": "each", "town": "village",
    "river": "stream", "works": "labours", "lives": "resides", "friend": "companion", "day": "morning",
    "night": "evening", "asked": "wondered", "loves": "adores", "makes": "crafts", "found": "discovered",
}


def substitute_words(text: str, rate: float, vocabulary: Sequence[str], rng: random.Random) -> str:
    """Replace round(rate * words) random words with random words from `vocabulary`."""
    words = text.split()
    for i in rng.sample(range(len(words)), round(rate * len(words))) if words else ():
        words[i] = rng.choice(vocabulary)
    return " ".join(words)


def paraphrase(text: str, rng: random.Random) -> str:
    """Synonym swaps and a reversed sentence order: a cheap stand-in for a paraphrasing model."""
    sents = [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]
    if len(sents) > 1:
        sents = sents[::-1] if rng.random() < 0.5 else sents[1:] + sents[:1]
    out = " ".join(sents)
    return re.sub(r"\b\w+\b", lambda m: _SYNONYMS.get(m.group(0), m.group(0)), out)


def fit_classifier(texts: Sequence[str], labels: Sequence[int], seed: int = 0):
    """An sklearn pipeline: TF-IDF word 1-2-grams + char 3-5-grams -> logistic regression."""
    sk_pipe = require("sklearn.pipeline", "safety")
    feats = require("sklearn.feature_extraction.text", "safety")
    lin = require("sklearn.linear_model", "safety")
    union = sk_pipe.make_union(feats.TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True),
                               feats.TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), min_df=2,
                                                     sublinear_tf=True))
    clf = sk_pipe.make_pipeline(union, lin.LogisticRegression(C=4.0, max_iter=2000, random_state=seed))
    return clf.fit(list(texts), list(labels))


def classifier_scores(clf, texts: Sequence[str]) -> list[float]:
    return clf.predict_proba(list(texts))[:, 1].tolist()


def watermark_scores(tok: Tokenizer, texts: Sequence[str], cfg: WatermarkConfig | None = None) -> list[float]:
    """The detector's z-score of each text after re-tokenising it (the first token only seeds the first list)."""
    return [detect(tok.encode(t), tok.vocab_size, cfg)["z"] for t in texts]


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """P(score of a random positive > score of a random negative), ties counting half (the Mann-Whitney U)."""
    y, s = np.asarray(labels), np.asarray(scores, dtype=float)
    pos, neg = s[y == 1], s[y == 0]
    if not len(pos) or not len(neg):
        raise ValueError("roc_auc needs both classes")
    return float(((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum())
                 / (len(pos) * len(neg)))


def bootstrap_auc(labels: Sequence[int], scores: Sequence[float], n_resamples: int = 1000,
                  seed: int = 0) -> tuple[float, float, float, int]:
    """(AUC, low, high, n): percentile bootstrap over texts, resampling each class on its own."""
    y, s = np.asarray(labels), np.asarray(scores, dtype=float)
    rng = np.random.default_rng(seed)
    pos, neg = s[y == 1], s[y == 0]
    stats = []
    for _ in range(n_resamples):
        p, q = rng.choice(pos, len(pos)), rng.choice(neg, len(neg))
        stats.append(roc_auc([1] * len(p) + [0] * len(q), np.concatenate([p, q])))
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return roc_auc(labels, scores), float(lo), float(hi), len(s)
