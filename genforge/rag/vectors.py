"""What every vector store shares: the `VectorStore` protocol, `Hit`, `StoreError`, the format version and
the argument checks. The embedded backends (store.py) and the server backend (chroma.py) both build on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from genforge.errors import GenforgeError

FORMAT_VERSION = 1


class StoreError(GenforgeError):
    """A missing, empty, mismatched or foreign-version vector store collection."""


@dataclass
class Hit:
    """One retrieved item: chunk id, similarity score (higher is better), its text and metadata."""

    id: str
    score: float
    text: str = ""
    meta: dict = field(default_factory=dict)


class VectorStore(Protocol):
    collection: str
    dim: int
    embedder: str

    def add(self, ids: list[str], vectors: np.ndarray, texts: list[str], metas: list[dict] | None = None) -> None:
        """Insert rows atomically (all of them or, after a crash, none)."""
        ...

    def search(self, query: np.ndarray, k: int) -> list[Hit]:
        """The k rows most similar to `query` (dim,), best first."""
        ...

    def count(self) -> int: ...


def check_vectors(store: VectorStore, ids: list[str], vectors: np.ndarray, texts: list[str]) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != store.dim:
        raise StoreError(f"collection {store.collection!r}: vectors of shape {tuple(vectors.shape)} do not match its "
                         f"dimension {store.dim} (embedder {store.embedder}); index with the same embedder "
                         "or create a new collection")
    if not len(ids) == len(texts) == vectors.shape[0]:
        raise StoreError(f"collection {store.collection!r}: {len(ids)} ids, {len(texts)} texts and "
                         f"{vectors.shape[0]} vectors; pass one of each per row")
    return vectors


def check_query(store: VectorStore, query: np.ndarray) -> np.ndarray:
    query = np.asarray(query, dtype=np.float32).reshape(-1)
    if query.shape[0] != store.dim:
        raise StoreError(f"collection {store.collection!r} holds {store.dim}-d vectors from {store.embedder}, "
                         f"but the query is {query.shape[0]}-d; query with embedder {store.embedder} "
                         "or re-index with yours")
    if store.count() == 0:
        raise StoreError(f"collection {store.collection!r} is empty; index documents first "
                         "(genforge rag index)")
    return query
