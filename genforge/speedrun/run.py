"""The speedrun's runner: `SpeedrunConfig`, the ordered stage list and `main(cfg)`.

A run folder is runs/<name>/: each stage writes its outputs to stages/<stage>.json and its part of the
report card to report/<stage>.json, so a rerun skips finished stages (`force=true` reruns the ones in
`stages=`). The resolved config (defaults -> size recipe -> command line) is saved as config.yaml.
"""

from __future__ import annotations

import os
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
    cai,
    clean,
    datalessons,
    engine,
    eval,
    grpo,
    image,
    interp,
    objectives,
    overopt,
    peft,
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
STAGES: tuple[ModuleType, ...] = (world, clean, tokenizer, pretrain, sft, peft, align, grpo, cai, overopt,
                                  datalessons, eval, engine, rag, agents, objectives, image, interp, safety)
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
    threads: int = 0  # torch threads per stage process (0 = the CPU cores shared out between the jobs)
    jobs: int = 0  # stages run at once, each in its own process, when their inputs are ready (0 = auto: 2 when
    # the machine has >= 2 cores). Measured on 2 idle cores at the tiny training shape, run side by side: two
    # 1-thread trainings make 11.8 k + 11.7 k tokens/s against 20.7 k for one 2-thread training (1.14x)
    progress: bool = True  # progress bars (with jobs > 1: a status line per stage start/finish instead)
    world: world.Config = field(default_factory=world.Config)
    clean: clean.Config = field(default_factory=clean.Config)
    tokenizer: tokenizer.Config = field(default_factory=tokenizer.Config)
    pretrain: pretrain.Config = field(default_factory=pretrain.Config)
    sft: sft.Config = field(default_factory=sft.Config)
    peft: peft.Config = field(default_factory=peft.Config)
    eval: eval.Config = field(default_factory=eval.Config)
    align: align.Config = field(default_factory=align.Config)
    grpo: grpo.Config = field(default_factory=grpo.Config)
    cai: cai.Config = field(default_factory=cai.Config)
    overopt: overopt.Config = field(default_factory=overopt.Config)
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



def _run_parallel(cfg: SpeedrunConfig, todo: list[str], jobs: int, threads: int, index: dict[str, int],
                  timeline: dict[str, tuple[float, float]], t_all: float) -> None:
    """Run `todo` with up to `jobs` stage processes at once, each stage as soon as the stages it reads have
    finished. Progress bars are off (they would interleave); a line per start and finish, and while output is a
    terminal a status line every 30 s. A failing stage stops new starts; the running ones finish (their outputs
    are kept, so the rerun resumes) and the error is raised. Each finished stage's (start, end), in seconds after
    `t_all`, goes into `timeline`."""
    import multiprocessing
    import sys
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    needs = {m.NAME: set(stage_inputs(m.run)) for m in STAGES}
    rank = _dependents()
    run_dir = _run_dir(cfg)
    pending = list(todo)
    running: dict = {}  # future -> (name, start time, its executor)
    error: BaseException | None = None
    tty = sys.stdout.isatty()
    print(f"running up to {jobs} stages at once, {threads} torch thread(s) each (jobs=1 runs them one by one)",
          flush=True)
    # One fresh process per stage (an executor of one worker each): no stage inherits another's threads, open
    # stores or memory. spawn, not fork: a forked child inherits the parent's OpenMP state and can deadlock.
    spawn = multiprocessing.get_context("spawn")
    try:
        while pending or running:
            busy = set(pending) | {n for n, _, _ in running.values()}  # a forced rerun's old outputs do not count
            ready = [n for n in pending if error is None
                     and all(d not in busy and outputs_path(run_dir, d).exists() for d in needs[n])]
            ready.sort(key=lambda n: (-rank[n], index[n]))
            for name in ready[:jobs - len(running)]:
                pending.remove(name)
                print(f"[{index[name]}/{len(STAGES)}] {name}: {STAGES[index[name] - 1].TITLE} ...", flush=True)
                pool = ProcessPoolExecutor(max_workers=1, mp_context=spawn)
                running[pool.submit(_run_stage, cfg, name, threads, False, os.getpid())] = (
                    name, time.perf_counter(), pool)
            if not running:
                if error is None:  # nothing runs and nothing can start: an input stage is not in stages=
                    missing = sorted({d for n in pending for d in needs[n]
                                      if not outputs_path(run_dir, d).exists() and d not in pending})
                    raise ConfigError(f"speedrun stages {pending} need the outputs of {missing}; add them to stages=")
                break
            done, _ = wait(running, timeout=30, return_when=FIRST_COMPLETED)
            for fut in done:
                name, t_start, pool = running.pop(fut)
                pool.shutdown()
                try:
                    seconds = fut.result()
                    timeline[name] = (t_start - t_all, time.perf_counter() - t_all)
                    print(f"[{index[name]}/{len(STAGES)}] {name}: finished in {seconds:.0f} s", flush=True)
                except BaseException as e:  # noqa: BLE001 — re-raised once the running stages are done
                    print(f"[{index[name]}/{len(STAGES)}] {name}: failed ({type(e).__name__}: {e})", flush=True)
                    error = error or e
            if not done and tty:
                now = time.perf_counter()
                print("  running: " + ", ".join(f"{n} {now - t:.0f} s" for n, t, _ in running.values()), flush=True)
    finally:  # Ctrl-C or an error here: stop the stage processes (their outputs are not written; a rerun resumes)
        for _, _, pool in running.values():
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
    if error is not None:
        raise error


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


def jobs_and_threads(cfg: SpeedrunConfig) -> tuple[int, int]:
    """(stage processes at once, torch threads each) for this machine: `jobs=0` -> 2 on >= 2 cores, and the
    cores are shared out between the jobs unless `threads` is set."""
    cores = os.cpu_count() or 1
    jobs = cfg.jobs or (2 if cores >= 2 else 1)
    if jobs < 1:
        raise ConfigError(f"jobs={cfg.jobs}: give the number of stages to run at once (>= 1, or 0 = auto)")
    threads = cfg.threads or (max(1, cores // jobs) if jobs > 1 else 0)
    return jobs, threads


def _run_stage(cfg: SpeedrunConfig, name: str, threads: int, progress: bool, parent: int = 0) -> float:
    """Run one stage (in this process or a worker's): read its inputs, run it, save its report and outputs.
    Returns its wall seconds. Outputs are written last, so a killed stage reruns whole on resume. `parent`: the
    runner's pid when this is a stage process, which then exits when the runner dies (even by SIGKILL)."""
    from genforge import runtime

    if parent:
        _exit_with(parent)

    mod = next(m for m in STAGES if m.NAME == name)
    runtime.set_threads(threads)
    run_dir = _run_dir(cfg)
    ctx = StageContext(run_dir, cfg.size, cfg.seed, threads, progress)
    inputs = {n: read_outputs(run_dir, n, cls) for n, cls in stage_inputs(mod.run).items()}
    t0, c0 = time.perf_counter(), time.process_time()
    sr = StageReport(name, mod.TITLE)
    outputs = mod.run(ctx, getattr(cfg, name), sr, **inputs)
    sr.seconds, sr.cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    Report(run_dir).save_stage(sr)
    write_outputs(run_dir, name, outputs)
    return sr.seconds


def _exit_with(parent: int) -> None:
    """Exit this process when `parent` is gone: a stage process must not outlive a killed runner (it would go on
    training, and write outputs into a run that a rerun is already redoing)."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="genforge-parent-watch", daemon=True).start()


def _run_dir(cfg: SpeedrunConfig) -> Path:
    return Path(cfg.runs_dir) / (cfg.name or cfg.size)


def _todo(cfg: SpeedrunConfig, wanted: list[str], run_dir: Path) -> list[str]:
    """The wanted stages that still have to run, in STAGES order (finished ones are skipped unless forced)."""
    todo = []
    for i, mod in enumerate(STAGES, 1):
        name = mod.NAME
        if name not in wanted:
            continue
        if outputs_path(run_dir, name).exists() and not cfg.force:
            print(f"[{i}/{len(STAGES)}] {name}: done already, skipping (force=true reruns it)", flush=True)
            continue
        todo.append(name)
    return todo


def _dependents() -> dict[str, int]:
    """How many later stages need each stage, directly or not: the scheduler starts the most-needed first, so
    the long chain (pretrain -> sft -> align -> eval) is never queued behind a leaf like the image stage."""
    needs = {m.NAME: set(stage_inputs(m.run)) for m in STAGES}
    closure: dict[str, set[str]] = {}
    for m in STAGES:  # STAGES is in dependency order
        closure[m.NAME] = set(needs[m.NAME]).union(*(closure[n] for n in needs[m.NAME]))
    return {m.NAME: sum(m.NAME in c for c in closure.values()) for m in STAGES}


# The text lifecycle of issue 22 (data .. pretraining .. alignment .. evaluation .. inference): its budget is 15 min
# on 2 cores, the rest of the run's 25 min going to retrieval, agents, objectives, images, interpretability, safety.
TEXT_LIFECYCLE = ("world", "clean", "tokenizer", "pretrain", "sft", "peft", "align", "grpo", "cai", "overopt",
                  "datalessons", "eval", "engine")
TEXT_BUDGET_MIN = 15.0


def text_lifecycle_sentence(timeline: dict[str, tuple[float, float]]) -> str:
    """' The text lifecycle ... finished N min after the start (budget 15)...' when this invocation ran all of it,
    with its longest chain of stages that each waited for the last (its critical path), else ''."""
    if not all(n in timeline for n in TEXT_LIFECYCLE):
        return ""
    end = max(timeline[n][1] for n in TEXT_LIFECYCLE)
    needs = {m.NAME: set(stage_inputs(m.run)) for m in STAGES}
    # walk back from the last text stage to finish: each step to the input that finished last before it started
    chain = [max(TEXT_LIFECYCLE, key=lambda n: timeline[n][1])]
    while True:
        ins = [d for d in needs[chain[-1]] if d in timeline]
        if not ins:
            break
        chain.append(max(ins, key=lambda d: timeline[d][1]))
    path = " -> ".join(f"{n} {timeline[n][1] - timeline[n][0]:.0f} s" for n in reversed(chain) if
                       timeline[n][1] - timeline[n][0] >= 5)
    verdict = "within" if end / 60 <= TEXT_BUDGET_MIN else "over"
    return (f" The text lifecycle ({len(TEXT_LIFECYCLE)} stages, {TEXT_LIFECYCLE[0]} .. {TEXT_LIFECYCLE[-1]}) "
            f"finished {end / 60:.1f} min after the start, {verdict} its {TEXT_BUDGET_MIN:g}-minute budget; the "
            f"chain it waited on: {path}.")


def _main_one(cfg: SpeedrunConfig) -> Path:
    check_stages()
    wanted = _wanted(cfg)
    run_dir = _run_dir(cfg)
    save_resolved(cfg, run_dir)
    jobs, threads = jobs_and_threads(cfg)
    report = Report(run_dir, title=f"genforge report card — speedrun '{cfg.size}' (seed {cfg.seed})")
    t_all = time.perf_counter()
    todo = _todo(cfg, wanted, run_dir)
    index = {m.NAME: i for i, m in enumerate(STAGES, 1)}
    timeline: dict[str, tuple[float, float]] = {}  # stage -> (start, end) in seconds after t_all
    if jobs == 1 or len(todo) <= 1:
        for name in todo:
            tag = f"[{index[name]}/{len(STAGES)}] {name}"
            print(f"{tag}: {STAGES[index[name] - 1].TITLE} ...", flush=True)
            t_start = time.perf_counter()
            seconds = _run_stage(cfg, name, threads, cfg.progress)
            timeline[name] = (t_start - t_all, time.perf_counter() - t_all)
            print(f"{tag}: finished in {seconds:.0f} s", flush=True)
    else:
        _run_parallel(cfg, todo, jobs, threads, index, timeline, t_all)
    from genforge.io import write_json, write_text

    wall = time.perf_counter() - t_all
    timing = run_dir / "stages" / "last_run.txt"  # the last invocation that ran stages: a no-op rerun keeps it
    if todo:
        write_text(timing, f"The last invocation that ran stages ran {len(todo)} in {wall / 60:.1f} min wall on "
                           f"{os.cpu_count()} CPU core(s), up to {jobs} at once (`jobs=`), so the stage times at the "
                           "end overlap." + text_lifecycle_sentence(timeline))
        write_json(run_dir / "stages" / "timeline.json", {n: {"start": a, "end": b} for n, (a, b) in timeline.items()})
        write_text(run_dir / "stages" / "total_seconds.txt", f"{wall:.1f}\n")
    header = (f"Run folder `{run_dir}`; size `{cfg.size}`, seed {cfg.seed}. Every number below was measured "
              "in this run; rerun `make speedrun` to reproduce it. " + (timing.read_text() if timing.exists() else ""))
    path = report.write([m.NAME for m in STAGES], header)
    print(f"report card: {path} (and {path.with_suffix('.html')})", flush=True)
    return path
