"""Read documents from the files users bring: .txt, .jsonl, .parquet, gzip, or a folder of them.

Every malformed input raises `DataError` naming the file and line (`corpus.jsonl:17: ...`), and a
corpus with no text at all is an error too, because every later stage would fail less clearly.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from genforge.errors import DataError
from genforge.io import read_jsonl

SUFFIXES = (".txt", ".jsonl", ".parquet", ".txt.gz", ".jsonl.gz")


@dataclass(frozen=True)
class Doc:
    """One document: an id (from the file, or `file:line`), its text, and where it came from."""

    id: str
    text: str
    source: str  # "path:line", for error messages and reports


JSON_SUFFIXES = (".jsonl", ".jsonl.gz")
T = TypeVar("T")


def _kind(path: Path, suffixes: tuple[str, ...] = SUFFIXES) -> str:
    name = path.name.lower()
    for suffix in suffixes:
        if name.endswith(suffix):
            return suffix
    raise DataError(f"{path}: unsupported file type; expected one of {', '.join(suffixes)} (or a folder of them)")


def expand_paths(paths: str | os.PathLike | Iterable[str | os.PathLike],
                 suffixes: tuple[str, ...] = SUFFIXES) -> list[Path]:
    """Turn files and folders into a sorted list of supported files; missing paths are errors."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")
                           and f.name.lower().endswith(suffixes))
            if not found:
                raise DataError(f"{p}: folder has no {', '.join(suffixes)} files")
            out.extend(found)
        elif p.is_file():
            _kind(p, suffixes)
            out.append(p)
        else:
            raise DataError(f"{p}: file not found")
    if not out:
        raise DataError("no input files given")
    return out


def _open_text(path: Path) -> IO[str]:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _read_txt(path: Path) -> Iterator[Doc]:
    """Blank-line separated documents; a document's id is `file:line` of its first line."""
    lines: list[str] = []
    start = 0
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                if not lines:
                    start = lineno
                lines.append(line.rstrip("\n"))
            elif lines:
                yield Doc(f"{path.name}:{start}", "\n".join(lines), f"{path}:{start}")
                lines = []
    if lines:
        yield Doc(f"{path.name}:{start}", "\n".join(lines), f"{path}:{start}")


def text_field_of(obj: dict, text_field: str, where: str) -> str:
    """A JSONL row's text, or a one-line error naming file:line and the fix (missing or non-string field)."""
    if text_field not in obj:
        raise DataError(f'{where}: missing field "{text_field}" (set text_field to the name of the text field; '
                        f"this row has {', '.join(map(repr, obj)) or 'no fields'})")
    text = obj[text_field]
    if not isinstance(text, str):
        raise DataError(f'{where}: field "{text_field}" must be a string, got {type(text).__name__}')
    return text


OnBad = Callable[[str, str, bytes], None]
"""Called as on_bad(where, message, raw line) for a malformed line that is skipped."""


def _read_jsonl(path: Path, text_field: str, id_field: str, on_bad: OnBad | None = None) -> Iterator[Doc]:
    """Rows of a JSONL file, read as bytes and decoded per line so one bad line can be skipped (`on_bad`)."""
    for lineno, raw in iter_raw_lines(path):
        doc = parse_jsonl_line(raw, str(path), path.name, lineno, text_field, id_field)
        if isinstance(doc, Doc):
            yield doc
            continue
        if on_bad is None:
            raise DataError(doc + " (or set skip_bad=true to skip bad lines)")
        on_bad(f"{path}:{lineno}", doc, raw[:300])


def iter_raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of every non-blank line of a .jsonl or .jsonl.gz file, undecoded (`parse_jsonl_line`)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if raw.strip():
                yield lineno, raw


def parse_jsonl_line(raw: bytes, path: str, name: str, lineno: int, text_field: str = "text",
                     id_field: str = "id") -> Doc | str:
    """One JSONL line as a `Doc` (id: the id field, else `name:lineno`; source `path:lineno`), or the one-line
    message saying why it is malformed. Pure, so a process pool can parse lines that the reader only split."""
    where = f"{path}:{lineno}"
    try:
        obj = json.loads(raw.decode("utf-8"))
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        text = text_field_of(obj, text_field, where)
    except UnicodeDecodeError as e:
        return f"{where}: not UTF-8 (bad byte at column {e.start + 1}); re-encode the file as UTF-8"
    except json.JSONDecodeError as e:
        return f"{where}: invalid JSON ({e.msg} at column {e.colno})"
    except DataError as e:
        return str(e)
    did = obj.get(id_field)
    return Doc(str(did) if did is not None else f"{name}:{lineno}", text, where)


def _read_parquet(path: Path, text_field: str, id_field: str, on_bad: OnBad | None = None) -> Iterator[Doc]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading .parquet needs pyarrow (pip install pyarrow), "
                        "or convert the file to .jsonl") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    cols = pf.schema_arrow.names
    if text_field not in cols:
        raise DataError(f'{path}: no column "{text_field}" (columns: {", ".join(cols)}); set text_field')
    want = [text_field] + ([id_field] if id_field in cols else [])
    row = 0
    for batch in pf.iter_batches(columns=want):
        data = batch.to_pydict()
        ids = data.get(id_field, [None] * batch.num_rows)
        for text, did in zip(data[text_field], ids):
            row += 1
            if not isinstance(text, str):
                msg = f'{path}:row {row}: column "{text_field}" must be a string, got {type(text).__name__}'
                if on_bad is None:
                    raise DataError(msg)
                on_bad(f"{path}:row {row}", msg, repr(text)[:300].encode())
                continue
            yield Doc(str(did) if did is not None else f"{path.name}:{row}", text, f"{path}:row {row}")


def _guarded(path: Path, items: Iterator[T]) -> Iterator[T]:
    """`items` read from `path`, with undecodable, truncated or unreadable files as one-line `DataError`s."""
    try:
        yield from items
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (bad byte at offset {e.start}); re-encode it as UTF-8") from None
    except (OSError, EOFError) as e:  # truncated or corrupt gzip, unreadable file
        raise DataError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None


def iter_json_rows(paths: str | os.PathLike | Iterable[str | os.PathLike],
                   suffixes: tuple[str, ...] = JSON_SUFFIXES) -> Iterator[tuple[Path, int, dict]]:
    """(file, line, object) for every row of JSONL files and folders of them (.jsonl, .jsonl.gz).

    The same one-line errors as `iter_documents`: unsupported or missing files, non-UTF-8 bytes (a PNG or an
    executable named .jsonl), truncated gzip, unreadable files, and malformed lines (`file:line: ...`).
    """
    for path in expand_paths(paths, suffixes):
        for lineno, obj in _guarded(path, read_jsonl(path)):
            yield path, lineno, obj


def iter_documents(paths: str | os.PathLike | Iterable[str | os.PathLike], text_field: str = "text",
                   id_field: str = "id", on_bad: OnBad | None = None) -> Iterator[Doc]:
    """Yield every document from files and folders (.txt, .jsonl, .parquet, .txt.gz, .jsonl.gz), streaming.

    Raises `DataError` for a missing or unsupported file, a malformed line (`file:line: ...`), or a
    corpus in which no document has any text. With `on_bad`, malformed JSONL lines and parquet rows are
    passed to it and skipped instead; unreadable files are still errors.
    """
    files = expand_paths(paths)
    any_text = False
    for path in files:
        kind = _kind(path)
        if kind in (".txt", ".txt.gz"):
            docs = _read_txt(path)
        elif kind == ".parquet":
            docs = _read_parquet(path, text_field, id_field, on_bad)
        else:
            docs = _read_jsonl(path, text_field, id_field, on_bad)
        for doc in _guarded(path, docs):
            any_text = any_text or bool(doc.text.strip())
            yield doc
    if not any_text:
        raise DataError(f"empty corpus: no text in {', '.join(map(str, files))}")
