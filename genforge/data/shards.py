"""Packed token shards: documents tokenized as <|bos|> text <|eos|>, stored as flat numpy memmaps.

Layout of a shard folder:
    manifest.json      {"dtype", "vocab_size", "eos_id", "splits": {"train": {...}, "val": {...}}}
    train_000.bin ...  raw token ids (uint16 when the vocab fits in 65,536 ids, else uint32)
    val_000.bin

Each split records its files, token count and the UTF-8 byte count of its text (for bits-per-byte).
The train/val split is by document, chosen by a hash of the text so it is stable across runs.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from genforge.errors import DataError
from genforge.io import atomic_dir, write_json
from genforge.tokenizer import Tokenizer

if TYPE_CHECKING:  # torch only for batches: packing (in a cleaning run's main process) needs numpy alone
    import torch

SHARD_TOKENS = 50_000_000  # tokens per shard file (~100 MB at uint16)


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every token id."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def is_val(text: str, val_fraction: float) -> bool:
    """Whether a document goes to the validation split (by a hash of its text: stable across runs)."""
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
    return (h % 1_000_000) < val_fraction * 1_000_000


def pack_shards(texts: Iterable[str], tokenizer: Tokenizer, out_dir: str | Path, val_fraction: float = 0.05,
                batch_docs: int = 256) -> dict:
    """Tokenize documents into train/val shard files under out_dir; returns (and writes) the manifest.

    The shards are written into a temp folder beside `out_dir` and swapped in only when every document was
    read and packed (`genforge.io.atomic_dir`): a pack that fails half way (a bad line deep in the input, a
    full disk) leaves the old shards and their manifest as they were, and no empty `out_dir` behind.
    `genforge.data.pipeline.clean_corpus` with `pack_to` writes the same shards while it cleans.
    """
    out_dir = check_shard_target(out_dir)
    with atomic_dir(out_dir) as tmp:
        manifest = _pack_into(texts, tokenizer, tmp, val_fraction, batch_docs)
    warn_if_no_val(out_dir, manifest)
    return manifest


def check_shard_target(out_dir: str | Path) -> Path:
    """`out_dir` as a Path, or a `DataError` when it holds something other than shards (packing replaces it)."""
    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "manifest.json").exists():
        raise DataError(f"{out_dir}: exists and is not a shard folder (no manifest.json); packing would replace it, "
                        "so choose a new or empty folder")
    return out_dir


def warn_if_no_val(out_dir: Path, manifest: dict) -> None:
    if manifest["val_fraction"] > 0 and manifest["splits"]["val"]["n_tokens"] == 0:
        print(f"warning: {out_dir}: the validation split got 0 tokens (val_fraction={manifest['val_fraction']} of "
              f"{manifest['splits']['train']['n_docs']} documents; the split is by whole document); "
              "validation loss cannot be measured: add documents or raise val_fraction", file=sys.stderr)


def doc_tokens(ids: np.ndarray, bos: int, eos: int, dtype: np.dtype) -> np.ndarray:
    """<|bos|> ids <|eos|> in the stored dtype (generation prompts start with <|bos|>, as in pretraining)."""
    arr = np.empty(len(ids) + 2, dtype=dtype)
    arr[0], arr[1:-1], arr[-1] = bos, ids, eos
    return arr


class ShardWriter:
    """Appends documents' token arrays to `<split>_NNN.bin` files in `folder`, a new file every SHARD_TOKENS tokens.

    The files are the flat concatenation of the documents in the order added, cut every SHARD_TOKENS tokens,
    so they do not depend on how the documents were batched. Nothing is buffered in memory (the bytes go to the
    open file). `state()` is JSON: a resumable caller records it after `sync()` and hands it back to a new writer,
    which truncates the files to it (`clean_corpus` with `pack_to` checkpoints it with the clean's state).
    """

    def __init__(self, folder: str | Path, dtype: np.dtype, state: dict | None = None) -> None:
        self.folder, self.dtype = Path(folder), np.dtype(dtype)
        self.splits: dict[str, dict] = {s: {"files": [], "n_tokens": 0, "n_bytes": 0, "n_docs": 0}
                                        for s in ("train", "val")}
        self._open: dict[str, object] = {}
        if state is not None:
            self.splits = {s: {**v, "files": [dict(f) for f in v["files"]]} for s, v in state.items()}
            keep = {f["path"] for v in self.splits.values() for f in v["files"]}
            for f in self.folder.glob("*.bin"):
                if f.name not in keep:  # a file begun after the checkpoint
                    f.unlink()
            for v in self.splits.values():
                for f in v["files"]:
                    p = self.folder / f["path"]
                    p.touch()
                    os.truncate(p, f["n_tokens"] * self.dtype.itemsize)

    def add(self, split: str, tokens: np.ndarray, n_docs: int, n_bytes: int) -> None:
        """Append `tokens` (already <|bos|> doc <|eos|> per document, in the writer's dtype) of n_docs documents."""
        s = self.splits[split]
        s["n_docs"] += n_docs
        s["n_bytes"] += n_bytes
        s["n_tokens"] += len(tokens)
        tokens = np.asarray(tokens, dtype=self.dtype)
        while len(tokens):
            files = s["files"]
            if not files or files[-1]["n_tokens"] >= SHARD_TOKENS:
                files.append({"path": f"{split}_{len(files):03d}.bin", "n_tokens": 0})
                self._close(split)
            f = files[-1]
            take = min(len(tokens), SHARD_TOKENS - f["n_tokens"])
            if split not in self._open:
                self._open[split] = open(self.folder / f["path"], "ab")
            self._open[split].write(tokens[:take].tobytes())
            f["n_tokens"] += take
            tokens = tokens[take:]

    def _close(self, split: str) -> None:
        f = self._open.pop(split, None)
        if f is not None:
            f.close()

    def sync(self) -> None:
        """Flush and fsync the open files (before recording `state()` for a resume)."""
        for f in self._open.values():
            f.flush()
            os.fsync(f.fileno())

    def state(self) -> dict:
        return {s: {**v, "files": [dict(f) for f in v["files"]]} for s, v in self.splits.items()}

    def close(self) -> None:
        for split in list(self._open):
            self._close(split)

    def manifest(self, tokenizer: Tokenizer, val_fraction: float, encoder_name: str) -> dict:
        """The manifest of what was written (raises `DataError` when the train split is empty)."""
        if self.splits["train"]["n_tokens"] == 0:
            raise DataError("no training text: the corpus is empty after reading (check the input files)")
        return {"dtype": self.dtype.name, "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id,
                "val_fraction": val_fraction, "splits": self.state(), "encoder": encoder_name}


def _pack_into(texts: Iterable[str], tokenizer: Tokenizer, out_dir: Path, val_fraction: float,
               batch_docs: int) -> dict:
    # tiktoken when it provably gives the tokenizer's own ids (4-7x faster), else the reference encoder
    from genforge.data.fast_tokenize import batch_encoder

    encode, encoder_name = batch_encoder(tokenizer)
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    writer = ShardWriter(out_dir, dtype_for_vocab(tokenizer.vocab_size))

    def add(batch: list[str]) -> None:
        for text, ids in zip(batch, encode(batch)):
            split = "val" if is_val(text, val_fraction) else "train"
            writer.add(split, doc_tokens(ids, bos, eos, writer.dtype), 1, len(text.encode("utf-8")))

    try:
        batch: list[str] = []
        for text in texts:
            if text.strip():
                batch.append(text)
            if len(batch) >= batch_docs:
                add(batch)
                batch = []
        if batch:
            add(batch)
    finally:
        writer.close()
    manifest = writer.manifest(tokenizer, val_fraction, encoder_name)
    tokenizer.save(out_dir)  # the shards and their tokenizer travel together
    write_json(out_dir / "manifest.json", manifest)
    return manifest


class TokenShards:
    """Random-window batches from one split of a shard folder (memory-mapped, never loaded whole)."""

    def __init__(self, folder: str | Path, split: str = "train", seq_len: int = 256, batch_size: int = 16,
                 seed: int = 0):
        import json

        self.folder = Path(folder)
        mf = self.folder / "manifest.json"
        if not mf.exists():
            raise DataError(f"{mf}: no shard manifest; run `genforge data pack` (or the speedrun) first")
        self.manifest = json.loads(mf.read_text())
        info = self.manifest["splits"].get(split)
        if not info or info["n_tokens"] == 0:
            raise DataError(f"{mf}: split '{split}' has no tokens")
        dtype = np.dtype(self.manifest["dtype"])
        self.arrays = [np.memmap(self.folder / f["path"], dtype=dtype, mode="r") for f in info["files"]]
        self.lengths = np.array([len(a) for a in self.arrays])
        if (self.lengths <= seq_len).all():
            raise DataError(f"{mf}: split '{split}' has only {int(self.lengths.max())} tokens per file, fewer than "
                            f"seq_len+1={seq_len + 1}; use a shorter seq_len or more data")
        self.split, self.seq_len, self.batch_size, self.seed = split, seq_len, batch_size, seed
        self.n_tokens, self.n_bytes = int(info["n_tokens"]), int(info["n_bytes"])

    def _window(self, file: int, start: int) -> np.ndarray:
        return np.asarray(self.arrays[file][start:start + self.seq_len + 1], dtype=np.int64)

    def get_batch(self, step: int, micro: int, rank: int, world: int) -> dict[str, torch.Tensor]:
        """Sequences (x, y) for this (step, micro, rank): a pure function, so resume and DDP are exact.

        Sequence i of the step's global batch is drawn by a generator seeded with (seed, step, i);
        rank r's micro-batch m holds i in [(m*world + r)*B, +B), so 1 process x 2 micro-batches sees
        exactly the sequences of 2 processes x 1.
        """
        B = self.batch_size
        weights = (self.lengths - self.seq_len - 1).clip(min=0)
        p = weights / weights.sum()
        lo = (micro * world + rank) * B
        rows = []
        for i in range(lo, lo + B):
            rng = np.random.default_rng([self.seed, step, i])
            f = int(rng.choice(len(self.arrays), p=p)) if len(self.arrays) > 1 else 0
            rows.append(self._window(f, int(rng.integers(0, weights[f]))))
        import torch

        rows = np.stack(rows)
        t = torch.from_numpy(rows)
        return {"input_ids": t[:, :-1], "labels": t[:, 1:]}

    def eval_batches(self, max_batches: int) -> list[dict[str, torch.Tensor]]:
        """Fixed, non-overlapping windows from the start of the split (the same every eval)."""
        out = []
        for f, arr in enumerate(self.arrays):
            for start in range(0, len(arr) - self.seq_len - 1, self.seq_len):
                out.append(self._window(f, start))
                if len(out) >= max_batches * self.batch_size:
                    break
        import torch

        rows = [torch.from_numpy(np.stack(out[i:i + self.batch_size])) for i in range(0, len(out), self.batch_size)]
        return [{"input_ids": r[:, :-1], "labels": r[:, 1:]} for r in rows[:max_batches]]
