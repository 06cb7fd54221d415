"""The speedrun's runner: `SpeedrunConfig`, the ordered stage list and `main(cfg)`.

A run folder is runs/<name>/: each stage writes its outputs to stages/<stage>.json and its part of the
report card to report/<stage>.json, so a rerun skips finished stages (`force=true` reruns the ones in
`stages=`). The resolved config (defaults -> size recipe -> command line) is saved as config.yaml.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from genforge.config import flatten_keys, load_config, read_recipe, save_resolved, update
from genforge.errors import ConfigError
from genforge.report import Report, StageReport
from genforge.speedrun import (
    agents,
    align,
    clean,
    datalessons,
    engine,
    eval,
    image,
    interp,
    objectives,
    pretrain,
    rag,
    safety,
    sft,
    tokenizer,
    world,
)
from genforge.speedrun.stage import StageContext, check_stage, outputs_path, read_outputs, stage_inputs, write_outputs

SIZES = ("smoke", "tiny", "small")
# The lessons in the order they run; a new lesson is a module plus one entry here (and a section below).
STAGES: tuple[ModuleType, ...] = (world, clean, tokenizer, pretrain, sft, align, datalessons, eval, engine,
                                  rag, agents, objectives, image, interp, safety)
RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "speedrun"


@dataclass
class SpeedrunConfig:
    """`genforge speedrun`: every stage on the tiny world, one report card."""

    size: str = "tiny"  # smoke | tiny | small (loads recipes/speedrun/<size>.yaml under your keys)
    name: str = ""  # run folder name under runs_dir (default: the size)
    runs_dir: str = "runs"
    seed: int = 0
    seeds: list[int] = field(default_factory=list)  # e.g. seeds=0,1,2: one run per seed + a card of mean ± std
    stages: str = "all"  # comma-separated subset, e.g. "world,clean,tokenizer,pretrain"
    force: bool = False  # rerun the chosen stages even if they finished
    threads: int = 0  # torch threads (0 = default)
    progress: bool = True
    world: world.Config = field(default_factory=world.Config)
    clean: clean.Config = field(default_factory=clean.Config)
    tokenizer: tokenizer.Config = field(default_factory=tokenizer.Config)
    pretrain: pretrain.Config = field(default_factory=pretrain.Config)
    sft: sft.Config = field(default_factory=sft.Config)
    eval: eval.Config = field(default_factory=eval.Config)
    align: align.Config = field(default_factory=align.Config)
    datalessons: datalessons.Config = field(default_factory=datalessons.Config)
    engine: engine.Config = field(default_factory=engine.Config)
    rag: rag.Config = field(default_factory=rag.Config)
    agents: agents.Config = field(default_factory=agents.Config)
    objectives: objectives.Config = field(default_factory=objectives.Config)
    image: image.Config = field(default_factory=image.Config)
    interp: interp.Config = field(default_factory=interp.Config)
    safety: safety.Config = field(default_factory=safety.Config)


def recipe_path(size: str) -> Path:
    """recipes/speedrun/<size>.yaml (shipped inside the package)."""
    if size not in SIZES:
        raise ConfigError(f"speedrun size must be one of {', '.join(SIZES)}; got '{size}'")
    return RECIPES / f"{size}.yaml"


def resolve(overrides: dict | list | None = None, recipe: str | Path | None = None) -> SpeedrunConfig:
    """The config for `genforge speedrun [--config RECIPE] key=value ...`: defaults, then the size's recipe
    (recipes/speedrun/<size>.yaml), then the user's recipe, then the overrides.

    Every key is validated (an unknown key names the closest one; "false" is False).
    """
    size = load_config(SpeedrunConfig, recipe, overrides).size  # validates every key before the recipe is read
    cfg = load_config(SpeedrunConfig, recipe_path(size))
    if recipe is not None:
        cfg = update(cfg, flatten_keys(read_recipe(recipe)))
    return update(cfg, overrides)



def check_stages() -> None:
    """Every lesson follows the stage contract and reads only earlier stages."""
    earlier: dict[str, ModuleType] = {}
    for mod in STAGES:
        check_stage(mod, earlier)
        earlier[mod.NAME] = mod


def _wanted(cfg: SpeedrunConfig) -> list[str]:
    names = [m.NAME for m in STAGES]
    wanted = names if cfg.stages == "all" else [s.strip() for s in cfg.stages.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise ConfigError(f"unknown speedrun stage(s) {unknown}; known: {', '.join(names)}")
    return wanted


def main(cfg: SpeedrunConfig) -> Path:
    """Run (or resume) the speedrun for a config built by `resolve`; returns the report path.

    With `seeds=0,1,2` the whole run repeats per seed (runs/<name>-seed<k>/, each resumable on its own) and
    runs/<name>-seeds/report.md merges their lessons: each effect's mean ± std over seeds, holding only when
    it holds under every seed.
    """
    if cfg.seeds:
        return _main_seeds(cfg)
    return _main_one(cfg)


def _main_seeds(cfg: SpeedrunConfig) -> Path:
    from dataclasses import replace

    from genforge.report import write_seed_card

    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"seeds={cfg.seeds}: each seed once, e.g. seeds=0,1,2")
    base = cfg.name or cfg.size
    run_dirs = []
    for seed in cfg.seeds:
        print(f"== seed {seed} ==", flush=True)
        one = replace(cfg, seed=seed, seeds=[], name=f"{base}-seed{seed}")
        _main_one(one)
        run_dirs.append(Path(cfg.runs_dir) / one.name)
    out_dir = Path(cfg.runs_dir) / f"{base}-seeds"
    save_resolved(cfg, out_dir)
    path = write_seed_card(run_dirs, [m.NAME for m in STAGES], out_dir)
    print(f"report card over seeds {cfg.seeds}: {path}", flush=True)
    return path


def _main_one(cfg: SpeedrunConfig) -> Path:
    from genforge import runtime

    check_stages()
    wanted = _wanted(cfg)
    runtime.set_threads(cfg.threads)
    run_dir = Path(cfg.runs_dir) / (cfg.name or cfg.size)
    save_resolved(cfg, run_dir)
    ctx = StageContext(run_dir, cfg.size, cfg.seed, cfg.threads, cfg.progress)
    report = Report(run_dir, title=f"genforge report card — speedrun '{cfg.size}' (seed {cfg.seed})")
    t_all = time.perf_counter()
    for i, mod in enumerate(STAGES, 1):
        name, tag = mod.NAME, f"[{i}/{len(STAGES)}] {mod.NAME}"
        if outputs_path(run_dir, name).exists() and not (cfg.force and name in wanted):
            if name in wanted:
                print(f"{tag}: done already, skipping (force=true reruns it)", flush=True)
            continue
        if name not in wanted:
            continue
        inputs = {n: read_outputs(run_dir, n, cls) for n, cls in stage_inputs(mod.run).items()}
        print(f"{tag}: {mod.TITLE} ...", flush=True)
        t0 = time.perf_counter()
        sr = StageReport(name, mod.TITLE)
        outputs = mod.run(ctx, getattr(cfg, name), sr, **inputs)
        sr.seconds = time.perf_counter() - t0
        report.save_stage(sr)
        write_outputs(run_dir, name, outputs)
        print(f"{tag}: finished in {sr.seconds:.0f} s", flush=True)
    header = (f"Run folder `{run_dir}`; size `{cfg.size}`, seed {cfg.seed}. Every number below was measured "
              "in this run; rerun `make speedrun` to reproduce it.")
    path = report.write([m.NAME for m in STAGES], header)
    from genforge.io import write_text

    write_text(run_dir / "stages" / "total_seconds.txt", f"{time.perf_counter() - t_all:.1f}\n")
    print(f"report card: {path} (and {path.with_suffix('.html')})", flush=True)
    return path
