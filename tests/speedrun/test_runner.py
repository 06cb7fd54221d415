"""The speedrun's runner and stage contract: stage order, typed outputs on disk, declared inputs, validated
overrides, size recipes, skip / force."""

import dataclasses
import json
from pathlib import Path

import pytest

from genforge.config import load_config, to_dict
from genforge.errors import ConfigError
from genforge.speedrun import STAGES, SpeedrunConfig, main, resolve
from genforge.speedrun import run as runner
from genforge.speedrun.stage import from_dict, read_outputs, stage_inputs, write_outputs


def test_stage_order_and_contract():
    assert [m.NAME for m in STAGES] == ["world", "clean", "tokenizer", "pretrain", "sft", "peft", "align", "grpo",
                                        "cai", "overopt", "datalessons", "eval", "engine", "rag", "agents",
                                        "objectives", "image", "interp", "safety"]
    runner.check_stages()  # every module has NAME/TITLE/Config/Outputs/run and reads only earlier stages
    for m in STAGES:  # one config section per stage, of the stage's own Config class
        assert isinstance(getattr(SpeedrunConfig(), m.NAME), m.Config), m.NAME
    assert {k: v.__name__ for k, v in stage_inputs(STAGES[4].run).items()} == {
        "world": "Outputs", "tokenizer": "Outputs", "pretrain": "Outputs"}
    assert stage_inputs(STAGES[4].run)["pretrain"] is STAGES[3].Outputs


def test_contract_violations_are_named():
    from genforge.speedrun import sft, world

    with pytest.raises(TypeError, match="'tokenizer' is not an earlier stage"):
        runner.check_stage(sft, {"world": world})

    def bad_run(ctx, cfg, report, *, world: dict) -> None: ...

    with pytest.raises(TypeError, match="Outputs class"):
        stage_inputs(bad_run)


def _example(cls):
    """An instance of an Outputs class with a value of the right type in every field."""
    values = {str: "x", int: 3, float: 0.5, bool: True}
    kw = {}
    for f in dataclasses.fields(cls):
        t = f.type if isinstance(f.type, type) else eval(f.type, {"dict": dict, "list": list})  # noqa: S307
        kw[f.name] = values.get(t, {"a": 1.0} if getattr(t, "__origin__", None) is dict else None)
    return cls(**kw)


@pytest.mark.parametrize("stage", STAGES, ids=[m.NAME for m in STAGES])
def test_outputs_round_trip_through_json(tmp_path, stage):
    out = _example(stage.Outputs)
    write_outputs(tmp_path, stage.NAME, out)
    assert read_outputs(tmp_path, stage.NAME, stage.Outputs) == out
    data = json.loads((tmp_path / "stages" / f"{stage.NAME}.json").read_text())
    assert set(data) == {f.name for f in dataclasses.fields(stage.Outputs)}


def test_outputs_that_do_not_match_say_so(tmp_path):
    from genforge.speedrun import clean

    with pytest.raises(ConfigError, match="missing docs_kept; unexpected dir"):
        from_dict(clean.Outputs, {"clean": "a", "dir": "b"}, "stages/clean.json")
    with pytest.raises(ConfigError, match="needs the outputs of 'clean'.*stages="):
        read_outputs(tmp_path, "clean", clean.Outputs)
    with pytest.raises(TypeError, match="Outputs dataclass"):
        write_outputs(tmp_path, "clean", {"clean": "a"})


def test_overrides_are_validated():
    with pytest.raises(ConfigError, match="did you mean 'peft.steps'"):
        resolve(["peft.stpes=10"])
    with pytest.raises(ConfigError, match="did you mean 'align.ppo_lr'"):
        resolve(["align={ppo_lrr: 0.1}"])
    with pytest.raises(ConfigError, match="expected true/false"):
        resolve(["force=maybe"])
    cfg = resolve(["force=false", "progress=False", "peft.selective=true", "peft={steps: 200}", "sft={chat_steps: 9}"])
    assert cfg.force is False and cfg.progress is False and cfg.peft.selective is True
    assert (cfg.peft.steps, cfg.sft.chat_steps) == (200, 9)
    with pytest.raises(ConfigError, match="section"):
        resolve(["sft=5"])
    with pytest.raises(ConfigError, match="size must be one of"):
        resolve(["size=huge"])


def test_override_typo_fails_on_the_command_line(capsys):
    from genforge.cli import main as cli_main

    assert cli_main(["speedrun", "peft.stpes=10"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'peft.steps'" in err and "Traceback" not in err


@pytest.mark.parametrize("size", ["smoke", "tiny", "small"])
def test_size_recipes_load(size):
    cfg = resolve([f"size={size}"])
    assert cfg.size == size
    want = {"smoke": (12, 2, 512), "tiny": (100, 4, 1024), "small": (400, 6, 2048)}[size]
    assert (cfg.peft.steps, cfg.pretrain.model.depth, cfg.tokenizer.vocab_size) == want
    if size == "tiny":  # the stage configs' defaults are the tiny size
        assert to_dict(cfg) == to_dict(SpeedrunConfig())


def test_command_line_keys_win_over_the_size_recipe():
    cfg = resolve(["size=smoke", "peft.steps=120", "eval.strategies=cot"])
    assert cfg.peft.steps == 120 and cfg.sft.eval_items == 8 and cfg.eval.strategies == ["cot"]
    # a key set to exactly its tiny default still wins over the smoke recipe
    tiny_steps = SpeedrunConfig().peft.steps
    cfg = resolve(["size=smoke", f"peft.steps={tiny_steps}", "pretrain.train.max_steps=7"])
    assert (cfg.peft.steps, cfg.pretrain.train.max_steps, cfg.pretrain.model.depth) == (tiny_steps, 7, 2)


def test_cli_builds_the_speedrun_config_with_the_size_recipe(tmp_path, monkeypatch):
    from genforge import cli

    seen = {}
    monkeypatch.setattr(runner, "main", lambda cfg: seen.setdefault("cfg", cfg))
    monkeypatch.setattr("genforge.speedrun.main", runner.main)
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("sft:\n  eval_items: 3\n")
    tiny_steps = SpeedrunConfig().peft.steps
    cli.run(["speedrun", "--config", str(recipe), "size=smoke", f"peft.steps={tiny_steps}"])
    cfg = seen["cfg"]
    assert cfg.size == "smoke" and cfg.peft.steps == tiny_steps and cfg.sft.eval_items == 3
    assert cfg.pretrain.model.depth == resolve(["size=smoke"]).pretrain.model.depth


def test_unknown_stage_and_missing_input(tmp_path):
    with pytest.raises(ConfigError, match="unknown speedrun stage"):
        main(resolve([f"runs_dir={tmp_path}", "stages=sftt"]))
    with pytest.raises(ConfigError, match="needs the outputs of 'world'.*stages="):
        main(resolve([f"runs_dir={tmp_path}", "stages=align", "size=smoke"]))


def test_data_stages_write_typed_outputs_and_the_resolved_config(data_run: Path):
    from genforge.speedrun import clean, tokenizer, world

    w = read_outputs(data_run, "world", world.Outputs)
    assert (Path(w.tasks_dir) / "train.jsonl").exists() and w.people > 0
    c = read_outputs(data_run, "clean", clean.Outputs)
    assert Path(c.clean).exists() and c.docs_kept > 0
    t = read_outputs(data_run, "tokenizer", tokenizer.Outputs)
    assert t.vocab_size == 512 and (Path(t.shards) / "tokenizer.json").exists()
    saved = load_config(SpeedrunConfig, data_run / "config.yaml")
    assert saved.size == "smoke" and saved.peft.steps == 12
    for name in ("world", "clean", "tokenizer"):
        assert (data_run / "report" / f"{name}.json").exists()


def test_rerun_skips_and_force_reruns_one_stage(data_run: Path, capsys):
    args = ["size=smoke", f"runs_dir={data_run.parent}", "progress=false"]
    marker = data_run / "stages" / "clean.json"
    before = marker.stat().st_mtime_ns
    main(resolve(args + ["stages=world,clean"]))
    out = capsys.readouterr().out
    assert out.count("skipping") == 2 and marker.stat().st_mtime_ns == before
    main(resolve(args + ["stages=clean", "force=true"]))
    out = capsys.readouterr().out
    assert "clean: finished" in out and "] world:" not in out
    assert marker.stat().st_mtime_ns != before
    assert "## Data: cleaning and dedup" in (data_run / "report.md").read_text()


def test_seeds_run_once_per_seed_and_merge_a_card(tmp_path):
    path = main(resolve([f"runs_dir={tmp_path}", "size=smoke", "stages=world", "seeds=0,1", "progress=false"]))
    assert path == tmp_path / "smoke-seeds" / "report.md" and path.exists()
    for seed in (0, 1):
        assert (tmp_path / f"smoke-seed{seed}" / "stages" / "world.json").exists()
    assert "2 seeds" in path.read_text() and (tmp_path / "smoke-seeds" / "report.html").exists()
    with pytest.raises(ConfigError, match="each seed once"):
        main(resolve([f"runs_dir={tmp_path}", "stages=world", "seeds=0,0"]))


def test_most_needed_stage_starts_first():
    rank = runner._dependents()
    assert rank["world"] == len(STAGES) - 2  # every stage but image (which draws its own data) reads it
    assert rank["pretrain"] > rank["image"] == 0 and rank["sft"] > rank["engine"] == 0
    assert rank["align"] > rank["agents"]  # eval, interp and safety wait on align
    # align's split-off lessons are leaves (or nearly): once sft is done the chain's align starts first
    assert rank["align"] > rank["cai"] > rank["grpo"] == rank["overopt"] == 0


def test_jobs_share_out_the_cores(monkeypatch):
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 2)
    assert runner.jobs_and_threads(resolve([])) == (2, 1)
    assert runner.jobs_and_threads(resolve(["jobs=1"])) == (1, 0)  # one by one: PyTorch's default threads
    assert runner.jobs_and_threads(resolve(["jobs=2", "threads=2"])) == (2, 2)
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 1)
    assert runner.jobs_and_threads(resolve([])) == (1, 0)
    with pytest.raises(ConfigError, match="jobs=-1"):
        runner.jobs_and_threads(resolve(["jobs=-1"]))


def test_parallel_runner_waits_for_a_forced_input(data_run: Path, capsys):
    """jobs=2 with clean forced: tokenizer reads clean, so it must not start on clean's old outputs."""
    args = ["size=smoke", f"runs_dir={data_run.parent}", "progress=false", "jobs=2", "threads=1"]
    main(resolve(args + ["stages=clean,tokenizer", "force=true"]))
    out = capsys.readouterr().out
    assert "up to 2 stages at once" in out
    assert out.index("clean: finished") < out.index("tokenizer: Tokenizer ...") < out.index("tokenizer: finished")
    assert "## Tokenizer" in (data_run / "report.md").read_text()


def test_parallel_runner_names_a_missing_input(tmp_path):
    args = ["size=smoke", f"runs_dir={tmp_path}", "progress=false", "jobs=2"]
    with pytest.raises(ConfigError, match=r"need the outputs of \['world'\]"):
        main(resolve(args + ["stages=clean,objectives"]))


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (state, ppid, ...), or None when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] != "Z"


def _stage_processes(runner: int) -> list[int]:
    """The runner's live children other than multiprocessing's resource tracker (Linux /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        st = _stat(int(d.name)) if d.name.isdigit() else None
        if st and int(st[1]) == runner and st[0] != "Z":
            cmd = (d / "cmdline").read_bytes().decode(errors="replace")
            if "resource_tracker" not in cmd:
                out.append(int(d.name))
    return out


def test_stage_processes_die_with_a_killed_runner(tmp_path):
    """SIGKILL the runner while a stage process trains: the stage process exits too (it must not go on writing
    into a run that a rerun is redoing)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import repo_env

    cmd = [sys.executable, "-m", "genforge", "speedrun", "size=smoke", f"runs_dir={tmp_path}", "progress=false",
           "jobs=2", "threads=1", "stages=world,image"]
    runner = subprocess.Popen(cmd, env=repo_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, stages = time.time() + 120, []
        while time.time() < deadline and not (tmp_path / "smoke" / "stages" / "world.json").exists():
            time.sleep(0.5)
        while time.time() < deadline and not stages:  # the image stage's process
            stages = _stage_processes(runner.pid)
            time.sleep(0.5)
        assert stages, "no stage process started"
        os.kill(runner.pid, signal.SIGKILL)
        runner.wait()
        deadline = time.time() + 15
        while time.time() < deadline and any(_alive(c) for c in stages):
            time.sleep(0.5)
        assert not any(_alive(c) for c in stages), "a stage process outlived its runner"
        assert not (tmp_path / "smoke" / "stages" / "image.json").exists()
    finally:
        runner.kill()


def test_a_copied_run_reads_its_own_files(tmp_path):
    """Paths under the run folder are stored as $RUN/...: a copied run's next stage reads the copy, not the original."""
    import shutil

    from genforge.speedrun import pretrain

    run = tmp_path / "a"
    out = pretrain.Outputs(checkpoint=str(run / "pretrain" / "checkpoint"), val_loss=1.0, val_ppl=2.7,
                           tokens_per_s=1.0)
    write_outputs(run, "pretrain", out)
    assert "$RUN/pretrain/checkpoint" in (run / "stages" / "pretrain.json").read_text()
    shutil.copytree(run, tmp_path / "b")
    moved = read_outputs(tmp_path / "b", "pretrain", pretrain.Outputs)
    assert moved.checkpoint == str((tmp_path / "b" / "pretrain" / "checkpoint").resolve())
    assert read_outputs(run, "pretrain", pretrain.Outputs).checkpoint == str(run.resolve() / "pretrain" / "checkpoint")


def test_text_lifecycle_sentence_names_the_finish_and_the_chain():
    from genforge.speedrun.run import TEXT_LIFECYCLE, text_lifecycle_sentence

    # every text stage 10 s long, one after the other, except overopt which ends last after align
    timeline = {n: (10.0 * i, 10.0 * i + 10) for i, n in enumerate(TEXT_LIFECYCLE)}
    timeline["overopt"] = (timeline["align"][1], 1000.0)
    s = text_lifecycle_sentence(timeline)
    assert "finished 16.7 min after the start, over its 15-minute budget" in s
    assert s.rstrip(".").endswith("align 10 s -> overopt 930 s")
    assert "pretrain 10 s -> sft 10 s" in s
    timeline["overopt"] = (timeline["align"][1], 800.0)
    assert "within its 15-minute budget" in text_lifecycle_sentence(timeline)
    del timeline["eval"]  # a partial invocation says nothing
    assert text_lifecycle_sentence(timeline) == ""
