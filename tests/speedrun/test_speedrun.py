"""End to end: `genforge speedrun size=smoke` runs every stage, writes the report card, a rerun skips, and
one stage reruns alone from its declared inputs."""

import json
import subprocess
import sys

import pytest

from genforge.speedrun import STAGES


@pytest.mark.slow
def test_smoke_speedrun_end_to_end(tmp_path):
    cmd = [sys.executable, "-m", "genforge", "speedrun", "size=smoke", f"runs_dir={tmp_path}", "progress=false"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = tmp_path / "smoke"
    report = (run / "report.md").read_text()
    for stage in STAGES:
        assert (run / "stages" / f"{stage.NAME}.json").exists(), stage.NAME
        assert f"## {stage.TITLE}" in report, stage.TITLE
    assert (run / "plots" / "pretrain_loss.png").exists()
    assert (run / "config.yaml").exists()  # the resolved config (defaults -> smoke recipe -> command line)
    pre = json.loads((run / "stages" / "pretrain.json").read_text())
    assert pre["val_loss"] < 6.0  # below a uniform guess over the 512-token vocabulary (6.24)
    sft = json.loads((run / "stages" / "sft.json").read_text())
    ev = json.loads((run / "stages" / "eval.json").read_text())
    assert set(ev["direct"]) >= {"arithmetic", "summarization", "translation"}
    assert sft["checkpoint"] == ev["checkpoint"]
    # a rerun skips every finished stage and rebuilds the same report
    r2 = subprocess.run(cmd, capture_output=True, text=True)
    assert r2.returncode == 0
    assert r2.stdout.count("skipping") == len(STAGES)
    assert (run / "report.md").read_text() == report
    # one stage alone, from the outputs the earlier stages wrote
    r3 = subprocess.run(cmd + ["stages=eval", "force=true"], capture_output=True, text=True)
    assert r3.returncode == 0, r3.stdout[-3000:] + r3.stderr[-3000:]
    assert "eval: finished" in r3.stdout and "skipping" not in r3.stdout
