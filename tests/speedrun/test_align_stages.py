"""The alignment lessons split into stages: align (RM, PPO with KL, DPO) on the chain that eval waits on, and
grpo, cai and overopt beside it. Contract, who reads what, the over-optimisation lesson's logic on synthetic
curves, and (slow) the smoke run's outputs."""

import json
import random
from pathlib import Path

import pytest

from genforge.report import StageReport
from genforge.speedrun import STAGES, align, cai, grpo, overopt
from genforge.speedrun import run as runner
from genforge.speedrun.stage import StageContext, stage_inputs


def inputs(mod) -> set[str]:
    return set(stage_inputs(mod.run))


def test_split_stages_read_only_what_they_use():
    names = [m.NAME for m in STAGES]
    assert names.index("align") < names.index("overopt") < names.index("eval")
    assert inputs(align) == inputs(grpo) == inputs(cai) == {"world", "sft"}
    assert inputs(overopt) == {"world", "sft", "align"}  # align's reward model and its leashed PPO run
    mods = {m.NAME: m for m in STAGES}
    # eval needs the DPO model only; interp and safety the PPO model (align) and the RLAIF model (cai)
    assert "align" in inputs(mods["eval"]) and not inputs(mods["eval"]) & {"grpo", "cai", "overopt"}
    for reader in ("interp", "safety"):
        assert {"align", "cai"} <= inputs(mods[reader]) and not inputs(mods[reader]) & {"grpo", "overopt"}
    # no later stage reads grpo or overopt: with jobs=2 they fill the second slot while the chain runs
    assert not any({"grpo", "overopt"} & inputs(m) for m in STAGES)
    rank = runner._dependents()
    assert rank["sft"] > rank["align"] > rank["cai"] > rank["grpo"] == rank["overopt"] == 0


def test_split_outputs_name_their_models():
    fields = lambda cls: {f for f in cls.__dataclass_fields__}  # noqa: E731
    assert {"reward_model", "ppo", "dpo", "ppo_history", "ppo_settings"} <= fields(align.Outputs)
    assert not fields(align.Outputs) & {"grpo", "rlaif", "ppo_kl0"}
    assert "grpo" in fields(grpo.Outputs) and "rlaif" in fields(cai.Outputs) and "ppo_kl0" in fields(overopt.Outputs)
    # cai's helpfulness and overopt's gold curve use align's held-out prompts: the same count picks the same ones
    from genforge.speedrun import resolve

    for size in ("smoke", "tiny", "small"):
        c = resolve([f"size={size}"])
        assert c.align.eval_prompts == c.cai.eval_prompts == c.overopt.eval_prompts, size
    st = align.ppo_settings(align.Config())
    assert st["lr"] == align.Config().ppo_lr and st["length_bias"] == 0.0  # no planted bias by default


def _history(gold_means: list[float], proxy: list[float], kl: list[float], n: int = 64, seed: int = 0,
             fixed: bool = False) -> list[dict]:
    """Synthetic PPO history; with `fixed`, also gold on n fixed prompts, each with its own level (paired)."""
    rng = random.Random(seed)
    level = [rng.gauss(0.0, 0.2) for _ in range(n)]  # prompt difficulty: shared by every rollout
    out = []
    for g, p, k in zip(gold_means, proxy, kl):
        gold = [min(1.0, max(0.0, rng.gauss(g, 0.1))) for _ in range(n)]
        out.append({"oracle": sum(gold) / n, "score": p, "kl": k, "gold": gold})
        if fixed:
            out[-1]["gold_fixed"] = [g + lv + rng.gauss(0.0, 0.05) for lv in level]
    return out


def _setup(tmp_path: Path) -> align.Setup:
    return align.Setup(StageContext(tmp_path), overopt.Config(), None, None, tmp_path / "overopt", [], [], [],
                       set(), random.Random(0))


@pytest.mark.parametrize("fixed", [False, True])
def test_over_optimisation_lesson_holds_on_a_rise_and_fall(tmp_path, fixed):
    n = 12
    rise_fall = [0.40 + 0.03 * i if i < 6 else 0.55 - 0.06 * (i - 5) for i in range(n)]  # peak at rollout 6
    leashed = [0.40 + 0.01 * i for i in range(n)]  # slowly rising
    rep = StageReport("overopt", "t")
    summary = overopt.over_optimisation(
        _setup(tmp_path), rep, {"ppo": _history(leashed, list(range(n)), [0.01 * i for i in range(n)], fixed=fixed),
                                "ppo_kl0": _history(rise_fall, list(range(n)), [0.1 * i for i in range(n)], seed=1,
                                                    fixed=fixed)},
        0.5, 0.0)
    assert ("paired" in rep.lessons[0].note) == fixed
    verdicts = {les.claim: les.holds for les in rep.lessons}
    assert len(verdicts) == 2 and all(verdicts.values()), verdicts
    assert 4 <= summary["peak_rollout"] <= 7 and summary["gold_peak"] > summary["gold_end"]
    assert (tmp_path / "plots" / "align_overoptimisation.png").exists()


@pytest.mark.parametrize("fixed", [False, True])
def test_over_optimisation_lesson_fails_on_a_flat_curve(tmp_path, fixed):
    n = 12
    flat = [0.45] * n
    rep = StageReport("overopt", "t")
    overopt.over_optimisation(_setup(tmp_path), rep, {"ppo": _history(flat, [0.0] * n, [0.0] * n, fixed=fixed),
                                                      "ppo_kl0": _history(flat, [0.0] * n, [0.0] * n, seed=1,
                                                                          fixed=fixed)},
                              0.5, 0.0)
    assert rep.lessons and not any(les.holds for les in rep.lessons)


@pytest.mark.slow
def test_smoke_run_writes_the_split_stages(smoke_run):
    run = smoke_run.run
    out = {n: json.loads((run / "stages" / f"{n}.json").read_text()) for n in ("align", "grpo", "cai", "overopt",
                                                                              "interp", "safety")}
    root = smoke_run.root
    for name, key in (("align", "ppo"), ("align", "dpo"), ("align", "reward_model"), ("grpo", "grpo"),
                      ("cai", "rlaif"), ("overopt", "ppo_kl0")):
        assert (root / out[name][key] / "config.json").exists(), (name, key)
    history = json.loads((root / out["align"]["ppo_history"]).read_text())
    assert len(history) == out["align"]["ppo_settings"]["rollouts"] and "gold" in history[0]
    assert out["safety"]["models"]["cai"] == out["cai"]["rlaif"]
    assert out["safety"]["models"]["rlhf"] == out["align"]["ppo"]
    report = (run / "report.md").read_text()
    for mod in (align, grpo, cai, overopt):
        assert f"## {mod.TITLE}" in report


def test_grpo_asks_each_problem_in_one_style():
    row = {"task": "arithmetic", "prompt": "2 + 3?\nGive only the final answer.", "answer": "5", "style": "direct",
           "prompts": {"cot": "2 + 3?\nThink step by step.", "direct": "2 + 3?\nGive only the final answer."}}
    cot = grpo.restyle(row, "cot")
    assert cot["prompt"].endswith("Think step by step.") and cot["style"] == "cot" and cot["answer"] == "5"
    assert grpo.restyle(cot, "direct")["prompt"] == row["prompt"]
    assert grpo.restyle(row, "") is row and grpo.restyle({"prompt": "x"}, "cot") == {"prompt": "x"}
    assert grpo.Config().style == "cot" and grpo.Config().tasks == ["arithmetic"]


def test_closings_skip_keeps_arithmetic_answers_plain(data_run):
    """`sft.closings_skip`: the chat model's mix closes no answer of a skipped task (GRPO's worked sums), closes
    the others' at the share; a misspelt task is refused, also when set after the config is built (key=value)."""
    from genforge.errors import ConfigError
    from genforge.speedrun import sft

    tasks = data_run / "world" / "tasks"
    cfg = sft.Config(drills=["arithmetic:30", "coin_flip:10"], closings=1.0,
                     closings_skip=["summarization", "translation", "refusal", "arithmetic"])
    plain = sft.load_items(tasks, sft.Config(drills=cfg.drills, closings=0.0)).chat_train
    closed = sft.load_items(tasks, cfg).chat_train
    assert len(plain) == len(closed) and any(r["task"] == "arithmetic" for r in plain)
    for a, b in zip(plain, closed):
        if a["task"] in cfg.closings_skip:
            assert a == b
        else:
            assert b["response"].startswith(a["response"] + "\n") and b["prompt"] == a["prompt"]
    cfg.closings_skip = ["arithmatic"]  # as `genforge speedrun sft.closings_skip=arithmatic` sets it
    with pytest.raises(ConfigError, match="sft.closings_skip.*'arithmatic'"):
        sft.load_items(tasks, cfg)


def test_grpo_lr_schedule_reaches_the_trainer():
    """`grpo.min_lr_ratio`: the stage's lr decays (the Trainer's cosine) to lr * ratio at the last step; a ratio
    outside [0, 1] is refused, also when set after the config is built (key=value)."""
    from genforge.config import validate
    from genforge.errors import ConfigError
    from genforge.train.trainer import TrainConfig, lr_at

    cfg = grpo.Config(rollouts=5, min_lr_ratio=0.0, epochs=2)
    g = grpo.grpo_config(cfg, lambda micro, lr, **kw: TrainConfig(micro_batch=micro, lr=lr, warmup_steps=0, **kw))
    assert (g.rollouts, g.epochs, g.train.micro_batch, g.train.lr) == (5, 2, cfg.micro_batch, cfg.lr)
    g.train.max_steps = 40
    assert lr_at(0, g.train, cfg.lr) == pytest.approx(cfg.lr) and lr_at(40, g.train, cfg.lr) == pytest.approx(0.0)
    flat = grpo.grpo_config(grpo.Config(min_lr_ratio=1.0), lambda micro, lr, **kw: TrainConfig(lr=lr, warmup_steps=0,
                                                                                                **kw))
    flat.train.max_steps = 40
    assert lr_at(40, flat.train, flat.train.lr) == pytest.approx(grpo.Config().lr)  # ratio 1: a flat lr
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match=f"grpo.min_lr_ratio={bad}"):
            grpo.Config(min_lr_ratio=bad)
    late = grpo.Config()
    late.min_lr_ratio = 2.0
    with pytest.raises(ConfigError, match="grpo.min_lr_ratio=2.0"):
        validate(late)
