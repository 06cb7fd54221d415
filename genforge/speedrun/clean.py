"""Stage "clean": clean and deduplicate the world's corpus; score every filter against the planted labels.

The learned filters (quality and harm classifiers) train on this world's own labelled documents with a
quarter held out by text hash; their comparison with the rules they complement uses the held-out
quarter only. Pipeline rows (precision and recall per removal reason) cover the whole corpus, so for the
two classifiers they include documents they were trained on (the note says so).
"""

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
    """`genforge.data.pipeline.CleanConfig`'s defaults, with the classifiers trained on this world's labels."""


@dataclass
class Outputs:
    clean: str  # the cleaned corpus (JSONL)
    docs_kept: int


def run(ctx: StageContext, cfg: Config, report: StageReport, *, world: world.Outputs) -> Outputs:
    """Clean the corpus, then report precision and recall per filter and the learned filters against the rules."""
    from genforge.data.classify import CLEAN_ALIASES
    from genforge.data.pipeline import CleanConfig, clean_corpus, per_filter_scores, score_against_labels
    from genforge.eval.stats import bootstrap_diff, bootstrap_proportion

    src = Path(world.dir)
    labels = src / "corpus_labels.jsonl"
    out = ctx.path("data", "clean.jsonl")
    rep = clean_corpus(src / "corpus.jsonl", out, CleanConfig(classifier=str(labels), resume=False))
    report.row("documents in / kept", f"{rep.docs_in:,} / {rep.docs_kept:,}",
               note=f"{rep.bytes_kept / 1e6:.2f} of {rep.bytes_in / 1e6:.2f} MB kept; details in data/data_report.md")

    # The learned filters against the rules they complement, on held-out labelled documents.
    f = rep.filters.get("filters", {})
    outcomes = _outcomes(rep)
    for name, rule in (("quality", "junk rules"), ("harm", "harmful blocklist")):
        if name not in f:
            continue
        o = outcomes[name]
        truth = o["truth"]
        clf_ok = [int(p == t) for p, t in zip(o["classifier"], truth)]
        rule_ok = [int(p == t) for p, t in zip(o["baseline"], truth)]
        pos = [i for i, t in enumerate(truth) if t]
        rec_c = bootstrap_proportion([int(o["classifier"][i]) for i in pos])
        rec_b = bootstrap_proportion([int(o["baseline"][i]) for i in pos])
        m, b = f[name]["classifier"], f[name]["baseline"]
        report.lesson(f"the learned {name} classifier is no worse than the {rule} on held-out documents "
                      "(accuracy difference > -0.02)",
                      (f"recall on held-out {f[name]['positive_label']}, classifier", rec_c),
                      (f"recall, {rule}", rec_b), effect=bootstrap_diff(clf_ok, rule_ok, paired=True), target=-0.02,
                      effect_name="accuracy difference",
                      note=f"{len(truth)} held-out documents ({len(pos)} {f[name]['positive_label']}); precision "
                           f"{m['precision']:.3f} vs {b['precision']:.3f}, F1 {m['f1']:.3f} vs {b['f1']:.3f}. "
                           "The world's junk and harmful documents come from a few templates that the rules were "
                           "written for, so both are near perfect and the comparison cannot separate them")

    # Precision and recall of every filter on the whole corpus.
    per = per_filter_scores(rep.removed_path, labels)
    for reason, s in per.items():
        p, r = bootstrap_proportion(s["hits"]), bootstrap_proportion(s["caught"]) if s["caught"] else None
        trained = " (includes the documents it was trained on)" if reason.endswith("_classifier") else ""
        report.row(f"filter {reason}: precision · recall", f"{p} · {r if r is not None else 'n/a'}",
                   note=f"{s['n']} removed; precision = share of them planted (any label), recall = share of planted "
                        f"{s['target']} it removed first{trained}")
    scores = score_against_labels(rep, labels)
    kept_ids = set(rep.kept_ids)
    rows = _label_rows(labels)
    # the safety plants (canary, bias) are text to keep, not junk; a canary's identical copies are fair dedup
    # removals, so plants are judged by neither lesson (their keep rates are a row below)
    rows = [(did, lab) for did, lab in rows if lab not in CLEAN_ALIASES]
    removed_planted = [int(did not in kept_ids) for did, lab in rows if lab != "clean"]
    removed_all = [int(lab != "clean") for did, lab in rows if did not in kept_ids]
    for lab, rate in scores.get("plant_keep_rate", {}).items():
        report.row(f"safety plants kept: {lab}", f"{rate:.3f}", note="canaries' identical copies are deduplicated "
                   "by design (world/canaries.py); the bias documents should all survive")
    if removed_planted and removed_all:
        recall = bootstrap_proportion(removed_planted)
        report.lesson("cleaning removes the planted junk, harmful and duplicate documents (recall >= 0.9)",
                      ("recall, all planted labels", recall), effect=recall, target=0.9, effect_name="recall",
                      note="recall per label: " + ", ".join(f"{k} {v:.3f}" for k, v in scores["recall"].items()))
        precision = bootstrap_proportion(removed_all)
        report.lesson("... and little else: most removed documents were planted (precision >= 0.9)",
                      ("precision of removals", precision), effect=precision, target=0.9, effect_name="precision",
                      note=f"clean documents kept: {scores['clean_keep_rate']:.3f}; a filter that removed everything "
                           "would have recall 1 and precision ~0.13 here")
    report.row("cleaning speed", f"{rep.docs_in / max(rep.seconds, 1e-9):,.0f} docs/s",
               note=f"{rep.bytes_in / 1e6 / max(rep.seconds, 1e-9):.2f} MB/s wall, 1 worker")
    return Outputs(clean=str(out), docs_kept=rep.docs_kept)


def _outcomes(rep) -> dict:
    """Per-document held-out outcomes from the training report beside the output (kept for intervals)."""
    import json

    p = Path(rep.out_path).with_name(Path(rep.out_path).name.removesuffix(".jsonl") + ".filters")
    data = json.loads((p / "heldout_outcomes.json").read_text()) if (p / "heldout_outcomes.json").exists() else {}
    return data


def _label_rows(labels: Path) -> list[tuple[str, str]]:
    from genforge.io import read_jsonl

    return [(str(r["id"]), r["label"]) for _, r in read_jsonl(labels, required=("id", "label"))]
