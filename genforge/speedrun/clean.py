"""Stage "clean": clean and deduplicate the world's corpus; score the filters against the planted labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from genforge.report import StageReport
from genforge.speedrun import world
from genforge.speedrun.stage import StageContext

NAME = "clean"
TITLE = "Data: cleaning and dedup"


@dataclass
class Config:
    """Cleaning uses `genforge.data.pipeline.CleanConfig`'s defaults."""


@dataclass
class Outputs:
    clean: str  # the cleaned corpus (JSONL)
    docs_kept: int


def run(ctx: StageContext, cfg: Config, report: StageReport, *, world: world.Outputs) -> Outputs:
    """Clean the corpus, then report removals per reason and recall on each planted label."""
    from genforge.data.pipeline import CleanConfig, clean_corpus, score_against_labels

    src = Path(world.dir)
    out = ctx.path("data", "clean.jsonl")
    rep = clean_corpus(src / "corpus.jsonl", out, CleanConfig())
    report.row("documents in / kept", f"{rep.docs_in:,} / {rep.docs_kept:,}",
               note=f"{rep.bytes_kept / 1e6:.2f} of {rep.bytes_in / 1e6:.2f} MB kept")
    for reason, n in rep.removed.items():
        report.row(f"removed: {reason}", n, note="documents removed for this reason")
    scores = score_against_labels(rep, src / "corpus_labels.jsonl")
    for label, v in scores.get("recall", {}).items():
        report.row(f"recall on planted {label}", v, note="share of planted documents removed (target >= 0.9)")
    if "clean_keep_rate" in scores:
        report.row("clean documents kept", scores["clean_keep_rate"], note="share of clean documents kept (>= 0.95)")
    report.row("cleaning speed", rep.docs_in / max(rep.seconds, 1e-9), note="documents/s")
    return Outputs(clean=str(out), docs_kept=rep.docs_kept)
