"""Lexical retrieval with BM25 (Robertson & Zaragoza 2009) via `bm25s` (Lù 2024, sparse-matrix scoring).

We tokenize ourselves (lower-cased `\\w+` words minus English stopwords) so that the index and the
queries share one tokenizer and ids stay ours; bm25s does the scoring. Saved as a folder: bm25s'
files plus `rows.jsonl` (ids, texts, metas), written into a temp folder and swapped in atomically.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from genforge.errors import DataError
from genforge.extras import require
from genforge.io import atomic_dir
from genforge.rag.store import Hit, StoreError

_WORD = re.compile(r"\w+", re.UNICODE)


def tokenize(text: str, stopwords: frozenset[str] = frozenset()) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in stopwords]


class BM25Index:
    """BM25 over a fixed list of texts (k1=1.5, b=0.75: the bm25s/Lucene defaults)."""

    def __init__(self, k1: float = 1.5, b: float = 0.75):
        self.bm25s = require("bm25s", "rag")
        from bm25s.stopwords import STOPWORDS_EN
        self.stop = frozenset(STOPWORDS_EN)
        self.k1, self.b = k1, b
        self.ids: list[str] = []
        self.texts: list[str] = []
        self.metas: list[dict] = []
        self.model = None

    def build(self, ids: list[str], texts: list[str], metas: list[dict] | None = None) -> BM25Index:
        if not ids:
            raise DataError("BM25 index: no texts to index; load non-empty documents first")
        self.ids, self.texts, self.metas = list(ids), list(texts), list(metas or [{} for _ in ids])
        self.model = self.bm25s.BM25(k1=self.k1, b=self.b)
        self.model.index([tokenize(t, self.stop) for t in texts], show_progress=False)
        return self

    def search(self, query: str, k: int) -> list[Hit]:
        """Top k by BM25 score; documents sharing no term with the query are not returned."""
        if self.model is None:
            raise StoreError("BM25 index is empty; build it (genforge rag index) before querying")
        q = tokenize(query, self.stop)
        if not q:
            return []
        k = min(k, len(self.ids))
        res = self.model.retrieve([q], k=k, show_progress=False)
        out = []
        for i, s in zip(res.documents[0], res.scores[0]):
            if s > 0:
                out.append(Hit(self.ids[int(i)], float(s), self.texts[int(i)], self.metas[int(i)]))
        return out

    def save(self, path: str | Path) -> None:
        with atomic_dir(path) as tmp:
            self.model.save(str(tmp))
            with open(Path(tmp) / "rows.jsonl", "w", encoding="utf-8") as f:
                for i, t, m in zip(self.ids, self.texts, self.metas):
                    f.write(json.dumps({"id": i, "text": t, "meta": m}, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> BM25Index:
        path = Path(path)
        if not (path / "rows.jsonl").exists():
            raise StoreError(f"{path}: no BM25 index here; build one with genforge rag index")
        idx = cls()
        idx.model = idx.bm25s.BM25.load(str(path))
        with open(path / "rows.jsonl", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        idx.ids, idx.texts, idx.metas = [r["id"] for r in rows], [r["text"] for r in rows], [r["meta"] for r in rows]
        return idx
