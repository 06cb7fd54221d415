"""Contamination check: do eval items appear in the training corpus?

Word n-gram overlap, as in GPT-3 (Brown et al. 2020, appendix C: 13-grams of normalised words).
Each eval item's n-grams are looked up in an index of the corpus's n-grams; an item is flagged
when any of them matches (or a share above `min_overlap`), and listed with its overlap ratio
(matched / total n-grams). Items shorter than n words cannot form an n-gram; they are flagged
only if their whole word sequence occurs verbatim in the corpus.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from genforge.errors import DataError
from genforge.io import read_jsonl

_WORD = re.compile(r"\w+")
CORPUS_FIELDS = ("text", "prompt", "response", "content")


def words(text: str) -> list[str]:
    """Lowercased word tokens with punctuation dropped (so formatting differences don't hide overlap)."""
    return _WORD.findall(text.lower())


def ngrams(ws: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]


def read_corpus(path: str | Path, fields: Sequence[str] = CORPUS_FIELDS) -> Iterator[str]:
    """Documents of a .jsonl (the string values of `fields` joined) or a .txt file (the whole file)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        for lineno, obj in read_jsonl(path):
            parts = [obj[f] for f in fields if isinstance(obj.get(f), str)]
            if not parts:
                raise DataError(f"{path}:{lineno}: no text field; expected one of {', '.join(fields)}")
            yield "\n".join(parts)
    elif path.is_file():
        yield path.read_text(encoding="utf-8")
    else:
        raise DataError(f"{path}: corpus file not found (give a .jsonl or .txt file)")


class NgramIndex:
    """The set of word n-grams of a corpus (plus its word stream, for items shorter than n)."""

    def __init__(self, n: int = 13):
        if n < 1:
            raise ValueError(f"n-gram size must be >= 1, got {n}")
        self.n = n
        self.grams: set[tuple[str, ...]] = set()
        self._docs: list[str] = []
        self.n_docs = 0

    def add(self, text: str) -> None:
        ws = words(text)
        self.grams.update(ngrams(ws, self.n))
        self._docs.append(" " + " ".join(ws) + " ")
        self.n_docs += 1

    @classmethod
    def from_texts(cls, texts: Iterable[str], n: int = 13) -> NgramIndex:
        idx = cls(n)
        for t in texts:
            idx.add(t)
        return idx

    @classmethod
    def from_files(cls, paths: Sequence[str | Path], n: int = 13, fields: Sequence[str] = CORPUS_FIELDS) -> NgramIndex:
        idx = cls(n)
        for p in paths:
            for doc in read_corpus(p, fields):
                idx.add(doc)
        return idx

    def overlap(self, text: str) -> tuple[int, int]:
        """(matched, total) n-grams of text; a text shorter than n counts as one 'n-gram' of itself."""
        ws = words(text)
        if not ws:
            return 0, 0
        if len(ws) < self.n:
            needle = " " + " ".join(ws) + " "
            return int(any(needle in d for d in self._docs)), 1
        grams = ngrams(ws, self.n)
        return sum(g in self.grams for g in grams), len(grams)


def item_text(item: dict | str, fields: Sequence[str] = ("prompt", "response")) -> str:
    if isinstance(item, str):
        return item
    return "\n".join(str(item[f]) for f in fields if f in item)


def check_contamination(items: Sequence[dict | str], index: NgramIndex, *,
                        fields: Sequence[str] = ("prompt", "response"), min_overlap: float = 0.0) -> dict:
    """Flag eval items whose n-grams appear in the corpus index.

    An item is flagged when at least one n-gram matches and matched/total >= min_overlap.
    Returns counts, the contamination rate, per-task counts and the flagged items (most overlap first).
    """
    flagged, per_task = [], {}
    for i, item in enumerate(items):
        matched, total = index.overlap(item_text(item, fields))
        ratio = matched / total if total else 0.0
        task = item.get("task", "") if isinstance(item, dict) else ""
        t = per_task.setdefault(task, {"n": 0, "flagged": 0})
        t["n"] += 1
        if matched and ratio >= min_overlap:
            t["flagged"] += 1
            text = item_text(item, fields)
            flagged.append({"index": i, "task": task, "overlap": ratio, "matched": matched, "total": total,
                            "text": text[:200]})
    flagged.sort(key=lambda f: -f["overlap"])
    return {"n": index.n, "n_items": len(items), "n_flagged": len(flagged),
            "rate": len(flagged) / len(items) if items else 0.0, "per_task": per_task, "flagged": flagged}
