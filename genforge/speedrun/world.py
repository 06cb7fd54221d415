"""Stage "world": generate the tiny world (corpus with planted junk, tasks, preferences, knowledge base)."""

from __future__ import annotations

from dataclasses import dataclass

from genforge.report import StageReport
from genforge.speedrun.stage import StageContext

NAME = "world"
TITLE = "Data: the tiny world"


@dataclass
class Config:
    """The world's size and seed follow the run's (`size=`, `seed=`); nothing else to set."""


@dataclass
class Outputs:
    dir: str  # the world folder (corpus.jsonl, corpus_labels.jsonl, preferences.jsonl, tasks/, ...)
    tasks_dir: str  # train/val/test/heldout.jsonl
    people: int
    towns: int
    objects: int
    seconds: float


def run(ctx: StageContext, cfg: Config, report: StageReport) -> Outputs:
    """Generate the world and report what it holds."""
    from genforge.world import generate_world

    out = ctx.path("world")
    summary = generate_world(out, seed=ctx.seed, size=ctx.size)
    c, t = summary["corpus"], summary["tasks"]
    planted = {k: v for k, v in c["labels"].items() if k != "clean"}
    report.row("entities", f"{summary['people']} people, {summary['towns']} towns, {summary['objects']} objects",
               note="the fictional world the corpus describes")
    report.row("corpus documents", c["docs"], note=f"{c['bytes'] / 1e6:.2f} MB; planted for cleaning: " +
               ", ".join(f"{v} {k}" for k, v in planted.items()))
    report.row("instruction rows (train/val/test/held-out)", "/".join(str(t["rows"][s]) for s in
               ("train", "val", "test", "heldout")), note="held-out family never appears in train")
    report.row("ranked preference lists", summary["preferences"]["rows"],
               note=f"{summary['preferences']['pairs']} (chosen, rejected) pairs")
    report.row("knowledge-base facts (not in the corpus)", summary["knowledge"]["rows"])
    report.row("generation time", summary.get("seconds", 0.0), note="seconds; same seed gives the same bytes")
    return Outputs(dir=str(out), tasks_dir=str(out / "tasks"), people=summary["people"], towns=summary["towns"],
                   objects=summary["objects"], seconds=float(summary.get("seconds", 0.0)))
