"""The speedrun's interp lesson in the smoke run: its outputs, lessons with intervals, and plots."""

import json

import pytest


@pytest.mark.slow
def test_interp_stage_in_the_smoke_run(smoke_run):
    run = smoke_run.run
    out = json.loads((run / "stages" / "interp.json").read_text())
    assert set(out["ece"]) >= {"pretrained", "SFT", "DPO", "PPO (RLHF)"}
    assert all(0.0 <= v <= 1.0 for v in out["ece"].values())
    assert set(out["probe_accuracy"]) == {"pronoun (she/he)", "occupation", "town"}
    assert out["cpu_seconds"] > 0
    lessons = json.loads((run / "report" / "interp.json").read_text())["lessons"]
    claims = " ".join(le["claim"] for le in lessons)
    for topic in ("world map", "probes", "ICL anchors", "lie detector", "calibration", "logit lens"):
        assert topic in claims, topic
    assert all(le["low"] is not None and le["low"] <= le["effect"] <= le["high"] for le in lessons)
    for plot in ("interp_attention", "interp_logit_lens", "interp_probes", "interp_world_map", "interp_icl_anchors",
                 "interp_calibration"):
        assert (run / "plots" / f"{plot}.png").exists(), plot
