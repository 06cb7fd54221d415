"""`data_report.md`: what a cleaning run removed and why, how fast, and how the learned filters compare."""

from __future__ import annotations

from types import SimpleNamespace

from genforge.data.clean import CleanConfig


def _md(text: str) -> str:
    """One table cell: no newlines or pipes."""
    return text.replace("\n", " ⏎ ").replace("|", "\\|")


def render_data_report(summary: dict, examples: dict[str, list[dict]], cfg: CleanConfig, inputs: list[str]) -> str:
    """Markdown from `CleanReport.summary()`: counts per filter and reason, removed examples, throughput, bad lines,
    and the learned filters against the rules."""
    rep = SimpleNamespace(**summary)
    mb = rep.bytes_in / 1e6
    lines = [f"# Data report: {rep.out_path}", "",
             f"Inputs: {', '.join(inputs)}", "",
             "| | documents | MB of text |", "|---|---:|---:|",
             f"| in | {rep.docs_in:,} | {mb:.2f} |",
             f"| kept | {rep.docs_kept:,} | {rep.bytes_kept / 1e6:.2f} |",
             f"| removed | {rep.docs_in - rep.docs_kept:,} | {(rep.bytes_in - rep.bytes_kept) / 1e6:.2f} |", ""]
    wall, cpu = max(rep.seconds, 1e-9), max(rep.cpu_seconds, 1e-9)
    lines += ["## Throughput", "",
              f"{rep.docs_in / wall:,.0f} documents/s, {mb / wall:.2f} MB/s wall ({rep.seconds:.1f} s) with "
              f"{cfg.workers} worker(s); main process CPU {rep.cpu_seconds:.1f} s ({mb / cpu:.2f} MB/s of main-process "
              "CPU: with workers > 1 most of the work is in the pool)."
              + (f" Resumed at document {rep.resumed_from:,}; times cover every segment." if rep.resumed_from else ""),
              ""]
    if getattr(rep, "shards", ""):
        lines += ["## Packed", "", f"The kept documents were tokenised in the workers while cleaning and packed into "
                  f"{rep.shards}: " + ", ".join(f"{k} {v:,} tokens" for k, v in rep.tokens.items()) + ".", ""]
    lines += ["## Removed, per filter and reason", "",
              "Each document counts for the first filter that fired, in pipeline order: rules (empty, too_short, "
              "harmful blocklist, symbols ... low_quality), learned filters (harm_classifier, quality_classifier), "
              "then exact and near dedup.", "",
              "| reason | documents | share of input |", "|---|---:|---:|"]
    for reason, n in rep.removed.items():
        lines.append(f"| {reason} | {n:,} | {n / max(rep.docs_in, 1):.2%} |")
    lines.append("")
    if examples:
        lines += ["## Examples of removed documents", "", "| reason | id | detail | text (first 300 characters) |",
                  "|---|---|---|---|"]
        for reason in rep.removed:
            for ex in examples.get(reason, []):
                lines.append(f"| {reason} | {_md(ex['id'])} | {_md(ex['detail'])} | {_md(ex['text'])} |")
        lines.append("")
    lines += ["## Malformed input lines", ""]
    if rep.bad_lines:
        lines += [f"{rep.bad_lines:,} line(s) skipped (skip_bad=true). First ones:", "",
                  "| where | error | line |", "|---|---|---|"]
        lines += [f"| {_md(b['where'])} | {_md(b['error'])} | {_md(b['line'][:120])} |" for b in rep.bad_samples]
    else:
        lines.append("None" + (" (skip_bad=true)." if cfg.skip_bad else "."))
    lines.append("")
    f = rep.filters.get("filters") if rep.filters else None
    lines += ["## Learned filters against the rules they complement", ""]
    if not f:
        lines.append("Off (classifier=off)." if cfg.classifier == "off" else "No training report.")
    else:
        lines += [f"Trained on {rep.filters.get('source', '?')}: {rep.filters['n_train']:,} labelled documents; "
                  f"scored on {rep.filters['n_heldout']:,} held out by text hash (never trained on).", "",
                  "| filter | target | held-out positives | precision | recall | F1 |", "|---|---|---:|---:|---:|---:|"]
        names = {"quality": ("quality classifier", "junk rules (symbols ... low_quality)"),
                 "harm": ("harm classifier", "harmful blocklist")}
        for key, v in f.items():
            for who, label in (("classifier", names[key][0]), ("baseline", names[key][1])):
                m = v[who]
                lines.append(f"| {label} | {v['positive_label']} | {v['n_heldout_positive']} | {m['precision']:.3f} | "
                             f"{m['recall']:.3f} | {m['f1']:.3f} |")
        if all(v["classifier"]["f1"] == v["baseline"]["f1"] == 1.0 for v in f.values()):
            lines += ["", "Both are perfect here: the world's junk and harmful documents come from the few templates "
                      "the rules were written for. The models earn their place on text the rules were not written "
                      "for (e.g. harmful requests with no blocklisted phrase; see tests/data/test_pipeline_scale.py)."]
        lines += ["", f"Thresholds: quality P(junk) >= {cfg.quality_threshold}, harm P(harmful) >= "
                  f"{cfg.harm_classifier_threshold}. Models and training_report.json are in the .filters folder."]
    lines.append("")
    return "\n".join(lines)
