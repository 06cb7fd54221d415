"""Small file helpers shared by every stage: atomic writes and line-numbered JSONL reading."""

from __future__ import annotations

import errno
import gzip
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from genforge.errors import DataError, StorageError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in the same folder; on success rename it over `path` (atomic on POSIX).

    A crash mid-write leaves the old file (or nothing) in place, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary files others may read
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON (indented, UTF-8) atomically."""
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Any) -> int:
    """Write an iterable of dicts as JSONL atomically; return the number of rows."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


RUN = "$RUN"  # stands for the run folder in a speedrun's stages/*.json, so a copied or moved run reads its own files


def relocate(value: Any, old: str, new: str) -> Any:
    """`value` (JSON-like) with every string path that is `old` or under it rewritten to start with `new`."""
    if isinstance(value, str):
        return new + value[len(old):] if value == old or value.startswith(old + "/") else value
    if isinstance(value, dict):
        return {k: relocate(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [relocate(v, old, new) for v in value]
    return value


def read_run_json(run_dir: str | os.PathLike, name: str) -> dict:
    """A speedrun stage's outputs (run_dir/stages/<name>.json) with its $RUN paths resolved; {} if it has not run."""
    path = Path(run_dir) / "stages" / f"{name}.json"
    return relocate(json.loads(path.read_text()), RUN, str(Path(run_dir).resolve())) if path.exists() else {}


def read_json(path: str | os.PathLike, missing: str, error: type[Exception] = DataError) -> Any:
    """A JSON file, or a one-line `error`: `missing` says what the folder should have been; corrupt JSON
    names the file, line and problem."""
    f = Path(path)
    if not f.exists():
        raise error(missing)
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{f}: corrupt JSON ({e.msg} at line {e.lineno})") from None


def read_jsonl(path: str | os.PathLike, required: tuple[str, ...] = ()) -> Iterator[tuple[int, dict]]:
    """Yield (line_number, object) for each non-blank line; bad lines raise `DataError` naming file:line.

    Files ending in .gz are decompressed on the fly.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            missing = [k for k in required if k not in obj]
            if missing:
                want = ", ".join(f'"{k}"' for k in required)
                raise DataError(f"{path}:{lineno}: missing field {', '.join(missing)} "
                                f"(expected a JSON object with {want})")
            yield lineno, obj


def storage_error(e: OSError, path: str | os.PathLike, what: str = "writing") -> StorageError:
    """A one-line error for an OSError while writing `path`: says "disk full" or "permission denied" plainly."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(f"{path}: disk full while {what}; free some space (or choose another folder) and rerun")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(f"{path}: permission denied while {what} ({e.strerror}); choose a folder you can write")
    return StorageError(f"{path}: cannot finish {what} ({e.strerror or e})")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_readable(folder: Path) -> None:
    """chmod a freshly written tree to 0755 folders / 0644 files (subject to the umask), as `open` would.

    `mkdtemp` creates 0700 folders: left as is, a serving account could not read a checkpoint another user wrote.
    """
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~mask)


def stale_temp_dirs(path: Path) -> list[Path]:
    """Temp folders that earlier, killed writes of `path` left beside it (`.<name>.*.tmp`)."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\..+\.tmp$")
    if not path.parent.is_dir():
        return []
    return [p for p in path.parent.iterdir() if pattern.match(p.name) and p.is_dir() and not p.is_symlink()]


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder; on success it replaces `path`. Safe against a kill at any instant.

    Order: write `tmp`; move the current `path` (if any) to `.<name>.old`; rename `tmp` to `path`; delete
    `.old`. A kill between the two renames leaves `.old` as the only complete copy, so it is never deleted
    before a new `path` is in place (`complete_dir` finds it). Stale temp folders of killed writes are
    removed first; an OSError (disk full, permission) becomes a one-line `StorageError` naming the folder,
    and the previous copy stays intact.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in stale_temp_dirs(path):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as e:
        raise storage_error(e, path.parent, "creating a folder") from None
    try:
        try:
            yield tmp
            make_readable(tmp)
        except OSError as e:
            raise storage_error(e, path) from None
        except Exception as e:
            # writers in other languages (safetensors' Rust) report a full disk in their own exception types
            if "No space left on device" in str(e):
                raise storage_error(OSError(errno.ENOSPC, "No space left on device"), path) from None
            raise
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            # `path` is complete and newer than `.old`: retire `.old` first (renamed, so a kill mid-delete leaves
            # only a stale temp folder), then move `path` aside
            if old.exists():
                _discard(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            _discard(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _discard(folder: Path) -> None:
    trash = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def complete_dir(path: str | os.PathLike) -> Path | None:
    """The newest complete copy of a folder written by `atomic_dir`: `path`, else `.<name>.old`, else None."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    return path if path.is_dir() else old if old.is_dir() else None
