"""Read documents for retrieval: .txt, .jsonl, .md/.markdown files, or folders of them.

Every problem a person can fix is a one-line `DataError` naming file (and line for JSONL).
Empty documents are not errors: they are skipped and counted in `LoadReport`, because a corpus with
a few blank files is normal; an input that yields *no* document at all is an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from genforge.data.readers import text_field_of
from genforge.errors import DataError
from genforge.io import read_jsonl

SUFFIXES = {".txt": "txt", ".jsonl": "jsonl", ".md": "markdown", ".markdown": "markdown"}


@dataclass
class Document:
    """One retrievable unit of source text; `source` is "file" or "file:line" for provenance."""

    id: str
    text: str
    source: str
    meta: dict = field(default_factory=dict)


@dataclass
class LoadReport:
    """What was read: documents, and the skipped ones with their reason ("path: empty")."""

    documents: list[Document] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); convert it to UTF-8 or remove it") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); check the path and its permissions") from None


def _load_txt(path: Path, rep: LoadReport) -> None:
    text = _read_text(path)
    if not text.strip():
        rep.skipped.append(f"{path}: empty")
        return
    rep.documents.append(Document(id=path.with_suffix("").as_posix(), text=text.strip(), source=str(path)))


_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")


def _load_markdown(path: Path, rep: LoadReport) -> None:
    """One document per heading section (title kept in meta): sections are natural retrieval units."""
    text = _read_text(path)
    sections: list[tuple[str, int, list[str]]] = []  # (title, first line, lines)
    title, start, lines = "", 1, []
    in_code = False
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_code = not in_code  # a '#' inside a code block is not a heading
        m = None if in_code else _HEADING.match(line)
        if m:
            sections.append((title, start, lines))
            title, start, lines = m.group(2).strip(), lineno, [line]
        else:
            lines.append(line)
    sections.append((title, start, lines))
    n_before = len(rep.documents)
    for i, (title, lineno, body) in enumerate(sections):
        content = "\n".join(body).strip()
        # a section holding only its heading carries no content worth retrieving
        if not content or (title and content.lstrip("# ").strip() == title):
            continue
        rep.documents.append(Document(id=f"{path.with_suffix('').as_posix()}#{i}", text=content,
                                      source=f"{path}:{lineno}", meta={"title": title}))
    if len(rep.documents) == n_before:
        rep.skipped.append(f"{path}: empty")


def _load_jsonl(path: Path, rep: LoadReport, text_field: str, id_field: str) -> None:
    _read_text(path)  # one-line errors for unreadable / non-UTF-8 files, as for the other formats
    n_before = len(rep.documents)
    for lineno, obj in read_jsonl(path):  # the one JSONL reader: file:line errors for bad JSON
        text = text_field_of(obj, text_field, f"{path}:{lineno}")
        if not text.strip():
            rep.skipped.append(f"{path}:{lineno}: empty")
            continue
        doc_id = str(obj.get(id_field, f"{path.stem}:{lineno}"))
        meta = {k: v for k, v in obj.items() if k not in (text_field, id_field)}
        rep.documents.append(Document(id=doc_id, text=text.strip(), source=f"{path}:{lineno}", meta=meta))
    if len(rep.documents) == n_before and not any(s.startswith(f"{path}:") for s in rep.skipped):
        rep.skipped.append(f"{path}: empty")


def load_documents(paths: str | Path | list[str | Path], text_field: str = "text", id_field: str = "id",
                   skip_unreadable: bool = False) -> LoadReport:
    """Load every supported file under `paths` (files or folders, recursively, in sorted order).

    skip_unreadable: count non-UTF-8 / unreadable files as skipped instead of raising.
    Raises `DataError` for a missing path, an unsupported file named directly, malformed JSONL, or
    when nothing at all could be loaded. Duplicate ids raise too: retrieval results would be ambiguous.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise DataError(f"{p}: no such file or folder")
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
        elif p.suffix.lower() in SUFFIXES:
            files.append(p)
        else:
            raise DataError(f"{p}: unsupported file type {p.suffix!r}; use one of {', '.join(sorted(SUFFIXES))}")
    rep = LoadReport()
    for f in files:
        kind = SUFFIXES[f.suffix.lower()]
        try:
            if kind == "txt":
                _load_txt(f, rep)
            elif kind == "markdown":
                _load_markdown(f, rep)
            else:
                _load_jsonl(f, rep, text_field, id_field)
        except DataError as e:
            if skip_unreadable and ("not UTF-8" in str(e) or "cannot read" in str(e)):
                rep.skipped.append(str(e))
                continue
            raise
    if not rep.documents:
        where = ", ".join(str(p) for p in paths)
        raise DataError(f"{where}: no non-empty documents found ({len(files)} files, {rep.n_skipped} skipped); "
                        f"supported types: {', '.join(sorted(SUFFIXES))}")
    seen: dict[str, str] = {}
    for d in rep.documents:
        if d.id in seen:
            raise DataError(f"{d.source}: duplicate document id {d.id!r} (first at {seen[d.id]}); ids must be unique")
        seen[d.id] = d.source
    return rep
