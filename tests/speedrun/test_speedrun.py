"""End to end: `genforge speedrun size=smoke` runs every stage, writes the report card, a rerun skips, and
one stage reruns alone from its declared inputs. The first run is the session's `smoke_run` (tests/conftest.py),
shared with the README test."""

import json
import subprocess

import pytest

from genforge.speedrun import STAGES


@pytest.mark.slow
def test_smoke_speedrun_end_to_end(smoke_run):
    run = smoke_run.run
    report = (run / "report.md").read_text()
    for stage in STAGES:
        assert (run / "stages" / f"{stage.NAME}.json").exists(), stage.NAME
        assert f"## {stage.TITLE}" in report, stage.TITLE
    assert (run / "report.html").exists()
    assert (run / "plots" / "pretrain_loss.png").exists()
    assert (run / "config.yaml").exists()  # the resolved config (defaults -> smoke recipe -> command line)
    pre = json.loads((run / "stages" / "pretrain.json").read_text())
    assert pre["val_loss"] < 6.0  # below a uniform guess over the 512-token vocabulary (6.24)
    sft = json.loads((run / "stages" / "sft.json").read_text())
    ev = json.loads((run / "stages" / "eval.json").read_text())
    assert set(ev["direct"]) >= {"arithmetic", "summarization", "translation"}
    assert sft["checkpoint"] == ev["checkpoint"]

    def again(*extra: str) -> subprocess.CompletedProcess:
        r = subprocess.run(smoke_run.cmd + list(extra), cwd=smoke_run.root, env=smoke_run.env, capture_output=True,
                           text=True, timeout=1200)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return r

    # a rerun skips every finished stage and rebuilds the same report
    r2 = again()
    assert r2.stdout.count("skipping") == len(STAGES)
    assert (run / "report.md").read_text() == report
    # one stage alone, from the outputs the earlier stages wrote
    r3 = again("stages=eval", "force=true")
    assert "eval: finished" in r3.stdout and "skipping" not in r3.stdout
