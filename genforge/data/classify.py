"""Learned filters: a quality (junk) classifier and a harmful-content classifier on hashed n-grams.

Each is a logistic regression over `HashingVectorizer` features (no vocabulary to store, so the model
is a weight vector and the features need no fitting pass): word n-grams (unigrams by default), with punctuation and
symbols kept as tokens (so symbol soup has features of its own). Character 3-grams would see keyboard
mash directly, but they cost ~4x the time and gained nothing on the world's labels. This is the
fastText/CCNet-style "linear model on n-grams" quality filter (Joulin et al. 2017; Wenzek et al. 2020)
in its scikit-learn form.

Labels come as JSONL rows `{"id"?, "text"?, "label"}` with labels in the world's vocabulary:
``clean`` (negative for both), ``junk`` (positive for quality), ``harmful`` (positive for harm);
``exact_dup``/``near_dup`` rows are copies of clean text and are ignored. Rows without ``text`` are
looked up by ``id`` in a corpus (the tiny world's `corpus_labels.jsonl` names its `corpus.jsonl` ids).
A deterministic hash of the text holds out `holdout` of the rows; every number in the training report
is measured on those held-out rows only, next to the heuristic filter or blocklist the model complements.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import pickle
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from genforge.errors import ConfigError, DataError
from genforge.extras import require
from genforge.io import atomic_path, read_jsonl, write_json

POSITIVE = {"quality": "junk", "harm": "harmful"}
IGNORED_LABELS = {"exact_dup", "near_dup"}
# The world's safety plants (world/canaries.py, world/bias.py) are ordinary text a filter must keep: clean here.
CLEAN_ALIASES = {"canary", "bias"}
KNOWN_LABELS = {"clean", "junk", "harmful"} | IGNORED_LABELS | CLEAN_ALIASES


@dataclass
class ClassifierConfig:
    """How the two learned filters are trained."""

    n_features: int = 2**18
    """Hashed feature buckets per vectorizer (collisions cost a little accuracy, not memory per word)."""
    ngrams: int = 1
    """Longest word n-gram (2 adds bigrams: about half the speed, no gain on the world's labels)."""
    C: float = 4.0
    """Inverse L2 strength of the logistic regression."""
    holdout: float = 0.25
    """Share of labelled rows held out for the precision/recall report (by a hash of the text)."""
    seed: int = 0
    """Seed of the solver (liblinear is deterministic given it)."""


def _vectorizer(n_features: int, ngrams: int):
    sk = require("sklearn.feature_extraction.text", "data")
    return sk.HashingVectorizer(n_features=n_features, ngram_range=(1, ngrams), alternate_sign=False,
                                token_pattern=r"(?u)\w+|[^\w\s]", lowercase=True, norm="l2")


def featurize(texts: Sequence[str], cfg: ClassifierConfig):
    """Sparse (n_texts, n_features) hashed n-gram matrix; both classifiers share one (computed once per batch)."""
    return _vectorizer(cfg.n_features, cfg.ngrams).transform(texts)


def column_of(token: str, n_features: int) -> int:
    """A token's HashingVectorizer column: `abs(murmurhash3_32(utf8, seed 0)) % n_features`, as sklearn's
    _hashing_fast.transform computes it (including its definition of abs(-2**31) % n)."""
    h = _murmur()(token.encode("utf-8"), seed=0)
    return (2147483647 - (n_features - 1)) % n_features if h == -2**31 else abs(h) % n_features


@functools.lru_cache(maxsize=1)
def _murmur():
    return require("sklearn.utils", "data").murmurhash3_32


class _BucketCache(dict):
    """token -> its HashingVectorizer column (`column_of`), remembered: words repeat, and one dict lookup beats
    sklearn's per-token generator, encode and hash (~5x)."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.n_features = n_features
        _murmur()  # a clear error now if scikit-learn is missing

    def __missing__(self, token: str) -> int:
        if len(self) >= 1 << 18:  # bounded: ~40 MB a worker on any corpus
            self.clear()
        v = self[token] = column_of(token, self.n_features)
        return v


_BUCKETS: dict[int, _BucketCache] = {}


def featurize_tokens(token_lists: Sequence[list[str]], cfg: ClassifierConfig):
    """`featurize` of texts already split by `clean.tokens(text.lower())` (the vectorizer's own lower-casing and
    token pattern): the same matrix, without a second regex pass. Unigram models only (cfg.ngrams == 1).

    The columns come from a token -> column cache; the matrix is then built as HashingVectorizer builds it
    (int32 indices, float64 ones, `sum_duplicates`, the same `normalize`), so it is equal entry for entry."""
    if cfg.ngrams != 1:
        raise ValueError("featurize_tokens supports unigram models only; use featurize")

    cache = _BUCKETS.get(cfg.n_features)
    if cache is None:
        cache = _BUCKETS[cfg.n_features] = _BucketCache(cfg.n_features)
    lens = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
    indices = np.fromiter(map(cache.__getitem__, itertools.chain.from_iterable(token_lists)), dtype=np.int32,
                          count=int(lens.sum()))
    return features_from_columns(indices, lens, cfg)


def features_from_columns(indices: np.ndarray, lens: np.ndarray, cfg: ClassifierConfig):
    """The `featurize` matrix from every token's column (`indices`, int32, documents one after another, each in
    token order) and the tokens per document (`lens`, shape (n_docs,)): built as HashingVectorizer builds it
    (int32 indices, float64 ones, `sum_duplicates`, the same `normalize`), so it is equal entry for entry."""
    sp = require("scipy.sparse", "data")
    normalize = require("sklearn.preprocessing", "data").normalize
    n = int(lens.sum())
    indptr = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=indptr[1:])
    indices = np.asarray(indices, dtype=np.int32)
    if n <= np.iinfo(np.int32).max:
        indptr = indptr.astype(np.int32)
    else:
        indices = indices.astype(np.int64)
    X = sp.csr_array((np.ones(n, dtype=np.float64), indices, indptr), dtype=np.float64,
                     shape=(len(lens), cfg.n_features))
    X.sum_duplicates()  # also sorts the indices
    return normalize(X, norm="l2", copy=False)


class TextClassifier:
    """P(positive | text) from a logistic regression on hashed word n-grams (punctuation and symbols as tokens)."""

    def __init__(self, name: str, threshold: float = 0.5, cfg: ClassifierConfig | None = None) -> None:
        self.name, self.threshold, self.cfg = name, threshold, cfg or ClassifierConfig()
        self.model = None

    def features(self, texts: Sequence[str]):
        """Sparse (n_texts, n_features) matrix."""
        return featurize(texts, self.cfg)

    def fit(self, texts: Sequence[str], y: Sequence[int]) -> TextClassifier:
        lm = require("sklearn.linear_model", "data")
        y = np.asarray(y, dtype=np.int64)
        if len(set(y.tolist())) < 2:
            raise DataError(f"{self.name} classifier: the labelled data has only one class "
                            f"({'positive' if y.any() else 'negative'}); add both {POSITIVE[self.name]!r} "
                            "and 'clean' rows")
        # balanced weights: planted positives are a few % of the corpus, and a missed junk page costs
        # about as much as a dropped clean one
        self.model = lm.LogisticRegression(C=self.cfg.C, class_weight="balanced", solver="liblinear",
                                           random_state=self.cfg.seed, max_iter=1000)
        self.model.fit(self.features(texts), y)
        return self

    def proba(self, texts: Sequence[str], features=None) -> np.ndarray:
        """P(positive) per text, shape (n_texts,); pass `features` (from `featurize`) to reuse them."""
        if not len(texts):
            return np.zeros(0)
        return self.model.predict_proba(self.features(texts) if features is None else features)[:, 1]

    def flags(self, texts: Sequence[str]) -> np.ndarray:
        """Boolean (n_texts,): P(positive) >= threshold."""
        return self.proba(texts) >= self.threshold

    def save(self, path: str | os.PathLike) -> None:
        # pickle of scikit-learn objects: load only models you made (the file sits beside your own output)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            pickle.dump({"name": self.name, "threshold": self.threshold, "cfg": asdict(self.cfg),
                         "model": self.model}, f)

    @classmethod
    def load(cls, path: str | os.PathLike, threshold: float | None = None) -> TextClassifier:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: classifier file not found (train one with classifier=world or a labels file)")
        try:
            with open(p, "rb") as f:
                d = pickle.load(f)
            obj = cls(d["name"], d["threshold"] if threshold is None else threshold, ClassifierConfig(**d["cfg"]))
            obj.model = d["model"]
        except Exception as e:  # a truncated or foreign file
            raise ConfigError(f"{p}: not a genforge classifier file ({type(e).__name__}: {e})") from None
        return obj


def is_holdout(text: str, holdout: float) -> bool:
    """Deterministic held-out membership by a hash of the text (a copy of a text lands on the same side)."""
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8, person=b"gf-holdout").digest(), "little")
    return (h % 10_000) < holdout * 10_000


def load_labelled(labels_path: str | os.PathLike, corpus: Iterable | None = None) -> list[tuple[str, str]]:
    """(text, label) rows from a labels JSONL; rows without "text" take it from `corpus` (Doc objects) by id."""
    rows, need = [], {}
    for lineno, row in read_jsonl(labels_path, required=("label",)):
        label = row["label"]
        if label not in KNOWN_LABELS:
            raise DataError(f"{labels_path}:{lineno}: label {label!r} is not one of clean, junk, harmful "
                            "(exact_dup/near_dup are ignored; canary/bias count as clean)")
        if label in IGNORED_LABELS:
            continue
        label = "clean" if label in CLEAN_ALIASES else label
        if isinstance(row.get("text"), str):
            rows.append((row["text"], label))
        elif "id" in row:
            need[str(row["id"])] = (len(rows), lineno)
            rows.append(("", label))
        else:
            raise DataError(f'{labels_path}:{lineno}: a labelled row needs "text" or an "id" found in the corpus')
    if need:
        if corpus is None:
            raise DataError(f"{labels_path}: rows name ids but no corpus was given to look their text up in")
        for doc in corpus:
            hit = need.pop(doc.id, None)
            if hit is not None:
                rows[hit[0]] = (doc.text, rows[hit[0]][1])
            if not need:
                break
        if need:
            did, (_, lineno) = next(iter(need.items()))
            raise DataError(f"{labels_path}:{lineno}: id {did!r} is not in the corpus ({len(need)} ids missing)")
    return rows


def prf(pred: Sequence[bool], truth: Sequence[bool]) -> dict:
    """Precision, recall, F1 and counts of a binary detector."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    tp, fp, fn = int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "tp": tp, "fp": fp, "fn": fn, "n": int(len(pred))}


def train_filters(rows: list[tuple[str, str]], cfg: ClassifierConfig, thresholds: dict[str, float],
                  baselines: dict[str, Callable[[str], bool]], normalize: Callable[[str], str]
                  ) -> tuple[dict[str, TextClassifier], dict]:
    """Train the quality and harm classifiers on the non-held-out rows; score them and their baselines on the rest.

    `baselines[name](text) -> bool` is the heuristic the model complements ("quality": any junk heuristic
    fires; "harm": the blocklist fires). Returns the models and a JSON-friendly training report whose
    `heldout` section also keeps per-document outcomes (for bootstrap intervals).
    """
    texts = [normalize(t) for t, _ in rows]
    labels = [lab for _, lab in rows]
    held = np.array([is_holdout(t, cfg.holdout) for t in texts], bool)
    if held.all() or not held.any():
        raise DataError(f"{len(rows)} labelled rows are too few to hold out {cfg.holdout:.0%} for evaluation")
    models, report = {}, {"config": asdict(cfg), "n_rows": len(rows), "n_train": int((~held).sum()),
                          "n_heldout": int(held.sum()), "filters": {}}
    for name, pos in POSITIVE.items():
        # quality: clean vs junk (harmful prose is the other model's job); harm: harmful vs everything else
        use = [lab == "clean" or lab == pos or name == "harm" for lab in labels]
        tr = [i for i in range(len(texts)) if use[i] and not held[i]]
        te = [i for i in range(len(texts)) if use[i] and held[i]]
        clf = TextClassifier(name, thresholds[name], cfg).fit([texts[i] for i in tr], [labels[i] == pos for i in tr])
        truth = [labels[i] == pos for i in te]
        pred = clf.flags([texts[i] for i in te]).tolist()
        base = [bool(baselines[name](texts[i])) for i in te]
        models[name] = clf
        report["filters"][name] = {
            "positive_label": pos, "threshold": clf.threshold, "n_train": len(tr), "n_heldout": len(te),
            "n_heldout_positive": int(sum(truth)),
            "classifier": prf(pred, truth), "baseline": prf(base, truth),
            "outcomes": {"truth": truth, "classifier": pred, "baseline": base},
        }
    return models, report


def save_filters(models: dict[str, TextClassifier], report: dict, folder: str | os.PathLike) -> None:
    """`quality.pkl`, `harm.pkl`, `training_report.json` and `heldout_outcomes.json` (per document, for intervals)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, clf in models.items():
        clf.save(folder / f"{name}.pkl")
    slim = json.loads(json.dumps(report))
    outcomes = {name: f.pop("outcomes", None) for name, f in slim["filters"].items()}
    write_json(folder / "training_report.json", slim)
    write_json(folder / "heldout_outcomes.json", outcomes)
