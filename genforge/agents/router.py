"""Routing between specialist models, and two models critiquing each other.

Router: a logistic-regression classifier over prompt features (hashed word and character n-grams, or
any embeddings the caller passes) trained to predict which specialist answered each training prompt
best (ties go to the cheaper one; prompts on which all models tie are left out of training).
Compared on held-out prompts against every specialist alone and an oracle router that always picks
the best model for the item (the ceiling), by accuracy and mean cost.

Collaboration: `critique_rounds` lets model A answer, model B critique and answer, A revise, for N
rounds (in the spirit of Du et al. 2023, "Improving factuality and reasoning through multiagent debate").

scikit-learn is the `agents` extra: `pip install genforge[agents]`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from genforge.agents.llm import TextModel
from genforge.errors import ConfigError
from genforge.eval.stats import bootstrap_mean


def _sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError as e:
        raise ConfigError("the router needs scikit-learn: pip install 'genforge[agents]'") from e


def hashed_features(prompts: Sequence[str], n_features: int = 1 << 14) -> np.ndarray:
    """Word 1-2-grams and character 3-5-grams hashed into `n_features` columns, L2-normalised. [n, F]"""
    _sklearn()
    from sklearn.feature_extraction.text import HashingVectorizer
    words = HashingVectorizer(n_features=n_features, ngram_range=(1, 2), alternate_sign=False)
    chars = HashingVectorizer(n_features=n_features, analyzer="char_wb", ngram_range=(3, 5), alternate_sign=False)
    x = np.hstack([words.transform(prompts).toarray(), chars.transform(prompts).toarray()])
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def item_costs(costs: Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    """Costs per item and model [n, m] from per-model costs [m] (the same for every item) or per-item ones."""
    c = np.asarray(costs, dtype=float)
    return np.broadcast_to(c, (n, c.shape[-1])) if c.ndim == 1 else c


def best_labels(scores: np.ndarray, costs: Sequence[float] | np.ndarray) -> np.ndarray:
    """Index of the best model per item [n]; among equal scores the cheapest wins.

    costs: per model [m], or per item and model [n, m] (e.g. the tokens each model spent on each item)."""
    scores = np.asarray(scores, dtype=float)
    c = item_costs(costs, len(scores))
    order = np.argsort(c, axis=1, kind="stable")  # [n, m] cheapest first, per item
    best = np.argmax(np.take_along_axis(scores, order, axis=1), axis=1)
    return order[np.arange(len(scores)), best]


@dataclass
class Router:
    """Which of `names` should answer a prompt."""

    names: list[str]
    costs: list[float]
    c: float = 1.0  # inverse regularisation of the logistic regression
    seed: int = 0

    def fit(self, features: np.ndarray, scores: np.ndarray) -> Router:
        """features [n, F]; scores [n, m]: each model's score (e.g. 1 = correct) on each training prompt."""
        _sklearn()
        from sklearn.linear_model import LogisticRegression
        if scores.shape[1] != len(self.names):
            raise ConfigError(f"Router.fit: scores have {scores.shape[1]} columns for {len(self.names)} models")
        # Items where every model scores the same say nothing about which to pick (both right, both
        # wrong); training on them only teaches "pick the cheapest" as label noise. Keep the rest.
        informative = scores.max(axis=1) > scores.min(axis=1)
        if informative.any():
            features, scores = features[informative], scores[informative]
        y = best_labels(scores, self.costs)
        self.constant = int(y[0]) if len(set(y.tolist())) == 1 else None
        if self.constant is None:
            self.clf = LogisticRegression(C=self.c, max_iter=2000, random_state=self.seed).fit(features, y)
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        if self.constant is not None:
            return np.full(len(features), self.constant)
        return self.clf.predict(features)


def compare(scores: np.ndarray, costs: Sequence[float] | np.ndarray, names: Sequence[str], chosen: np.ndarray,
            seed: int = 0) -> list[dict]:
    """Rows {system, accuracy, ci, cost, per_item} for the router's choices, each specialist alone and the oracle.

    costs: per model [m] or per item and model [n, m]; a system's cost is the mean cost of what it picked."""
    scores = np.asarray(scores, dtype=float)
    n = len(scores)
    cost = item_costs(costs, n)
    systems = {"router": np.asarray(chosen)}
    systems.update({f"only {m}": np.full(n, j) for j, m in enumerate(names)})
    systems["oracle"] = best_labels(scores, costs)
    rows = []
    for name, pick in systems.items():
        per_item = scores[np.arange(n), pick].tolist()
        ci = bootstrap_mean(per_item, seed=seed)
        acc, lo, hi = ci.estimate, ci.low, ci.high
        rows.append({"system": name, "accuracy": acc, "ci": (lo, hi), "cost": float(np.mean(cost[np.arange(n), pick])),
                     "per_item": per_item})
    return rows


def critique_rounds(a: TextModel, b: TextModel, question: str, rounds: int = 2,
                    extract: Callable[[str], str] = lambda t: t.strip(), max_new_tokens: int = 96) -> dict:
    """A answers; then per round B critiques A's latest answer and gives its own, and A revises.

    Returns {"answer": A's final answer (extracted), "first": A's first answer (extracted),
    "transcript": [(speaker, text), ...]}.
    """
    return critique_many(a, b, [question], rounds, extract, max_new_tokens)[0]


def critique_many(a: TextModel, b: TextModel, questions: Sequence[str], rounds: int = 2,
                  extract: Callable[[str], str] = lambda t: t.strip(), max_new_tokens: int = 96) -> list[dict]:
    """`critique_rounds` for many questions, each turn one batched `generate` over all of them."""
    gen = {"max_new_tokens": max_new_tokens, "temperature": 0.0, "stop": ("\nQuestion:",)}
    firsts = a.generate([f"Question: {q}\nAnswer:" for q in questions], **gen)
    transcripts = [[("A", f.strip())] for f in firsts]
    for _ in range(rounds):
        crits = b.generate([f"Question: {q}\nProposed answer: {t[-1][1]}\n"
                            "Critique the proposed answer, then give your own.\nCritique:"
                            for q, t in zip(questions, transcripts)], **gen)
        for t, c in zip(transcripts, crits):
            t.append(("B", c.strip()))
        revs = a.generate([f"Question: {q}\nYour answer: {t[-2][1]}\nA critic says: {t[-1][1]}\n"
                           "Give your final answer.\nAnswer:" for q, t in zip(questions, transcripts)], **gen)
        for t, r in zip(transcripts, revs):
            t.append(("A", r.strip()))
    return [{"answer": extract(t[-1][1]), "first": extract(t[0][1]), "transcript": t} for t in transcripts]
