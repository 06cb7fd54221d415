"""The `objectives` stage at smoke size on a smoke world: outputs, lessons and plots are all there."""

from genforge.config import read_recipe, update
from genforge.report import StageReport
from genforge.speedrun import objectives
from genforge.speedrun.run import recipe_path
from genforge.speedrun.stage import StageContext
from genforge.speedrun.world import Outputs as WorldOutputs
from genforge.world import generate_world


def test_objectives_stage_smoke(tmp_path):
    generate_world(tmp_path / "world", seed=0, size="smoke")
    cfg = update(objectives.Config(), read_recipe(recipe_path("smoke"))["objectives"])
    ctx = StageContext(tmp_path, size="smoke", progress=False)
    report = StageReport("objectives", objectives.TITLE)
    w = WorldOutputs(dir=str(tmp_path / "world"), tasks_dir=str(tmp_path / "world" / "tasks"), people=40, towns=8,
                     objects=12, seconds=0.0)
    out = objectives.run(ctx, cfg, report, world=w)
    assert set(out.transfer["n=8"]) == {"pretrained", "random"}
    assert set(out.architectures) == {"topic", "translation", "summarization"}
    assert "encoder-only" in out.architectures["topic"] and "encoder-only" not in out.architectures["translation"]
    assert {"ar", "mp-1", "mp-2"} <= set(out.mask_predict)
    assert out.lstm["LSTM_loss"] > 0 and out.cpu_seconds > 0
    assert 0 <= out.tagging["tag_mlm"] <= 1 and 0 <= out.tagging["mlm_masked_acc"] <= 1
    claims = " ".join(les.claim for les in report.lessons)
    for key in ("MiniLM", "MLM pretraining", "topic", "translation", "mask-predict", "LSTM", "quadratically"):
        assert key in claims
    for _, caption in report.plots:
        assert caption
    assert (tmp_path / "plots" / "objectives_transfer.png").exists()
