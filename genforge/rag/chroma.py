"""A server backend: a Chroma server (`chroma run`, from the `chromadb` package) over its HTTP API v2.

The store a user scales out to: many processes and machines share one server, which keeps an HNSW
index (Malkov & Yashunin 2018) and a write-ahead log. Spoken to with `httpx` (already a core
dependency), so the client side needs no extra package. Same `VectorStore` interface and the same
one-line errors as the embedded stores; the collection records format, dimension and embedder in
its metadata. Inner-product space on unit vectors, so `Hit.score` is the cosine (1 - distance).
"""

from __future__ import annotations

import json

import httpx
import numpy as np

from genforge.rag.vectors import FORMAT_VERSION, Hit, StoreError, check_query, check_vectors

TENANT, DATABASE = "default_tenant", "default_database"


class ChromaStore:
    backend = "chroma"

    def __init__(self, url: str, collection: str, info: dict, client: httpx.Client):
        self.url, self.collection, self.client = url.rstrip("/"), collection, client
        meta = info.get("metadata") or {}
        self.id = info["id"]
        self.dim, self.embedder = int(meta["dim"]), str(meta["embedder"])
        self.base = f"/api/v2/tenants/{TENANT}/databases/{DATABASE}/collections/{self.id}"

    def _post(self, path: str, body: dict) -> dict:
        return _request(self.client, self.url, "POST", self.base + path, self.collection, json=body)

    def count(self) -> int:
        return int(_request(self.client, self.url, "GET", self.base + "/count", self.collection))

    def add(self, ids: list[str], vectors: np.ndarray, texts: list[str], metas: list[dict] | None = None) -> None:
        vectors = check_vectors(self, ids, vectors, texts)
        if not ids:
            return
        metas = metas or [{} for _ in ids]
        # Chroma metadata values must be scalars; ours may nest, so they travel as one JSON string
        self._post("/add", {"ids": list(ids), "embeddings": vectors.tolist(), "documents": list(texts),
                            "metadatas": [{"_meta": json.dumps(m, ensure_ascii=False)} for m in metas]})

    def search(self, query: np.ndarray, k: int) -> list[Hit]:
        query = check_query(self, query)
        r = self._post("/query", {"query_embeddings": [query.tolist()], "n_results": int(k),
                                  "include": ["documents", "metadatas", "distances"]})
        out = []
        for i, d, t, m in zip(r["ids"][0], r["distances"][0], r["documents"][0], r["metadatas"][0]):
            out.append(Hit(i, 1.0 - float(d), t or "", json.loads((m or {}).get("_meta", "{}"))))
        return out


def _request(client: httpx.Client, url: str, method: str, path: str, collection: str, **kw):
    try:
        r = client.request(method, url + path, **kw)
    except httpx.TransportError as e:
        raise StoreError(f"collection {collection!r}: cannot reach the Chroma server at {url} "
                         f"({type(e).__name__}); start it (chroma run --path DIR --port PORT) or use an "
                         "embedded store folder instead of a URL") from None
    if r.status_code >= 400:
        raise StoreError(f"collection {collection!r}: Chroma server at {url} answered {r.status_code} "
                         f"to {method} {path.rsplit('/', 1)[-1]}: {r.text[:200]}")
    return r.json()


def open_chroma(url: str, collection: str, dim: int | None = None, embedder: str | None = None,
                create: bool = False, timeout: float = 30.0) -> ChromaStore:
    """Open (or create) `collection` on the Chroma server at `url` with the checks of `open_store`."""
    client = httpx.Client(timeout=timeout)
    cols = f"/api/v2/tenants/{TENANT}/databases/{DATABASE}/collections"
    url = url.rstrip("/")
    listing = _request(client, url, "GET", cols, collection, params={"limit": 10_000})
    info = next((c for c in listing if c["name"] == collection), None)
    if info is None:
        if not create:
            raise StoreError(f"no collection {collection!r} on the Chroma server at {url}; index documents first "
                             "(genforge rag index)")
        if dim is None or embedder is None:
            raise StoreError(f"creating collection {collection!r} needs dim and embedder")
        info = _request(client, url, "POST", cols, collection, json={
            "name": collection, "get_or_create": False,
            "metadata": {"genforge_rag_format": FORMAT_VERSION, "dim": int(dim), "embedder": embedder},
            "configuration": {"hnsw": {"space": "ip"}}})
    meta = info.get("metadata") or {}
    if meta.get("genforge_rag_format") != FORMAT_VERSION:
        raise StoreError(f"collection {collection!r} on {url} was written by store format "
                         f"{meta.get('genforge_rag_format')!r}, this genforge reads format {FORMAT_VERSION}; "
                         "re-index it into a new collection")
    if dim is not None and int(meta["dim"]) != dim:
        raise StoreError(f"collection {collection!r} on {url} holds {meta['dim']}-d vectors from {meta['embedder']}, "
                         f"but the embedder gives {dim}-d ({embedder}); use embedder {meta['embedder']} or "
                         "re-index into a new collection")
    return ChromaStore(url, collection, info, client)


def has_chroma(url: str, collection: str) -> bool:
    cols = f"/api/v2/tenants/{TENANT}/databases/{DATABASE}/collections"
    listing = _request(httpx.Client(timeout=30.0), url.rstrip("/"), "GET", cols, collection, params={"limit": 10_000})
    return any(c["name"] == collection for c in listing)


def drop_chroma(url: str, collection: str) -> None:
    client = httpx.Client(timeout=30.0)
    path = f"/api/v2/tenants/{TENANT}/databases/{DATABASE}/collections/{collection}"
    try:
        client.delete(url.rstrip("/") + path)
    except httpx.TransportError:
        raise StoreError(f"collection {collection!r}: cannot reach the Chroma server at {url}; start it "
                         "(chroma run --path DIR --port PORT)") from None
