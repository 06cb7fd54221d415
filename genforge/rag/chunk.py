"""Split documents into token windows with overlap, sized so that k of them fit a model's context.

Works with a genforge `Tokenizer` or any object with `encode(str) -> list[int]` and
`decode(list[int]) -> str`; `WhitespaceTokenizer` is the dependency-free default.
Windows: start at 0, step = size - overlap, the last window ends exactly at the document's end
(it is never padded and never dropped, so every token is in at least one chunk).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from genforge.errors import ConfigError
from genforge.rag.loaders import Document


class TextCodec(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...


class WhitespaceTokenizer:
    """Words as tokens (ids index a growing vocabulary); decode joins them with single spaces."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}
        self.words: list[str] = []

    def encode(self, text: str) -> list[int]:
        ids = []
        for w in text.split():
            if w not in self.vocab:
                self.vocab[w] = len(self.words)
                self.words.append(w)
            ids.append(self.vocab[w])
        return ids

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.words[i] for i in ids)


@dataclass
class Chunk:
    """A window [start, end) of a document's tokens; `id` is "<doc id>@<index>"."""

    id: str
    doc_id: str
    text: str
    start: int
    end: int
    source: str = ""
    meta: dict = field(default_factory=dict)


def windows(n_tokens: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Token spans [(start, end)] covering range(n_tokens) with `overlap` tokens shared by neighbours."""
    if size < 1:
        raise ConfigError(f"chunk size must be >= 1 token, got {size}")
    if not 0 <= overlap < size:
        raise ConfigError(f"chunk overlap must be in [0, size={size}), got {overlap}")
    if n_tokens <= 0:
        return []
    if n_tokens <= size:
        return [(0, n_tokens)]
    step = size - overlap
    spans = []
    start = 0
    while True:
        end = start + size
        if end >= n_tokens:
            # last window: align its end to the document's end so it is full-sized (more context)
            spans.append((max(0, n_tokens - size), n_tokens))
            break
        spans.append((start, end))
        start += step
    return spans


def size_for_context(context_len: int, k: int, reserve: int, overlap_frac: float = 0.0) -> int:
    """Largest chunk size (tokens) so that k chunks plus `reserve` tokens (question, template, answer) fit.

    E.g. a 512-token model, 4 passages, 128 reserved -> 96-token chunks.
    """
    size = (context_len - reserve) // max(k, 1)
    if size < 8:
        raise ConfigError(f"context of {context_len} tokens leaves {size} tokens per chunk for k={k} and "
                          f"reserve={reserve}; lower k or reserve, or use a model with a longer context")
    return size


def chunk_document(doc: Document, tokenizer: TextCodec, size: int, overlap: int) -> list[Chunk]:
    """Chunks of one document, text re-decoded from its token window."""
    ids = list(tokenizer.encode(doc.text))
    out = []
    for i, (s, e) in enumerate(windows(len(ids), size, overlap)):
        out.append(Chunk(id=f"{doc.id}@{i}", doc_id=doc.id, text=tokenizer.decode(ids[s:e]), start=s, end=e,
                         source=doc.source, meta=dict(doc.meta)))
    return out


def chunk_documents(docs: list[Document], tokenizer: TextCodec | None = None, size: int = 128,
                    overlap: int = 16) -> list[Chunk]:
    """Chunks of every document, in order (defaults: whitespace tokens, 128 with 16 overlap)."""
    tok = tokenizer or WhitespaceTokenizer()
    out: list[Chunk] = []
    for d in docs:
        out += chunk_document(d, tok, size, overlap)
    return out
