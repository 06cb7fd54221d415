"""Two eval runs side by side: every numeric metric of both, with the change from A to B, and
optionally an LLM judge's pairwise verdicts on their outputs.

    genforge eval compare runs/eval/direct runs/eval/cot [judge_url=http://localhost:8000]
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from genforge.errors import DataError
from genforge.io import read_jsonl


def load_results(run: str | Path) -> dict:
    """results.json of a run folder (or the file itself)."""
    p = Path(run)
    f = p / "results.json" if p.is_dir() else p
    if not f.exists():
        raise DataError(f"{f}: no eval results here (run `genforge eval CHECKPOINT out={run}` first)")
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{f}:{e.lineno}: invalid JSON ({e.msg})") from None


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def flat_metrics(results: dict) -> dict[tuple[str, str], float]:
    """{(task, metric): value} for every numeric metric in a results dict (main metric first per task)."""
    out: dict[tuple[str, str], float] = {}
    for name, t in results.get("tasks", {}).items():
        out[(name, t["metric"])] = t["score"]
        for k, v in t.get("metrics", {}).items():
            if _num(v) and k != "chance":
                out.setdefault((name, k), v)
    if "needle" in results:
        out[("needle", "accuracy")] = results["needle"]["mean_accuracy"]
    if "contamination" in results:
        out[("contamination", f"{results['contamination']['n']}-gram rate")] = results["contamination"]["rate"]
    for path, p in results.get("perplexity", {}).items():
        out[(Path(path).name, "bits_per_byte")] = p["bits_per_byte"]
    return out


def _fmt(v: float | None) -> str:
    if v is None:
        return "–"
    if not math.isfinite(v):
        return str(v)
    return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"


def compare_results(a: dict, b: dict, name_a: str = "A", name_b: str = "B") -> str:
    """The side-by-side table of two results dicts."""
    fa, fb = flat_metrics(a), flat_metrics(b)
    keys = list(dict.fromkeys(list(fa) + list(fb)))
    rows = []
    for task, metric in keys:
        va, vb = fa.get((task, metric)), fb.get((task, metric))
        delta = vb - va if va is not None and vb is not None else None
        rows.append((task, metric, _fmt(va), _fmt(vb), "–" if delta is None else f"{delta:+.3f}"))
    sa = a.get("run", {}).get("strategy", "")
    sb = b.get("run", {}).get("strategy", "")
    header = ("task", "metric", f"A ({sa})" if sa else "A", f"B ({sb})" if sb else "B", "B - A")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(5)]

    def line(r) -> str:
        return "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    out = [f"A = {name_a}", f"B = {name_b}", line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    if not rows:
        out.append("(no metrics in either run)")
    return "\n".join(out)


def compare(run_a: str | Path, run_b: str | Path) -> str:
    """Load two run folders' results.json and return the side-by-side table with deltas (B - A)."""
    return compare_results(load_results(run_a), load_results(run_b), str(run_a), str(run_b))


def judge_runs(run_a: str | Path, run_b: str | Path, judge, *, tasks: Sequence[str] | None = None,
               limit: int | None = None) -> dict:
    """LLM-as-judge between two runs: for every generative item both runs answered, ask `judge`
    (see `genforge.eval.judge`) which output is better, in both orders.

    Returns per task: n, b_win_rate (B's wins, order-dependent verdicts as half), consistency,
    first_position_rate and longer_preferred, so the verdict comes with its biases.
    """
    from genforge.eval.judge import Pair, pairwise

    out: dict[str, dict] = {}
    items_a = Path(run_a) / "items"
    if not items_a.is_dir():
        raise DataError(f"{items_a}: no per-item results to judge (run `genforge eval ... out={run_a}` first)")
    for fa in sorted(items_a.glob("*.jsonl")):
        fb = Path(run_b) / "items" / fa.name
        if (tasks and fa.stem not in tasks) or not fb.exists():
            continue
        a = {r["line"]: r for _, r in read_jsonl(fa) if "output" in r and "question" in r}
        b = {r["line"]: r for _, r in read_jsonl(fb) if "output" in r}
        keys = [k for k in a if k in b][:limit or None]
        if not keys:
            continue
        res = pairwise(judge, [Pair(a[k]["question"], a[k]["output"], b[k]["output"]) for k in keys])
        out[fa.stem] = {"n": res["n"], "b_win_rate": 1.0 - res["win_rate_1"], "consistency": res["consistency"],
                        "first_position_rate": res["first_position_rate"], "longer_preferred": res["longer_preferred"]}
    return out


def judge_table(verdicts: dict) -> str:
    """The judge's verdicts as a small table."""
    lines = [f"{'task':<20} {'n':>4} {'B wins':>7} {'consistent':>10} {'picks A':>8} {'picks longer':>12}"]
    for name, v in verdicts.items():
        lines.append(f"{name:<20} {v['n']:>4} {v['b_win_rate']:>7.2f} {v['consistency']:>10.2f} "
                     f"{_fmt(v['first_position_rate']):>8} {_fmt(v['longer_preferred']):>12}")
    return "\n".join(lines)
