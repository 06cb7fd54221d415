"""The run's report card: runs/<name>/report.md and a self-contained report.html.

The card opens with the **lessons table**: one row per claim a stage set out to show (claim · measured ·
baseline · effect with its 95 % interval · holds?), then one section per stage with its rows, notes and
plots. Each stage writes its own part (`report/<stage>.json`: rows, lessons, plots, notes) so a rerun that
skips finished stages still rebuilds the whole card. A row is (metric, value, baseline, what it shows).
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from genforge.io import write_json, write_text

Direction = Literal["above", "below"]
HOLDS, FAILS = "holds", "does not hold"


@dataclass
class Row:
    metric: str
    value: Any
    baseline: Any = None
    note: str = ""


def _ci_parts(x: Any) -> tuple[Any, float | None, float | None, int]:
    """(estimate, low, high, n) from an `eval.stats.Interval` (or anything with those fields), a
    (estimate, low, high[, n]) tuple, or a bare number (no interval)."""
    if x is None or isinstance(x, (str, bool)):
        return x, None, None, 0
    if hasattr(x, "estimate") and hasattr(x, "low") and hasattr(x, "high"):
        return float(x.estimate), float(x.low), float(x.high), int(getattr(x, "n", 0))
    if isinstance(x, dict):
        return x["estimate"], x.get("low"), x.get("high"), int(x.get("n", 0))
    if isinstance(x, (tuple, list)):
        if len(x) not in (3, 4):
            raise ValueError(f"an interval is (estimate, low, high[, n]), got {x!r}")
        return float(x[0]), float(x[1]), float(x[2]), int(x[3]) if len(x) == 4 else 0
    return float(x), None, None, 0


@dataclass
class Lesson:
    """One claim of the report card, with the measurement that tests it and a verdict.

    The verdict rule (conservative: the data must show it, a straddling interval does not hold):
    - direction "above": **holds** when the whole interval of the effect lies above the target
      (low > target); e.g. "CoT beats direct by >= 20 points" is effect = paired accuracy difference,
      target 0.20; "DPO beats SFT" is effect = win rate, target 0.5.
    - direction "below": **holds** when the whole interval lies below the target (high < target);
      e.g. "int8 costs < 1 % perplexity" is effect = ppl ratio - 1, target 0.01.
    - an effect measured once, without an interval (a wall-clock speedup), is judged by its point
      estimate, and the table says so ("no CI").
    - merged over seeds (`merge_seeds`): holds only when it holds under every seed.
    """

    claim: str
    measured: str  # what was measured, e.g. "accuracy with chain of thought"
    value: Any  # its value (number or text)
    baseline: str = ""  # what it is compared against, e.g. "accuracy answering directly"
    baseline_value: Any = None
    effect: float = math.nan  # the statistic the claim is about (difference, win rate, ratio, the value itself)
    low: float | None = None  # its 95 % interval (None: measured once, no interval)
    high: float | None = None
    n: int = 0  # test items behind the interval
    target: float = 0.0
    direction: Direction = "above"
    effect_name: str = "difference"  # how to read the effect column
    note: str = ""
    stage: str = ""
    value_ci: list[float] | None = None  # [low, high] of the measured value, when known
    baseline_ci: list[float] | None = None
    seed_effects: list[float] | None = None  # the effect under each seed (set by merge_seeds)
    seed_holds: list[bool] | None = None
    verdict: str = field(init=False, default=FAILS)

    def __post_init__(self) -> None:
        if self.direction not in ("above", "below"):
            raise ValueError(f"Lesson direction must be 'above' or 'below', got {self.direction!r}")
        self.verdict = HOLDS if self.holds else FAILS

    @property
    def holds_this_run(self) -> bool:
        """The rule in the class docstring, applied to this run's effect and interval."""
        if self.low is None or self.high is None:
            e = self.effect
            return bool(not math.isnan(e) and (e > self.target if self.direction == "above" else e < self.target))
        if math.isnan(self.low) or math.isnan(self.high):
            return False
        return self.low > self.target if self.direction == "above" else self.high < self.target

    @property
    def holds(self) -> bool:
        if self.seed_holds:
            return all(self.seed_holds)
        return self.holds_this_run

    def effect_text(self) -> str:
        """'0.32 [0.25, 0.39]' (or '1.7 (no CI)'), plus 'mean ± std over seeds' when merged."""
        s = fmt(self.effect) + (f" [{fmt(self.low)}, {fmt(self.high)}]" if self.low is not None else " (no CI)")
        if self.seed_effects and len(self.seed_effects) > 1:
            m = sum(self.seed_effects) / len(self.seed_effects)
            sd = math.sqrt(sum((e - m) ** 2 for e in self.seed_effects) / (len(self.seed_effects) - 1))
            s += f"; {fmt(m)} ± {fmt(sd)} over {len(self.seed_effects)} seeds"
        return s

    def target_text(self) -> str:
        return f"{'>' if self.direction == 'above' else '<'} {fmt(self.target)}"

    def verdict_text(self) -> str:
        if self.seed_holds and len(self.seed_holds) > 1:
            return f"{self.verdict} ({sum(self.seed_holds)}/{len(self.seed_holds)} seeds)"
        return self.verdict


def _with_ci(value: Any, ci: list[float] | None) -> str:
    return fmt(value) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "")


@dataclass
class StageReport:
    """What one stage contributes to the report card."""

    stage: str
    title: str
    rows: list[Row] = field(default_factory=list)
    plots: list[tuple[str, str]] = field(default_factory=list)  # (path relative to run dir, caption)
    text: list[str] = field(default_factory=list)
    seconds: float = 0.0  # wall
    cpu_seconds: float = 0.0  # the stage process's CPU time (all its threads): on a shared machine the steadier cost
    lessons: list[Lesson] = field(default_factory=list)

    def row(self, metric: str, value: Any, baseline: Any = None, note: str = "") -> None:
        self.rows.append(Row(metric, value, baseline, note))

    def plot(self, path: str | Path, caption: str) -> None:
        self.plots.append((str(path), caption))

    def note(self, markdown: str) -> None:
        self.text.append(markdown)

    def lesson(self, claim: str, measured: tuple[str, Any], baseline: tuple[str, Any] | None = None, *,
               effect: Any, target: float = 0.0, direction: Direction = "above",
               effect_name: str = "difference", note: str = "") -> Lesson:
        """Record a claim and whether it holds (rule: `Lesson`).

        measured / baseline: (name, value); a value may be an `eval.stats.Interval` to show its interval.
        effect: the statistic the claim is about, as an `eval.stats.Interval` (from `bootstrap_diff`,
        `bootstrap_win_rate`, ...), an (estimate, low, high[, n]) tuple, or a bare number (no interval).
        E.g. `report.lesson("chain of thought beats direct answering by >= 20 points",
        ("accuracy, CoT", cot_ci), ("accuracy, direct", direct_ci),
        effect=bootstrap_diff_paired(cot, direct), target=0.20)`.
        """
        name, value = measured
        v, vlo, vhi, _ = _ci_parts(value)
        bname, bvalue = baseline if baseline is not None else ("", None)
        b, blo, bhi, _ = _ci_parts(bvalue)
        e, lo, hi, n = _ci_parts(effect)
        if isinstance(e, str) or e is None:
            raise ValueError(f"lesson {claim!r}: effect must be a number or an interval, got {effect!r}")
        les = Lesson(claim, name, v, bname, b, e, lo, hi, n, float(target), direction, effect_name, note,
                     self.stage, [vlo, vhi] if vlo is not None else None, [blo, bhi] if blo is not None else None)
        self.lessons.append(les)
        return les


def _lesson_from_dict(d: dict) -> Lesson:
    d = dict(d)
    d.pop("verdict", None)  # recomputed from the numbers, never trusted from disk
    return Lesson(**d)


def merge_seeds(per_seed: Sequence[Sequence[Lesson]]) -> list[Lesson]:
    """One lesson per (stage, claim) across seed runs: seed 0's numbers, the effect's mean ± std over
    seeds, and a verdict that holds only when it holds under every seed. A claim missing from a seed
    run counts as not holding there."""
    if not per_seed:
        return []
    keys: list[tuple[str, str]] = []
    by_key: dict[tuple[str, str], list[Lesson | None]] = {}
    for i, lessons in enumerate(per_seed):
        for les in lessons:
            k = (les.stage, les.claim)
            if k not in by_key:
                keys.append(k)
                by_key[k] = [None] * len(per_seed)
            by_key[k][i] = les
    out = []
    for k in keys:
        runs = by_key[k]
        first = next(r for r in runs if r is not None)
        effects = [r.effect for r in runs if r is not None]
        out.append(replace(first, seed_effects=effects,
                           seed_holds=[r is not None and r.holds_this_run for r in runs]))
    return out


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


def _md_cell(s: Any) -> str:
    """Text safe inside a markdown table cell (no pipes, no line breaks)."""
    return str(s).replace("|", "\\|").replace("\n", " ")


LESSON_COLUMNS = ("claim", "measured", "baseline", "effect [95 % CI]", "target", "holds?")


def _lesson_cells(les: Lesson) -> list[str]:
    measured = f"{les.measured}: {_with_ci(les.value, les.value_ci)}"
    baseline = f"{les.baseline}: {_with_ci(les.baseline_value, les.baseline_ci)}" if les.baseline else "–"
    effect = f"{les.effect_name} {les.effect_text()}" + (f", n={les.n:,}" if les.n else "")
    return [les.claim, measured, baseline, effect, les.target_text(), les.verdict_text()]


class Report:
    """Collects stage reports under run_dir/report/ and renders run_dir/report.md and report.html."""

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
        return StageReport(d["stage"], d["title"], rows=[Row(**r) for r in d["rows"]],
                           plots=[tuple(p) for p in d["plots"]], text=d["text"], seconds=d.get("seconds", 0.0),
                           cpu_seconds=d.get("cpu_seconds", 0.0),
                           lessons=[_lesson_from_dict(x) for x in d.get("lessons", [])])

    def _stages(self, stages: list[str]) -> list[StageReport]:
        return [sr for sr in map(self.load_stage, stages) if sr is not None]

    def lessons(self, stages: list[str]) -> list[Lesson]:
        """Every stage's lessons, in stage order."""
        return [les for sr in self._stages(stages) for les in sr.lessons]

    def render(self, stages: list[str], header: str = "", lessons: list[Lesson] | None = None,
               out_dir: str | Path | None = None) -> str:
        """report.md: the lessons table first (`lessons` overrides the stages' own, e.g. merged seeds).

        Plot links are relative to `out_dir` (default: the run folder), where the file will be written.
        """
        srs = self._stages(stages)
        lessons = [les for sr in srs for les in sr.lessons] if lessons is None else lessons
        lines = [f"# {self.title}", ""]
        if header:
            lines += [header, ""]
        lines += ["## Lessons", ""]
        if lessons:
            held = sum(les.holds for les in lessons)
            lines += [f"{held} of {len(lessons)} claims hold. A claim holds when the whole 95 % interval of its "
                      "effect (percentile bootstrap over test items) lies beyond its target.", "",
                      "| " + " | ".join(LESSON_COLUMNS) + " |", "|" + "---|" * len(LESSON_COLUMNS)]
            lines += ["| " + " | ".join(map(_md_cell, _lesson_cells(les))) + " |" for les in lessons]
        else:
            lines.append("_No stage recorded a lesson in this run._")
        lines.append("")
        for sr in srs:
            lines += [f"## {sr.title}", ""]
            if sr.rows:
                lines += ["| metric | value | baseline | what it shows |", "|---|---|---|---|"]
                lines += [f"| {_md_cell(r.metric)} | {_md_cell(fmt(r.value))} | {_md_cell(fmt(r.baseline))} | "
                          f"{_md_cell(r.note)} |" for r in sr.rows]
                lines.append("")
            for t in sr.text:
                lines += [t, ""]
            for path, caption in sr.plots:
                if out_dir is not None and not Path(path).is_absolute():
                    path = Path(os.path.relpath(self.run_dir / path, out_dir)).as_posix()
                lines += [f"![{caption}]({path})", f"*{caption}*", ""]
        if srs:
            lines += ["## Time per stage", "", "| stage | wall time | CPU time |", "|---|---|---|",
                      *[f"| {sr.title} | {sr.seconds:,.0f} s | {sr.cpu_seconds:,.0f} s |" for sr in srs],
                      f"| **sum** | {sum(x.seconds for x in srs):,.0f} s | {sum(x.cpu_seconds for x in srs):,.0f} s |",
                      ""]
        return "\n".join(lines)

    def render_html(self, stages: list[str], header: str = "", lessons: list[Lesson] | None = None) -> str:
        """report.html: one file a browser opens offline (inline CSS, plots as data URIs, no scripts)."""
        srs = self._stages(stages)
        lessons = [les for sr in srs for les in sr.lessons] if lessons is None else lessons
        esc = html.escape
        out = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
               '<meta name="viewport" content="width=device-width, initial-scale=1">',
               f"<title>{esc(self.title)}</title><style>{_CSS}</style></head><body>", f"<h1>{esc(self.title)}</h1>"]
        if header:
            out.append(_md_to_html(header))
        out.append("<h2>Lessons</h2>")
        if lessons:
            held = sum(les.holds for les in lessons)
            out.append(f'<p class="summary"><b>{held} of {len(lessons)}</b> claims hold. A claim holds when the '
                       "whole 95 % interval of its effect (percentile bootstrap over test items) lies beyond its "
                       "target.</p>")
            out.append('<table class="lessons wide"><thead><tr>' + "".join(f"<th>{esc(c)}</th>" for c in LESSON_COLUMNS)
                       + "</tr></thead><tbody>")
            for les in lessons:
                cells = _lesson_cells(les)
                cls = "holds" if les.holds else "fails"
                tip = f' title="{esc(les.note)}"' if les.note else ""
                mark = "\u2713" if les.holds else "\u2717"  # a sign besides the colour
                stage = f' <a class="stage" href="#{esc(les.stage)}">{esc(les.stage)}</a>' if les.stage else ""
                out.append(f'<tr class="{cls}"{tip}><td>{_inline(cells[0])}{stage}</td>'
                           + "".join(f"<td>{_inline(c)}</td>" for c in cells[1:-2])
                           + f'<td class="num">{esc(cells[-2])}</td>'
                           + f'<td class="verdict">{mark} {esc(cells[-1])}</td></tr>')
            out.append("</tbody></table>")
        else:
            out.append("<p><i>No stage recorded a lesson in this run.</i></p>")
        out.append("<h2>Stages</h2>")
        for sr in srs:
            n_ok = sum(les.holds for les in sr.lessons)
            badge = f' <span class="badge">{n_ok}/{len(sr.lessons)} lessons hold</span>' if sr.lessons else ""
            out.append(f'<details open id="{esc(sr.stage)}"><summary><span class="title">{esc(sr.title)}</span>'
                       f' <span class="secs">{sr.seconds:,.0f} s</span>{badge}</summary><div class="body">')
            if sr.rows:
                out.append('<table class="wide"><thead><tr><th>metric</th><th>value</th><th>baseline</th>'
                           "<th>what it shows</th></tr></thead><tbody>")
                out += [f"<tr><td>{_inline(r.metric)}</td><td class=num>{esc(fmt(r.value))}</td>"
                        f"<td class=num>{esc(fmt(r.baseline))}</td><td>{_inline(r.note)}</td></tr>" for r in sr.rows]
                out.append("</tbody></table>")
            out += [_md_to_html(t) for t in sr.text]
            for path, caption in sr.plots:
                out.append(self._figure_html(path, caption))
            out.append("</div></details>")
        if srs:
            total = sum(sr.seconds for sr in srs)
            cpu = sum(sr.cpu_seconds for sr in srs)
            out.append("<h2>Time per stage</h2><table><thead><tr><th>stage</th><th>wall time</th><th>CPU time</th>"
                       "</tr></thead><tbody>")
            out += [f"<tr><td>{esc(sr.title)}</td><td class=num>{sr.seconds:,.0f} s</td>"
                    f"<td class=num>{sr.cpu_seconds:,.0f} s</td></tr>" for sr in srs]
            out.append(f"<tr><td><b>sum</b></td><td class=num><b>{total:,.0f} s</b></td>"
                       f"<td class=num><b>{cpu:,.0f} s</b></td></tr></tbody></table>")
        out.append("</body></html>")
        return "\n".join(out)

    def _figure_html(self, path: str, caption: str) -> str:
        """A plot embedded as a data URI, so the page needs no files beside it."""
        f = Path(path) if Path(path).is_absolute() else self.run_dir / path
        cap = f"<figcaption>{_inline(caption)}</figcaption>"
        mime = _MIME.get(f.suffix.lower())
        if mime is None or not f.is_file():
            why = "not found" if mime else "not an image type a browser shows"
            return f'<figure class="missing"><p>plot {html.escape(path)}: {why}</p>{cap}</figure>'
        data = base64.b64encode(f.read_bytes()).decode("ascii")
        return f'<figure><img src="data:{mime};base64,{data}" alt="{html.escape(caption)}">{cap}</figure>'

    def write(self, stages: list[str], header: str = "", lessons: list[Lesson] | None = None,
              out_dir: str | Path | None = None) -> Path:
        """Write report.md and report.html (into `out_dir`, default the run folder); returns report.md's path."""
        folder = Path(out_dir) if out_dir is not None else self.run_dir
        out = folder / "report.md"
        write_text(out, self.render(stages, header, lessons, out_dir=folder))
        write_text(folder / "report.html", self.render_html(stages, header, lessons))
        return out


def write_seed_card(run_dirs: Sequence[str | Path], stages: list[str], out_dir: str | Path,
                    title: str = "genforge report card — lessons over seeds") -> Path:
    """report.md/.html in out_dir for the same speedrun under several seeds: the lessons table merged
    (`merge_seeds`: effect mean ± std, holds only under every seed), then the first run's sections."""
    if not run_dirs:
        raise ValueError("write_seed_card needs at least one run folder")
    reports = [Report(d) for d in run_dirs]
    merged = merge_seeds([r.lessons(stages) for r in reports])
    header = (f"The same run under {len(run_dirs)} seeds ({', '.join(f'`{d}`' for d in run_dirs)}). Each lesson "
              "shows the first seed's numbers and interval, then the effect's mean ± std over seeds; it holds only "
              f"when it holds under every seed. The sections below are the first seed's (`{run_dirs[0]}`).")
    return Report(run_dirs[0], title=title).write(stages, header, merged, out_dir=out_dir)


_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
         ".svg": "image/svg+xml", ".webp": "image/webp"}

_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#1d1d1f;background:#fff}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.92em}table.wide{width:100%}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f4f6}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr:nth-child(even) td{background:#fafafa}
table.lessons tr.holds td.verdict{background:#dcfce7;color:#14532d;font-weight:600}
table.lessons tr.fails td.verdict{background:#fee2e2;color:#7f1d1d;font-weight:600}
table.lessons td.verdict{white-space:nowrap}
details{border:1px solid #ddd;border-radius:6px;margin:.8em 0;padding:0 .8em}
summary{cursor:pointer;padding:.5em 0;font-size:1.1em}summary .title{font-weight:600}
summary .secs{color:#666;font-size:.85em}
.badge{font-size:.8em;background:#eef2ff;color:#3730a3;border-radius:9px;padding:1px 8px}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-style:italic;font-size:.9em}figure.missing p{color:#a00}
code{background:#f3f4f6;padding:0 3px;border-radius:3px;font-size:.92em}
.summary{font-size:1.05em}a.stage{font-size:.8em;color:#666;margin-left:.4em}
"""


def _inline(text: Any) -> str:
    """Escaped text with markdown's inline `code`, **bold** and *italic* (nothing else)."""
    parts = str(text).split("`")
    out = []
    for i, part in enumerate(parts):
        if i % 2 and i < len(parts) - 1:  # between a pair of backticks
            out.append(f"<code>{html.escape(part)}</code>")
            continue
        s = html.escape(part if i % 2 == 0 else "`" + part)
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        s = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<i>\1</i>", s)
        out.append(s)
    return "".join(out)


def _md_to_html(markdown: str) -> str:
    """The markdown that stage notes use: paragraphs, '- ' lists, pipe tables, inline code/bold/italic."""
    out = []
    for block in re.split(r"\n\s*\n", markdown.strip()):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if not lines:
            continue
        if all(re.match(r"\s*[-*] ", ln) for ln in lines):
            out.append("<ul>" + "".join(f"<li>{_inline(re.sub(r'^[-*] ', '', ln.strip()))}</li>"
                                        for ln in lines) + "</ul>")
        elif all(ln.lstrip().startswith("|") for ln in lines):
            rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines
                    if not re.fullmatch(r"\s*\|?[\s:|-]+\|?\s*", ln)]
            head, body = rows[0], rows[1:]
            out.append("<table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead><tbody>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</tbody></table>")
        else:
            out.append("<p>" + "<br>".join(_inline(ln) for ln in lines) + "</p>")
    return "\n".join(out)


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(6, 3.6), dpi=110)


def save_figure(fig, path: str | Path, dpi: int | None = None) -> Path:
    """Write a finished matplotlib figure as PNG atomically (temp + rename), close it, return the path."""
    import matplotlib.pyplot as plt

    from genforge.io import atomic_path

    path = Path(path).with_suffix(".png")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return path


def _save(plt, fig, ax, path: str | Path, title: str, ylabel: str) -> Path:
    """Title, grid, tight layout, then an atomic PNG write."""
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


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
