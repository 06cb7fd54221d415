"""Vector stores behind one interface: an embedded LanceDB default and a numpy flat fallback.

Both are crash-safe by construction: one `add` call is one commit. LanceDB writes new data files
and then atomically commits a new table version (a manifest); the flat store writes a new segment
file and then atomically replaces its manifest. A SIGKILL mid-insert leaves the previous version,
complete and searchable (tested by killing a writer; DESIGN.md records that FAISS/hnswlib index
files did not survive the same test, which is why neither is a store here).

Each collection records a format version, its dimension and the embedder that wrote it, so a
store from another version, a dimension mismatch or a query against an empty collection fails
with one line naming the collection and the fix.

Vectors are L2-normalised, so inner product = cosine similarity; `Hit.score` is that cosine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

import numpy as np

from genforge.extras import require
from genforge.io import atomic_path, write_json
from genforge.rag.chroma import drop_chroma, has_chroma, open_chroma
from genforge.rag.vectors import FORMAT_VERSION, Hit, StoreError, VectorStore, check_query, check_vectors

BACKENDS = ("lance", "flat")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def _manifest_path(root: Path, collection: str) -> Path:
    return root / f"{collection}.genforge-rag.json"


class FlatStore:
    """Exact inner-product search over numpy segments; the light fallback (no extra dependencies).

    Layout: <root>/<table>/seg-<n>.npy (vectors) + seg-<n>.jsonl (ids, texts, metas), listed by the
    manifest <root>/<collection>.genforge-rag.json (which also names <table>: a rebuild writes a new one);
    only segments named in the manifest exist for readers.
    """

    backend = "flat"

    def __init__(self, root: Path, collection: str, manifest: dict, manifest_path: Path | None = None):
        self.root, self.collection, self.manifest = root, collection, manifest
        self.dim, self.embedder = int(manifest["dim"]), manifest["embedder"]
        self.table_name = manifest.get("table", collection)  # the physical folder; a rebuild writes a new one
        self.manifest_path = manifest_path or _manifest_path(root, collection)
        self._cache: tuple[np.ndarray, list[dict]] | None = None

    def count(self) -> int:
        return int(self.manifest.get("count", 0))

    def add(self, ids: list[str], vectors: np.ndarray, texts: list[str], metas: list[dict] | None = None) -> None:
        vectors = check_vectors(self, ids, vectors, texts)
        if not ids:
            return
        metas = metas or [{} for _ in ids]
        folder = self.root / self.table_name
        folder.mkdir(parents=True, exist_ok=True)
        n = int(self.manifest.get("next_segment", 0))
        name = f"seg-{n:06d}"
        with atomic_path(folder / f"{name}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, vectors)
        with atomic_path(folder / f"{name}.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
            for i, t, m in zip(ids, texts, metas):
                f.write(json.dumps({"id": i, "text": t, "meta": m}, ensure_ascii=False) + "\n")
        # the commit point: until this rename the new segment is invisible
        man = dict(self.manifest, segments=[*self.manifest.get("segments", []), name],
                   count=self.count() + len(ids), next_segment=n + 1)
        write_json(self.manifest_path, man)
        self.manifest, self._cache = man, None

    def _load(self) -> tuple[np.ndarray, list[dict]]:
        if self._cache is None:
            folder = self.root / self.table_name
            vecs, rows = [], []
            for name in self.manifest.get("segments", []):
                vecs.append(np.load(folder / f"{name}.npy"))
                with open(folder / f"{name}.jsonl", encoding="utf-8") as f:
                    rows += [json.loads(line) for line in f]
            self._cache = (np.concatenate(vecs) if vecs else np.zeros((0, self.dim), np.float32), rows)
        return self._cache

    def search(self, query: np.ndarray, k: int) -> list[Hit]:
        query = check_query(self, query)
        vecs, rows = self._load()
        scores = vecs @ query  # (N,)
        k = min(k, len(rows))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [Hit(rows[i]["id"], float(scores[i]), rows[i]["text"], rows[i]["meta"]) for i in top]


class LanceStore:
    """LanceDB table (id, vector, text, meta-as-JSON); the embedded default.

    Brute-force (exact) search until `build_ann_index` makes an IVF-PQ index for large collections.
    """

    backend = "lance"

    def __init__(self, root: Path, collection: str, manifest: dict, manifest_path: Path | None = None):
        lancedb = require("lancedb", "rag")
        self.pa = require("pyarrow", "rag")
        self.root, self.collection, self.manifest = root, collection, manifest
        self.dim, self.embedder = int(manifest["dim"]), manifest["embedder"]
        self.table_name = manifest.get("table", collection)
        self.manifest_path = manifest_path or _manifest_path(root, collection)
        self.db = lancedb.connect(str(root / "lance"))
        self._table = None

    def _schema(self):
        pa = self.pa
        return pa.schema([("id", pa.string()), ("vector", pa.list_(pa.float32(), self.dim)),
                          ("text", pa.string()), ("meta", pa.string())])

    @property
    def table(self):
        if self._table is None:
            names = self.db.list_tables()
            names = getattr(names, "tables", names)  # newer lancedb returns a response object
            if self.table_name in names:
                self._table = self.db.open_table(self.table_name)
            else:
                self._table = self.db.create_table(self.table_name, schema=self._schema())
        return self._table

    def count(self) -> int:
        return int(self.table.count_rows())

    def add(self, ids: list[str], vectors: np.ndarray, texts: list[str], metas: list[dict] | None = None) -> None:
        vectors = check_vectors(self, ids, vectors, texts)
        if not ids:
            return
        pa = self.pa
        metas = metas or [{} for _ in ids]
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        batch = pa.table({"id": pa.array(ids, pa.string()),
                          "vector": pa.FixedSizeListArray.from_arrays(flat, self.dim),
                          "text": pa.array(texts, pa.string()),
                          "meta": pa.array([json.dumps(m, ensure_ascii=False) for m in metas], pa.string())},
                         schema=self._schema())
        self.table.add(batch)  # one Lance commit: a new table version, or nothing

    def build_ann_index(self, num_partitions: int = 0, num_sub_vectors: int = 0) -> None:
        """IVF-PQ index (Jégou et al. 2011) for large collections; defaults scale with the row count."""
        n = self.count()
        self.table.create_index(metric="dot", vector_column_name="vector",
                                num_partitions=num_partitions or max(1, int(np.sqrt(n))),
                                num_sub_vectors=num_sub_vectors or max(1, self.dim // 8), replace=True)

    def search(self, query: np.ndarray, k: int, nprobes: int = 20, refine_factor: int = 10) -> list[Hit]:
        """With an IVF-PQ index: probe `nprobes` partitions, re-rank refine_factor * k candidates exactly."""
        query = check_query(self, query)
        q = self.table.search(query.tolist(), vector_column_name="vector").metric("dot").limit(k)
        if hasattr(q, "nprobes"):  # vector queries only; harmless without an index (brute force)
            q = q.nprobes(nprobes).refine_factor(refine_factor)
        rows = q.to_list()
        # LanceDB's "dot" distance is 1 - q.v, so the cosine of unit vectors is 1 - distance
        return [Hit(r["id"], 1.0 - float(r["_distance"]), r["text"], json.loads(r["meta"] or "{}")) for r in rows]


def open_store(root: str | Path, collection: str, backend: str | None = None, dim: int | None = None,
               embedder: str | None = None, create: bool = False) -> VectorStore:
    """Open (or with create=True, create) a collection under folder `root`, or on a server when root is a URL.

    dim/embedder, when given, must match what the collection recorded; create=True requires both.
    An http(s):// root is a Chroma server (see `genforge.rag.chroma`).
    """
    if is_url(root):
        return open_chroma(str(root), collection, dim, embedder, create)
    root = Path(root)
    if not _NAME.match(collection):
        raise StoreError(f"collection name {collection!r} must be letters, digits, '_', '-', '.'")
    mpath = _manifest_path(root, collection)
    if mpath.exists():
        try:
            man = json.loads(mpath.read_text())
        except json.JSONDecodeError:
            raise StoreError(f"{mpath}: not a genforge rag manifest (invalid JSON); delete the collection "
                             "and re-index") from None
        if man.get("format") != FORMAT_VERSION:
            raise StoreError(f"collection {collection!r} at {root} was written by store format "
                             f"{man.get('format')!r}, this genforge reads format {FORMAT_VERSION}; re-index it "
                             "(genforge rag index ... overwrite=true) or use the genforge version that wrote it")
        if backend and man["backend"] != backend:
            raise StoreError(f"collection {collection!r} at {root} is a {man['backend']} store, not {backend}; "
                             f"open it with backend={man['backend']}")
        if dim is not None and int(man["dim"]) != dim:
            raise StoreError(f"collection {collection!r} at {root} holds {man['dim']}-d vectors from "
                             f"{man['embedder']}, but the embedder gives {dim}-d ({embedder}); use embedder "
                             f"{man['embedder']} or re-index into a new collection")
    elif create:
        if dim is None or embedder is None:
            raise StoreError(f"creating collection {collection!r} needs dim and embedder")
        backend = backend or "lance"
        if backend not in BACKENDS:
            raise StoreError(f"unknown store backend {backend!r}; use one of {', '.join(BACKENDS)}")
        man = {"format": FORMAT_VERSION, "backend": backend, "collection": collection, "dim": int(dim),
               "embedder": embedder}
        root.mkdir(parents=True, exist_ok=True)
        write_json(mpath, man)
    else:
        raise StoreError(f"no collection {collection!r} at {root}; index documents first (genforge rag index)")
    cls = LanceStore if man["backend"] == "lance" else FlatStore
    return cls(root, collection, man)


def is_url(root: str | Path) -> bool:
    return str(root).startswith(("http://", "https://"))


def collection_exists(root: str | Path, collection: str) -> bool:
    if is_url(root):
        return has_chroma(str(root), collection)
    return _manifest_path(Path(root), collection).exists()


def drop_collection(root: str | Path, collection: str) -> None:
    """Remove a collection (manifest first, so a crash midway leaves no half-visible collection)."""
    if is_url(root):
        return drop_chroma(str(root), collection)
    root = Path(root)
    mpath = _manifest_path(root, collection)
    if not mpath.exists():
        return
    man = json.loads(mpath.read_text())
    mpath.unlink()
    _remove_table(root, man.get("backend", ""), man.get("table", collection))


def _remove_table(root: Path, backend: str, table: str) -> None:
    import shutil
    shutil.rmtree(root / f"{table}.bm25", ignore_errors=True)  # the BM25 index built beside it, if any
    if backend == "lance":
        shutil.rmtree(root / "lance" / f"{table}.lance", ignore_errors=True)
    else:
        shutil.rmtree(root / table, ignore_errors=True)


def _staging_path(root: Path, collection: str) -> Path:
    return root / f".{collection}.staging.genforge-rag.json"


def stage_rebuild(root: str | Path, collection: str, backend: str, dim: int, embedder: str) -> LanceStore | FlatStore:
    """A fresh, invisible version of `collection` to fill; `commit_rebuild` makes it the collection atomically.

    Until the commit, readers (and a crash) see the previous index unchanged; a crashed rebuild leaves
    only an unreferenced table that the next rebuild removes.
    """
    import time
    root = Path(root)
    if backend not in BACKENDS:
        raise StoreError(f"unknown store backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if not _NAME.match(collection):
        raise StoreError(f"collection name {collection!r} must be letters, digits, '_', '-', '.'")
    spath = _staging_path(root, collection)
    if root.is_dir():  # a kill during one of the staging manifest's atomic rewrites leaves its temp file
        for tmp in root.glob(f".{spath.name}.*.tmp"):
            tmp.unlink(missing_ok=True)
    if spath.exists():  # leftovers of a rebuild that was killed
        with contextlib.suppress(Exception):
            old = json.loads(spath.read_text())
            _remove_table(root, old["backend"], old["table"])
        spath.unlink()
    man = {"format": FORMAT_VERSION, "backend": backend, "collection": collection, "dim": int(dim),
           "embedder": embedder, "table": f"{collection}-r{time.time_ns() // 1_000_000}"}
    root.mkdir(parents=True, exist_ok=True)
    write_json(spath, man)
    return (LanceStore if backend == "lance" else FlatStore)(root, collection, man, spath)


def commit_rebuild(store: LanceStore | FlatStore) -> str | None:
    """Publish a staged rebuild (one atomic rename) and delete the replaced table; returns its name (or None)."""
    final = _manifest_path(store.root, store.collection)
    old = json.loads(final.read_text()) if final.exists() else None
    os.replace(store.manifest_path, final)  # the commit point
    store.manifest_path = final
    if old is None:
        return None
    old_table = old.get("table", store.collection)
    if old_table != store.table_name:
        _remove_table(store.root, old.get("backend", ""), old_table)
    return old_table
