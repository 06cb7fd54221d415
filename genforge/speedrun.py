"""`genforge speedrun`: the whole lifecycle on the embedded tiny world, ending in runs/<name>/report.md.

Stages run in order; each one writes `stages/<stage>.json` (its outputs) when it finishes and its part
of the report card, so a rerun skips finished stages (`force=true` reruns them). A stage is a function
`stage(ctx, report) -> outputs` registered in STAGES by "module:function", so the stage's code lives
with the stage (genforge/train/sft.py has the SFT stage, and so on) and this file only orders them.

Sizes: `smoke` (about 2 minutes, used by the end-to-end test), `tiny` (the default, <= 15 minutes on
2 CPU cores) and `small` (a longer CPU run / a first GPU run).
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genforge.config import to_dict
from genforge.errors import ConfigError
from genforge.io import write_json, write_text
from genforge.report import Report, StageReport

SIZES = ("smoke", "tiny", "small")

# (name, title, "module:function"); later waves append their stages here.
STAGES: list[tuple[str, str, str]] = [
    ("world", "Data: the tiny world", "genforge.stages:world_stage"),
    ("clean", "Data: cleaning and dedup", "genforge.stages:clean_stage"),
    ("tokenizer", "Tokenizer", "genforge.stages:tokenizer_stage"),
    ("pretrain", "Pretraining", "genforge.stages:pretrain_stage"),
    ("sft", "Instruction tuning and PEFT", "genforge.train.sft:sft_stage"),
    ("eval", "Evaluation and prompting strategies", "genforge.eval.stage:eval_stage"),
    ("align", "Alignment: reward model, PPO, DPO, GRPO, constitutional AI", "genforge.train.align_stage:align_stage"),
    ("engine", "Inference engine: KV cache, batching, speculative decoding, watermark, compression",
     "genforge.infer.stage:engine_stage"),
]


@dataclass
class SpeedrunConfig:
    """`genforge speedrun`: every stage on the tiny world, one report card."""

    size: str = "tiny"  # smoke | tiny | small
    name: str = ""  # run folder name under runs_dir (default: the size)
    runs_dir: str = "runs"
    seed: int = 0
    stages: str = "all"  # comma-separated subset, e.g. "world,clean,tokenizer,pretrain"
    force: bool = False  # rerun stages that already finished
    threads: int = 0  # torch threads (0 = default)
    progress: bool = True
    overrides: dict = field(default_factory=dict)  # per-stage knobs: overrides='{pretrain.train.max_steps: 200}'


@dataclass
class Context:
    """What a stage sees: the run folder, its size, the seed and earlier stages' outputs."""

    cfg: SpeedrunConfig
    run_dir: Path
    outputs: dict[str, dict] = field(default_factory=dict)

    @property
    def size(self) -> str:
        return self.cfg.size

    @property
    def seed(self) -> int:
        return self.cfg.seed

    def path(self, *parts: str) -> Path:
        p = self.run_dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def pick(self, smoke: Any, tiny: Any, small: Any = None) -> Any:
        """A value by run size (small defaults to tiny's)."""
        return {"smoke": smoke, "tiny": tiny, "small": tiny if small is None else small}[self.size]

    def knob(self, key: str, default: Any) -> Any:
        """A per-stage override from the command line (speedrun overrides={...}) or the default."""
        v = self.cfg.overrides.get(key, default)
        return type(default)(v) if default is not None and not isinstance(v, type(default)) else v

    def need(self, stage: str) -> dict:
        if stage not in self.outputs:
            raise ConfigError(f"speedrun stage needs the outputs of '{stage}', which has not run; "
                              f"include it in stages=")
        return self.outputs[stage]


def _resolve(spec: str):
    module, fn = spec.split(":")
    return getattr(importlib.import_module(module), fn)


def main(cfg: SpeedrunConfig) -> Path:
    """Run (or resume) the speedrun; returns the report path."""
    if cfg.size not in SIZES:
        raise ConfigError(f"speedrun size must be one of {', '.join(SIZES)}; got '{cfg.size}'")
    from genforge import runtime

    runtime.set_threads(cfg.threads)
    run_dir = Path(cfg.runs_dir) / (cfg.name or cfg.size)
    run_dir.mkdir(parents=True, exist_ok=True)
    names = [s[0] for s in STAGES]
    wanted = names if cfg.stages == "all" else [s.strip() for s in cfg.stages.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise ConfigError(f"unknown speedrun stage(s) {unknown}; known: {', '.join(names)}")
    write_json(run_dir / "speedrun.json", to_dict(cfg))
    ctx = Context(cfg, run_dir)
    report = Report(run_dir, title=f"genforge report card — speedrun '{cfg.size}' (seed {cfg.seed})")
    t_all = time.perf_counter()
    for i, (name, title, spec) in enumerate(STAGES, 1):
        marker = run_dir / "stages" / f"{name}.json"
        if marker.exists() and not (cfg.force and name in wanted):
            ctx.outputs[name] = json.loads(marker.read_text())
            if name in wanted:
                print(f"[{i}/{len(STAGES)}] {name}: done already, skipping (force=true reruns it)", flush=True)
            continue
        if name not in wanted:
            continue
        print(f"[{i}/{len(STAGES)}] {name}: {title} ...", flush=True)
        t0 = time.perf_counter()
        sr = StageReport(name, title)
        outputs = _resolve(spec)(ctx, sr) or {}
        sr.seconds = time.perf_counter() - t0
        report.save_stage(sr)
        ctx.outputs[name] = outputs
        write_json(marker, outputs)
        print(f"[{i}/{len(STAGES)}] {name}: finished in {sr.seconds:.0f} s", flush=True)
    header = (f"Run folder `{run_dir}`; size `{cfg.size}`, seed {cfg.seed}. Every number below was measured "
              "in this run; rerun `make speedrun` to reproduce it.")
    path = report.write(names, header)
    write_text(run_dir / "stages" / "total_seconds.txt", f"{time.perf_counter() - t_all:.1f}\n")
    print(f"report card: {path}", flush=True)
    return path
