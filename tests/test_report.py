"""The report card: lessons table first, verdict rules, a self-contained report.html."""

import base64
import math
from html.parser import HTMLParser

import numpy as np
import pytest

from genforge.eval import stats
from genforge.report import FAILS, HOLDS, Lesson, Report, StageReport, line_plot, merge_seeds


class _Page(HTMLParser):
    """Collects what the tests look at: tags seen, image sources, external references, visible text."""

    def __init__(self):
        super().__init__()
        self.tags, self.imgs, self.external, self.text, self.stack = [], [], [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag not in ("img", "meta", "br", "link"):
            self.stack.append(tag)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        for key in ("src", "href"):
            if a.get(key) and not a[key].startswith(("data:", "#")):
                self.external.append(a[key])

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _lesson(low, high, target=0.0, direction="above", effect=None):
    e = (low + high) / 2 if effect is None else effect
    return Lesson("claim", "m", 1.0, effect=e, low=low, high=high, target=target, direction=direction)


@pytest.mark.parametrize("low,high,target,direction,verdict", [
    (0.05, 0.30, 0.0, "above", HOLDS),     # interval above 0: a real improvement
    (-0.05, 0.30, 0.0, "above", FAILS),    # straddles 0: the data cannot tell
    (0.15, 0.40, 0.20, "above", FAILS),    # effect likely, but not shown to reach the 20-point target
    (0.21, 0.40, 0.20, "above", HOLDS),
    (0.50, 0.60, 0.5, "above", FAILS),     # touching the target is not beyond it
    (0.002, 0.008, 0.01, "below", HOLDS),  # int8 costs < 1 % perplexity
    (0.002, 0.012, 0.01, "below", FAILS),
    (0.0, 0.0, 0.0, "above", FAILS),       # all ties: no effect
])
def test_verdict_rules_on_crafted_intervals(low, high, target, direction, verdict):
    assert _lesson(low, high, target, direction).verdict == verdict


def test_verdict_without_interval_and_bad_direction():
    assert Lesson("speedup", "x", 1.7, effect=1.7, target=1.5).verdict == HOLDS
    assert Lesson("speedup", "x", 1.2, effect=1.2, target=1.5).verdict == FAILS
    assert Lesson("nan", "x", None, effect=math.nan).verdict == FAILS
    assert _lesson(math.nan, math.nan).verdict == FAILS
    with pytest.raises(ValueError, match="direction"):
        _lesson(0, 1, direction="up")


def test_stage_lesson_takes_intervals_from_stats():
    rng = np.random.default_rng(0)
    direct = (rng.random(200) < 0.3).astype(float)
    cot = np.maximum(direct, rng.random(200) < 0.45).astype(float)
    sr = StageReport("eval", "Evaluation")
    les = sr.lesson("chain of thought beats direct answering", ("accuracy, CoT", stats.bootstrap_proportion(cot)),
                    ("accuracy, direct", stats.bootstrap_proportion(direct)),
                    effect=stats.bootstrap_diff_paired(cot, direct), target=0.2)
    assert les.stage == "eval" and les.n == 200 and les.value == pytest.approx(cot.mean())
    assert les.value_ci[0] < les.value < les.value_ci[1] and les.baseline_ci is not None
    assert les.verdict == HOLDS and les.low > 0.2
    les2 = sr.lesson("speculative decoding is faster", ("speedup", 1.2), effect=1.2, target=1.5,
                     effect_name="ratio")
    assert les2.verdict == FAILS and les2.low is None and "(no CI)" in les2.effect_text()
    with pytest.raises(ValueError, match="effect"):
        sr.lesson("bad", ("x", 1), effect="high")


def _two_stage_report(tmp_path):
    rep = Report(tmp_path, title="card <test>")
    a = StageReport("pretrain", "Pretraining", seconds=12.0)
    a.row("val bits per byte", 1.234, 8.0, note="falls from `8.0` (raw bytes)")
    a.row("pipes | and <tags>", "a|b", None, note="**bold** note")
    plot = line_plot(tmp_path / "plots" / "loss.png", {"train": ([1, 2, 3], [3.0, 2.0, 1.5])}, "loss", "step", "loss")
    a.plot(plot.relative_to(tmp_path), "training loss")
    a.note("Samples:\n\n- **Alice** lives in Brook\n- `10 groups` <b>not html</b>")
    a.lesson("val bits/byte falls", ("val bpb", 1.234), ("raw bytes", 8.0), effect=(-6.77, -6.8, -6.7, 500),
             target=0.0, direction="below")
    b = StageReport("eval", "Evaluation", seconds=30.0)
    b.row("accuracy", 0.5)
    b.plot("plots/absent.png", "a plot that was never written")
    b.lesson("few-shot beats zero-shot", ("few-shot", 0.4), ("zero-shot", 0.38), effect=(0.02, -0.03, 0.07, 100))
    rep.save_stage(a)
    rep.save_stage(b)
    return rep, plot


def test_report_md_puts_the_lessons_table_first(tmp_path):
    rep, _ = _two_stage_report(tmp_path)
    path = rep.write(["pretrain", "eval", "never_ran"], header="Run folder `x`.")
    md = path.read_text()
    assert md.index("## Lessons") < md.index("## Pretraining") < md.index("## Evaluation") < md.index("Time per")
    table = md[md.index("## Lessons"):md.index("## Pretraining")]
    assert "1 of 2 claims hold" in table
    assert "| val bits/byte falls |" in table and "| holds |" in table
    assert "| few-shot beats zero-shot |" in table and "| does not hold |" in table
    assert "[-6.800, -6.700]" in table and "< 0.000" in table
    assert "pipes \\| and <tags>" in md  # a pipe in a cell does not break the table
    # lessons survive the JSON round trip, verdict recomputed
    assert [les.verdict for les in rep.lessons(["pretrain", "eval"])] == [HOLDS, FAILS]


def test_report_html_is_self_contained_and_escaped(tmp_path):
    rep, plot = _two_stage_report(tmp_path)
    rep.write(["pretrain", "eval"])
    page_html = (tmp_path / "report.html").read_text()
    page = _Page()
    page.feed(page_html)
    page.close()
    assert page.stack == ["html"] or page.stack == []  # every element closed (html may be left to </html>)
    assert page.external == []  # no CDN, no files beside it
    assert page.tags.count("details") == 2 and "summary" in page.tags
    assert len(page.imgs) == 1 and page.imgs[0].startswith("data:image/png;base64,")
    assert base64.b64decode(page.imgs[0].split(",", 1)[1]) == plot.read_bytes()
    text = " ".join(page.text)
    assert text.index("val bits/byte falls") < text.index("Pretraining")  # lessons table first
    for row in ("val bits per byte", "1.234", "pipes | and <tags>", "a|b", "accuracy", "0.500"):
        assert row in text, row
    assert "<b>not html</b>" in text  # a note's HTML is shown, not interpreted
    assert "<tags>" not in page_html and "<code>10 groups</code>" in page_html
    assert "plots/absent.png: not found" in text
    assert "card <test>" in text and "<test>" not in page_html.replace("&lt;test&gt;", "")


def test_report_without_lessons_says_so(tmp_path):
    rep = Report(tmp_path)
    rep.save_stage(StageReport("world", "World"))
    rep.write(["world"])
    assert "No stage recorded a lesson" in (tmp_path / "report.md").read_text()
    assert "No stage recorded a lesson" in (tmp_path / "report.html").read_text()


def test_old_stage_json_without_lessons_still_loads(tmp_path):
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "world.json").write_text(
        '{"stage": "world", "title": "World", "rows": [{"metric": "m", "value": 1, "baseline": null, "note": ""}],'
        ' "plots": [], "text": [], "seconds": 1.0}')
    sr = Report(tmp_path).load_stage("world")
    assert sr.lessons == [] and sr.rows[0].metric == "m"


def test_merge_seeds_holds_only_when_every_seed_holds():
    def les(claim, e):
        x = _lesson(e - 0.05, e + 0.05, effect=e)
        x.claim = claim
        return x

    s0 = [les("A", 0.2), les("B", 0.2), les("C", 0.2)]
    s1 = [les("A", 0.02), les("C", 0.3)]  # A's interval straddles 0 here; B is missing
    s2 = [les("A", 0.25), les("B", 0.3), les("C", 0.25)]
    a, b, c = merge_seeds([s0, s1, s2])
    assert a.seed_effects == [0.2, 0.02, 0.25] and a.seed_holds == [True, False, True]
    assert a.verdict == FAILS and "2/3 seeds" in a.verdict_text()
    assert b.seed_holds == [True, False, True] and b.verdict == FAILS  # missing under a seed: not shown there
    assert c.verdict == HOLDS and c.verdict_text() == "holds (3/3 seeds)"
    assert "0.250 ± 0.050 over 3 seeds" in c.effect_text()
    assert merge_seeds([]) == []


def test_seed_card_merges_lessons_and_links_plots_from_its_own_folder(tmp_path):
    from genforge.report import write_seed_card

    runs = []
    for seed, effect in enumerate([(0.3, 0.2, 0.4), (0.2, 0.1, 0.3), (0.25, -0.05, 0.5)]):
        rep, _ = _two_stage_report(tmp_path / f"seed{seed}")
        sr = rep.load_stage("eval")
        sr.lessons[0] = Lesson("few-shot beats zero-shot", "few-shot", 0.4, effect=effect[0], low=effect[1],
                               high=effect[2], stage="eval")
        rep.save_stage(sr)
        runs.append(tmp_path / f"seed{seed}")
    md = write_seed_card(runs, ["pretrain", "eval"], tmp_path / "seeds").read_text()
    table = md[md.index("## Lessons"):md.index("## Pretraining")]
    assert "0.250 ± 0.050 over 3 seeds" in table and "does not hold (2/3 seeds)" in table
    assert "holds (3/3 seeds)" in table  # the bits/byte lesson holds under every seed
    link = md[md.index("![training loss]("):].split("(", 1)[1].split(")", 1)[0]
    assert link == "../seed0/plots/loss.png" and (tmp_path / "seeds" / link).exists()
    assert (tmp_path / "seeds" / "report.html").read_text().count("data:image/png;base64,") == 1
