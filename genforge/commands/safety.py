"""`genforge safety RUN_DIR`: the safety suite on a finished speedrun folder (or on checkpoints you name)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from genforge.errors import ConfigError
from genforge.safety.suite import SuiteConfig


@dataclass
class SafetyConfig:
    """Bias, jailbreaks, injection, extraction, detection, hallucination, unlearning, editing and garak on a run's
    models; writes OUT/report.md (default: RUN_DIR/safety_report/)."""

    run_dir: str = ""  # a speedrun folder (runs/tiny): its stages/*.json name the world, corpus and models
    out: str = ""  # where the report goes (default: RUN_DIR/safety_report)
    base: str = ""  # override or add checkpoints by role (pretrained base, SFT chat, constitutional AI, RLHF)
    sft: str = ""
    cai: str = ""
    rlhf: str = ""
    world_dir: str = ""  # override the world folder (world.json, canaries.jsonl, bias.json)
    corpus: str = ""  # override the pretraining corpus (JSONL with "text"; default: the run's cleaned corpus)
    suite: SuiteConfig = field(default_factory=SuiteConfig)


def _from_run(run_dir: Path) -> tuple[dict[str, str], str, str]:
    from genforge.io import read_run_json

    def stage(name: str) -> dict:
        return read_run_json(run_dir, name)

    al = stage("align")
    models = {"base": stage("pretrain").get("checkpoint", ""), "sft": stage("sft").get("checkpoint", ""),
              "cai": stage("cai").get("rlaif", al.get("rlaif", "")), "rlhf": al.get("ppo", "")}  # older runs: align
    return models, stage("world").get("dir", ""), stage("clean").get("clean", "")


def main(cfg: SafetyConfig) -> Path:
    from genforge.report import Report, StageReport
    from genforge.safety.suite import run_suite

    models, world_dir, corpus = _from_run(Path(cfg.run_dir)) if cfg.run_dir else ({}, "", "")
    models.update({k: v for k, v in (("base", cfg.base), ("sft", cfg.sft), ("cai", cfg.cai),
                                     ("rlhf", cfg.rlhf)) if v})
    models = {k: v for k, v in models.items() if v}
    world_dir = cfg.world_dir or world_dir
    corpus = cfg.corpus or corpus
    if not models or not world_dir:
        raise ConfigError("genforge safety needs a run folder (genforge safety runs/tiny) or world_dir= and at "
                          "least one of base= sft= cai= rlhf=")
    out = Path(cfg.out or Path(cfg.run_dir or ".") / "safety_report")
    sr = StageReport("safety", "Safety suite")
    run_suite(models, world_dir, corpus or None, cfg.suite, sr, out / "work", out)
    rep = Report(out, title="genforge safety suite")
    rep.save_stage(sr)
    path = rep.write(["safety"], "Models: " + ", ".join(f"{k} = `{v}`" for k, v in models.items()))
    print(f"safety report: {path}", flush=True)
    return path
