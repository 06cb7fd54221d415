"""The cleaning pipeline: read -> normalise -> filter -> exact dedup -> near dedup -> write, one streaming pass.

`clean_corpus` writes the kept documents as `{"id", "text"}` JSONL (atomically), a
`<name>.removed.jsonl` sidecar (`{"id", "reason", "detail"}` per removed document) and
`clean_report.json` (counts per reason, sizes, timing, the config used). Deduplication keeps the first
occurrence, so put the sources you trust most first. `score_against_labels` compares what was kept
with a labels file such as the tiny world's `corpus_labels.jsonl`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from genforge.data.clean import CleanConfig, HarmfulMatcher, normalize, reject_reason
from genforge.data.dedup import ExactDeduper, NearDeduper
from genforge.data.readers import expand_paths, iter_documents
from genforge.errors import ConfigError, DataError
from genforge.io import atomic_path, read_jsonl, write_json
from genforge.progress import progress

PLANTED = ("junk", "harmful", "exact_dup", "near_dup")


@dataclass
class CleanReport:
    """What `clean_corpus` did: counts per removal reason, sizes, timing and the kept ids."""

    docs_in: int
    docs_kept: int
    bytes_in: int
    bytes_kept: int
    removed: dict[str, int]
    seconds: float
    out_path: str
    report_path: str
    removed_path: str
    kept_ids: list[str] = field(default_factory=list, repr=False)
    removed_ids: dict[str, str] = field(default_factory=dict, repr=False)

    def summary(self) -> dict:
        """The JSON-friendly part (no per-document lists)."""
        d = asdict(self)
        d.pop("kept_ids")
        d.pop("removed_ids")
        return d


def _harmful_matcher(cfg: CleanConfig) -> HarmfulMatcher:
    terms = list(cfg.harmful_terms)
    if cfg.harmful_terms_file:
        p = Path(cfg.harmful_terms_file)
        if not p.is_file():
            raise ConfigError(f"harmful_terms_file: {p}: file not found")
        terms += [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()
                  if ln.strip() and not ln.lstrip().startswith("#")]
    return HarmfulMatcher(terms, use_default=cfg.use_default_harmful)


def clean_corpus(inputs: str | os.PathLike | Iterable[str | os.PathLike], out_path: str | os.PathLike,
                 cfg: CleanConfig | None = None) -> CleanReport:
    """Clean and deduplicate documents from `inputs` (files or folders) into `out_path` (JSONL).

    Also writes `clean_report.json` beside `out_path` and a `<stem>.removed.jsonl` sidecar.
    Raises `DataError` for unreadable or empty input.
    """
    cfg = cfg or CleanConfig()
    if not 0 < cfg.near_threshold <= 1:
        raise ConfigError(f"near_threshold must be in (0, 1], got {cfg.near_threshold}")
    t0 = time.perf_counter()
    out_path = Path(out_path)
    report_path = out_path.with_name("clean_report.json")
    removed_path = out_path.with_name(out_path.name.removesuffix(".jsonl") + ".removed.jsonl")
    files = expand_paths(inputs)
    show = cfg.progress if cfg.progress is not None else sum(f.stat().st_size for f in files) > 20e6
    harmful = _harmful_matcher(cfg)
    exact = ExactDeduper() if cfg.dedup_exact else None
    if cfg.num_perm < 1 or cfg.shingle_size < 1:
        raise ConfigError(f"num_perm and shingle_size must be >= 1, got {cfg.num_perm} and {cfg.shingle_size}")
    try:
        near = NearDeduper(cfg.near_threshold, cfg.num_perm, cfg.shingle_size, cfg.minhash_seed,
                           cfg.dedup_backend) if cfg.dedup_near else None
    except (ValueError, ImportError) as e:
        raise ConfigError(f"dedup_backend: {e}") from None
    removed: dict[str, int] = {}
    removed_ids: dict[str, str] = {}
    kept_ids: list[str] = []
    docs_in = bytes_in = bytes_kept = 0
    with atomic_path(out_path) as tmp, atomic_path(removed_path) as tmp_removed, \
            open(tmp, "w", encoding="utf-8") as out, open(tmp_removed, "w", encoding="utf-8") as rem:
        for doc in progress(iter_documents(files, cfg.text_field, cfg.id_field), desc="clean", unit="doc",
                            enabled=show):
            docs_in += 1
            bytes_in += len(doc.text.encode("utf-8"))
            text = normalize(doc.text)
            why = reject_reason(text, cfg, harmful)
            if why is None and exact is not None and (first := exact.check_add(doc.id, text)) is not None:
                why = ("exact_dup", f"same as {first}")
            if why is None and near is not None and (hit := near.check_add(doc.id, text)) is not None:
                why = ("near_dup", f"similar to {hit[0]} (Jaccard ~{hit[1]:.2f})")
            if why is None:
                kept_ids.append(doc.id)
                line = json.dumps({"id": doc.id, "text": text}, ensure_ascii=False)
                bytes_kept += len(text.encode("utf-8"))
                out.write(line + "\n")
            else:
                removed[why[0]] = removed.get(why[0], 0) + 1
                removed_ids[doc.id] = why[0]
                rem.write(json.dumps({"id": doc.id, "reason": why[0], "detail": why[1], "source": doc.source},
                                     ensure_ascii=False) + "\n")
    report = CleanReport(docs_in=docs_in, docs_kept=len(kept_ids), bytes_in=bytes_in, bytes_kept=bytes_kept,
                         removed=dict(sorted(removed.items(), key=lambda kv: -kv[1])),
                         seconds=round(time.perf_counter() - t0, 3), out_path=str(out_path),
                         report_path=str(report_path), removed_path=str(removed_path),
                         kept_ids=kept_ids, removed_ids=removed_ids)
    write_json(report_path, {**report.summary(), "inputs": [str(f) for f in files], "config": asdict(cfg)})
    return report


def score_against_labels(kept: CleanReport | str | os.PathLike | Iterable[str],
                         labels_path: str | os.PathLike) -> dict:
    """Score a cleaning run against `{"id", "label"}` rows: recall per planted label and the clean-keep rate.

    `kept` is a `CleanReport`, the path of the cleaned JSONL, or an iterable of kept ids. A planted
    document counts as caught when it was removed for any reason.
    """
    if isinstance(kept, CleanReport):
        kept_ids = set(kept.kept_ids)
    elif isinstance(kept, (str, os.PathLike)):
        kept_ids = {str(obj["id"]) for _, obj in read_jsonl(kept, required=("id",))}
    else:
        kept_ids = set(kept)
    total: dict[str, int] = {}
    removed: dict[str, int] = {}
    missed: dict[str, list[str]] = {}
    for _, row in read_jsonl(labels_path, required=("id", "label")):
        label, did = row["label"], str(row["id"])
        total[label] = total.get(label, 0) + 1
        if did in kept_ids:
            if label != "clean":
                missed.setdefault(label, []).append(did)
        else:
            removed[label] = removed.get(label, 0) + 1
    if not total:
        raise DataError(f"{labels_path}: no labels")
    n_removed = sum(removed.values())
    return {
        "recall": {k: removed.get(k, 0) / total[k] for k in total if k != "clean"},
        "clean_keep_rate": 1 - removed.get("clean", 0) / total["clean"] if "clean" in total else None,
        "precision": (n_removed - removed.get("clean", 0)) / n_removed if n_removed else None,
        "counts": total,
        "missed": {k: v[:10] for k, v in missed.items()},
    }
