"""End to end: `genforge speedrun size=smoke` runs every stage, writes the report card, and a rerun skips."""

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
    for name, title, _ in STAGES:
        assert (run / "stages" / f"{name}.json").exists(), name
        assert f"## {title}" in report, title
    assert (run / "plots" / "pretrain_loss.png").exists()
    pre = json.loads((run / "stages" / "pretrain.json").read_text())
    assert pre["val_loss"] < 6.0  # below a uniform guess over the 512-token vocabulary (6.24)
    # a rerun skips every finished stage and rebuilds the same report
    r2 = subprocess.run(cmd, capture_output=True, text=True)
    assert r2.returncode == 0
    assert r2.stdout.count("skipping") == len(STAGES)
    assert (run / "report.md").read_text() == report
