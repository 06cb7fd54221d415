"""Instruction data for supervised fine-tuning: read conversations, tokenize them, batch them.

Input is JSONL, one example per line, in either format:
    {"prompt": "...", "response": "..."}          (optional "system"; the world's task files use it)
    {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}
A missing field, an empty response or a bad role raises `DataError` naming file:line.

Every conversation is rendered with the chat template (`Tokenizer.encode_chat`) and the loss falls on
assistant tokens only (their content and the closing <|end|>, which teaches the model to stop): all
other targets are IGNORE. Training on prompts too would spend capacity on modelling users' text;
Ouyang et al. 2022 and most SFT recipes mask it.

Padding, not packing. Each sequence is one conversation, right-padded to the longest in its
micro-batch. Causal attention means pad tokens placed *after* a sequence can never influence its
real positions, so no attention mask is needed and the result is exactly what the sequence would
give alone (the fast `is_causal` attention path stays on). Packing would save the padded compute,
but attention would then have to be blocked at example boundaries (a block-diagonal mask and
per-example positions). Instruction examples here are short (the world's run from ~60 to ~280
tokens), and with `group_by_length` (micro-batches of similar length) little padding is left, so
the simple, obviously exact layout wins.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from genforge.data.readers import iter_json_rows
from genforge.errors import DataError
from genforge.tokenizer import ROLE_TOKENS, Tokenizer

IGNORE = -100  # label value for positions that do not count (prompt tokens, padding); cross_entropy's default
Conversation = list[dict]


def parse_example(obj: dict, where: str) -> Conversation:
    """One JSONL object -> a list of chat messages; `where` ("file:line") prefixes every error."""
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise DataError(f'{where}: "messages" must be a non-empty list of {{"role", "content"}} objects')
        out = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise DataError(f'{where}: message {i} must be an object with "role" and "content"')
            if m["role"] not in ROLE_TOKENS:
                raise DataError(f"{where}: message {i} has role {m['role']!r}; expected one of {sorted(ROLE_TOKENS)}")
            if not isinstance(m["content"], str):
                raise DataError(f'{where}: message {i} "content" must be a string')
            if m["role"] == "assistant" and not m["content"].strip():
                raise DataError(f"{where}: message {i} is an empty assistant turn; nothing to learn from it")
            out.append({"role": m["role"], "content": m["content"]})
        if not any(m["role"] == "assistant" for m in out):
            raise DataError(f"{where}: no assistant message; SFT learns from assistant turns only")
        return out
    missing = [k for k in ("prompt", "response") if k not in obj]
    if missing:
        raise DataError(f'{where}: missing field {", ".join(repr(k) for k in missing)} (expected a JSON object with '
                        '"prompt" and "response", or with "messages")')
    for k in ("prompt", "response", "system"):
        if k in obj and not isinstance(obj[k], str):
            raise DataError(f'{where}: "{k}" must be a string, got {type(obj[k]).__name__}')
    if not obj["response"].strip():
        raise DataError(f'{where}: empty "response"; every example needs a non-empty response')
    msgs = [{"role": "system", "content": obj["system"]}] if obj.get("system") else []
    return msgs + [{"role": "user", "content": obj["prompt"]}, {"role": "assistant", "content": obj["response"]}]


def read_conversations(paths: str | Path | Iterable[str | Path], tasks: Iterable[str] | None = None,
                       limit: int = 0) -> list[Conversation]:
    """Conversations from one or more JSONL files (a comma-separated string works too).

    A path may be a folder of .jsonl / .jsonl.gz files. Files are read by `data.readers.iter_json_rows`, so a
    PNG, an executable, invalid UTF-8, a truncated gzip or an unreadable file is a one-line `DataError`.
    tasks: keep only rows whose "task" field is one of these (world task files carry it).
    limit: keep at most this many rows per file (0 = all).
    """
    if isinstance(paths, (str, Path)):
        paths = [p for p in str(paths).split(",") if p.strip()]
    paths = [Path(str(p).strip()) for p in paths]
    want = set(tasks) if tasks else None
    out: list[Conversation] = []
    per_file: dict[Path, int] = {}
    for path, lineno, obj in iter_json_rows(paths):
        if want is not None and obj.get("task") not in want:
            continue
        if limit and per_file.get(path, 0) >= limit:
            continue
        out.append(parse_example(obj, f"{path}:{lineno}"))
        per_file[path] = per_file.get(path, 0) + 1
    if not out:
        raise DataError(f"no SFT examples in {list(map(str, paths))}" + (f" for tasks {sorted(want)}" if want else ""))
    return out


def sft_labels(ids: list[int], mask: list[int]) -> tuple[list[int], list[int]]:
    """(inputs, labels) for next-token training: labels[t] = ids[t+1] if the assistant wrote it, else IGNORE."""
    return ids[:-1], [t if m else IGNORE for t, m in zip(ids[1:], mask[1:])]


@dataclass
class EncodedSFT:
    """Tokenized examples (ids, assistant mask) and what encoding had to cut."""

    examples: list[tuple[list[int], list[int]]]
    truncated: int = 0  # longer than seq_len + 1 tokens: cut at the end
    dropped: int = 0  # no assistant token left after the cut
    stats: dict = field(default_factory=dict)


def encode_conversations(tokenizer: Tokenizer, conversations: list[Conversation], seq_len: int) -> EncodedSFT:
    """Render + tokenize each conversation; cut to seq_len + 1 tokens (seq_len input positions)."""
    examples, truncated, dropped = [], 0, 0
    for conv in conversations:
        ids, mask = tokenizer.encode_chat(conv)
        if len(ids) > seq_len + 1:
            truncated += 1
            ids, mask = ids[:seq_len + 1], mask[:seq_len + 1]
        if not any(mask[1:]):
            dropped += 1
            continue
        examples.append((ids, mask))
    if not examples:
        raise DataError(f"every SFT example lost its response to truncation at seq_len={seq_len}; raise data.seq_len")
    lengths = [len(ids) for ids, _ in examples]
    stats = {"examples": len(examples), "mean_tokens": float(np.mean(lengths)), "max_tokens": max(lengths),
             "assistant_tokens": int(sum(sum(m[1:]) for _, m in examples))}
    return EncodedSFT(examples, truncated, dropped, stats)


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch: input_ids (B, T) and labels (B, T) with IGNORE on prompt and padding."""
    pairs = [sft_labels(ids, mask) for ids, mask in examples]
    T = max(len(x) for x, _ in pairs)
    input_ids = torch.full((len(pairs), T), pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), T), IGNORE, dtype=torch.long)
    for i, (x, y) in enumerate(pairs):
        input_ids[i, :len(x)] = torch.tensor(x)
        labels[i, :len(y)] = torch.tensor(y)
    return {"input_ids": input_ids, "labels": labels}


class SFTData:
    """Batches of conversations for the shared trainer, drawn epoch by epoch in a seeded random order.

    `get_batch` is a pure function of (step, micro, rank, world): example slot g of the run maps to
    epoch g // N and position g % N of that epoch's permutation, so resume and DDP are exact.
    """

    def __init__(self, examples: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int, seed: int = 0,
                 grad_accum: int = 1, group_by_length: bool = False):
        if not examples:
            raise DataError("SFTData: no examples")
        self.examples, self.batch_size, self.pad_id, self.seed = examples, batch_size, pad_id, seed
        self.grad_accum = grad_accum  # micro-batches per step, so consecutive steps draw disjoint slots
        self.group_by_length = group_by_length
        self.lengths = np.array([len(ids) for ids, _ in examples])
        self._perms: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.examples)

    def _perm(self, epoch: int) -> np.ndarray:
        """The epoch's example order. With group_by_length, each window of 32 micro-batches is sorted by length
        and cut into micro-batches, which are then shuffled: batches hold similar lengths, so right padding
        wastes little compute (the "megabatch" trick of HF's group_by_length), while the order stays random."""
        if epoch not in self._perms:
            rng = np.random.default_rng([self.seed, epoch])
            perm = rng.permutation(len(self.examples))
            if self.group_by_length:
                B, mega, out = self.batch_size, self.batch_size * 32, []
                for s in range(0, len(perm), mega):
                    chunk = sorted(perm[s:s + mega].tolist(), key=lambda i: -self.lengths[i])
                    groups = [chunk[j:j + B] for j in range(0, len(chunk), B)]
                    out += [i for g in rng.permutation(len(groups)) for i in groups[g]]
                perm = np.array(out)
            self._perms = {epoch: perm}
        return self._perms[epoch]

    def get_batch(self, step: int, micro: int, rank: int, world: int) -> dict[str, torch.Tensor]:
        B, N = self.batch_size, len(self.examples)
        per_step = B * world * self.grad_accum
        start = step * per_step + (micro * world + rank) * B
        rows = [self.examples[int(self._perm(g // N)[g % N])] for g in range(start, start + B)]
        return collate(rows, self.pad_id)

    def eval_batches(self, batch_size: int | None = None) -> list[dict[str, torch.Tensor]]:
        """Every example once, in order (for validation loss)."""
        b = batch_size or self.batch_size
        return [collate(self.examples[i:i + b], self.pad_id) for i in range(0, len(self.examples), b)]
