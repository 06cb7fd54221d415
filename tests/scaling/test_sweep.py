"""`genforge scaling` end to end at a toy size: runs on the shared trainer, fits, held-out check, emergence, report."""

import json
import os
import subprocess
import sys

import pytest

from genforge.errors import ConfigError
from genforge.scaling.emergence import ChoiceResult, bootstrap_ece_diff, choice_context, ece, solution_pair
from genforge.scaling.sweep import ScalingConfig, plan_runs
from tests.helpers import make_shards

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _tasks(folder):
    rows = []
    for i in range(6):
        a, b = 10 + i, 20 + i
        rows.append({"task": "arithmetic", "prompt": f"What is {a} plus {b}?", "question": f"What is {a} plus {b}?",
                     "rationale": f"{a} plus {b} is {a + b}.", "answer": str(a + b)})
        opts = ["10", "20", "30", "40"]
        rows.append({"task": "multiple_choice", "question": f"Which is {opts[i % 4]}?\nA. 10\nB. 20\nC. 30\nD. 40",
                     "prompt": "", "rationale": f"It is {opts[i % 4]}.\nThat is option {'ABCD'[i % 4]}: {opts[i % 4]}.",
                     "answer": "ABCD"[i % 4], "options": opts, "gold_index": i % 4})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


ARGS = ["depths=[1, 2, 3]", "flops=[1.0e9, 2.0e9, 4.0e9]", "heldout_depth=4", "heldout_flops=8.0e9", "seq_len=32",
        "eval_batches=2", "min_steps=3", "bootstrap=10", "emergence_items=6", "train.micro_batch=4",
        "model.max_seq_len=64", "train.progress=false"]


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaling")
    shards, tasks, out = make_shards(root / "shards"), _tasks(root / "tasks"), root / "out"
    cmd = [sys.executable, "-m", "genforge", "scaling", f"out_dir={out}", f"shards={shards}", f"tasks={tasks}", *ARGS]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return out, cmd, r.stdout


@pytest.mark.slow  # ~2 minutes: 10 training runs, fits, emergence
def test_sweep_trains_every_run_and_reports_the_law(sweep_dir):
    out, _, stdout = sweep_dir
    res = json.loads((out / "results.json").read_text())
    assert len(res["runs"]) == 9 and {r["depth"] for r in res["runs"]} == {1, 2, 3}
    for r in res["runs"]:
        assert os.path.isdir(r["checkpoint"]) and r["val_loss"] > 0
        assert r["tokens"] == r["steps"] * 4 * 32
    # each budget's runs spend (about) the same compute: 6 N D within one step's worth
    for r in res["runs"]:
        assert 6 * r["n"] * r["tokens"] == pytest.approx(r["flops"], rel=0.35)
    pred = json.loads((out / "prediction.json").read_text())
    assert pred["predicted_loss"] == pytest.approx(res["heldout_predicted"])
    assert res["heldout"]["depth"] == 4 and res["isoflops"] is not None
    assert "held-out" in stdout
    report = (out / "report.md").read_text()
    for text in ("fitted law", "power law in parameters", "held-out", "compute-optimal", "exact match"):
        assert text in report, text
    for png in ("frontier", "isoflop", "exponents", "emergence", "calibration"):
        assert (out / "plots" / f"{png}.png").stat().st_size > 1000, png
    e = res["emergence"]
    assert e["depths"] == [1, 2, 3, 4] and set(e["tasks"]) == {"arithmetic", "multiple_choice"}


@pytest.mark.slow
def test_rerun_reuses_finished_runs(sweep_dir):
    out, cmd, _ = sweep_dir
    before = json.loads((out / "results.json").read_text())
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    after = json.loads((out / "results.json").read_text())
    assert [x["val_loss"] for x in after["runs"]] == [x["val_loss"] for x in before["runs"]]


def test_budgets_too_small_for_a_size_are_refused():
    cfg = ScalingConfig(depths=[1, 2, 8], flops=[1e10, 2e10], min_steps=10)
    with pytest.raises(ConfigError, match="depth 8 .* steps"):
        plan_runs(cfg, vocab=400)


def test_ece_and_items():
    assert ece([0.9, 0.9, 0.9, 0.9], [1, 1, 1, 1]) == pytest.approx(0.1)
    assert ece([0.6, 0.6], [1, 0]) == pytest.approx(0.1)
    good = ChoiceResult([0.9] * 20, [1.0] * 18 + [0.0] * 2)
    bad = ChoiceResult([0.9] * 20, [1.0] * 5 + [0.0] * 15)
    est, lo, hi, n = bootstrap_ece_diff(bad, good, n_resamples=200)
    assert est == pytest.approx(0.65 - 0.0) and lo > 0 and n == 20
    row = {"question": "Q?", "rationale": "a.\nThat is option B: x.", "answer": "B"}
    assert solution_pair(row) == ("Q?\na.\nThat is option B: x.\nThe answer is", " B.")
    assert choice_context(row) == "Q?\na.\nThe answer is"
