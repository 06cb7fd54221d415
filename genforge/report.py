"""The run's report card: runs/<name>/report.md, one section per stage with its measured effect.

Each stage writes its own part (`report/<stage>.json`: rows, plots, notes) so a rerun that skips
finished stages still rebuilds the whole card. A row is (metric, value, baseline, what it shows).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from genforge.io import write_json, write_text


@dataclass
class Row:
    metric: str
    value: Any
    baseline: Any = None
    note: str = ""


@dataclass
class StageReport:
    """What one stage contributes to the report card."""

    stage: str
    title: str
    rows: list[Row] = field(default_factory=list)
    plots: list[tuple[str, str]] = field(default_factory=list)  # (path relative to run dir, caption)
    text: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def row(self, metric: str, value: Any, baseline: Any = None, note: str = "") -> None:
        self.rows.append(Row(metric, value, baseline, note))

    def plot(self, path: str | Path, caption: str) -> None:
        self.plots.append((str(path), caption))

    def note(self, markdown: str) -> None:
        self.text.append(markdown)


def fmt(v: Any) -> str:
    """Numbers with sensible precision; everything else as text."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.1f}"
    return str(v)


class Report:
    """Collects stage reports under run_dir/report/ and renders run_dir/report.md."""

    def __init__(self, run_dir: str | Path, title: str = "genforge report card"):
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "report"
        self.title = title

    def save_stage(self, sr: StageReport) -> None:
        write_json(self.dir / f"{sr.stage}.json", asdict(sr))

    def load_stage(self, stage: str) -> StageReport | None:
        f = self.dir / f"{stage}.json"
        if not f.exists():
            return None
        d = json.loads(f.read_text())
        return StageReport(d["stage"], d["title"], [Row(**r) for r in d["rows"]], [tuple(p) for p in d["plots"]],
                           d["text"], d.get("seconds", 0.0))

    def render(self, stages: list[str], header: str = "") -> str:
        lines = [f"# {self.title}", ""]
        if header:
            lines += [header, ""]
        summary = []
        for stage in stages:
            sr = self.load_stage(stage)
            if sr is None:
                continue
            summary.append(f"| {sr.title} | {sr.seconds:,.0f} s |")
            lines += [f"## {sr.title}", ""]
            if sr.rows:
                lines += ["| metric | value | baseline | what it shows |", "|---|---|---|---|"]
                lines += [f"| {r.metric} | {fmt(r.value)} | {fmt(r.baseline)} | {r.note} |" for r in sr.rows]
                lines.append("")
            for t in sr.text:
                lines += [t, ""]
            for path, caption in sr.plots:
                lines += [f"![{caption}]({path})", f"*{caption}*", ""]
        if summary:
            lines += ["## Time per stage", "", "| stage | wall time |", "|---|---|", *summary, ""]
        return "\n".join(lines)

    def write(self, stages: list[str], header: str = "") -> Path:
        out = self.run_dir / "report.md"
        write_text(out, self.render(stages, header))
        return out


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(6, 3.6), dpi=110)


def _save(plt, fig, ax, path: str | Path, title: str, ylabel: str) -> Path:
    """Title, grid, tight layout, then an atomic PNG write."""
    from genforge.io import atomic_path

    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path).with_suffix(".png")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def line_plot(path: str | Path, series: dict[str, tuple[list, list]], title: str, xlabel: str, ylabel: str,
              logy: bool = False) -> Path:
    """Save a multi-series line plot (PNG) atomically."""
    plt, fig, ax = _figure()
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, label=label, marker="o" if len(xs) < 15 else None, markersize=3)
    ax.set_xlabel(xlabel)
    if logy:
        ax.set_yscale("log")
    if len(series) > 1:
        ax.legend(fontsize=8)
    return _save(plt, fig, ax, path, title, ylabel)


def bar_plot(path: str | Path, labels: list[str], values: list[float], title: str, ylabel: str) -> Path:
    """Save a bar chart (PNG) atomically."""
    plt, fig, ax = _figure()
    ax.bar(labels, values, color="#4c72b0")
    ax.tick_params(axis="x", rotation=30)
    return _save(plt, fig, ax, path, title, ylabel)
