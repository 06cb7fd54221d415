"""Stage "grpo": group-relative policy optimisation with a verifiable reward (Shao et al. 2024).

The SFT model answers each training problem G times; the world's answer check is the reward, standardised
within each group (`genforge.train.grpo`). Lesson: accuracy on held-out problems of the verifiable tasks before
and after, paired over the problems. It reads only the SFT model, so the runner runs it beside `align`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from genforge.report import StageReport
from genforge.speedrun import sft, world
from genforge.speedrun.align import START, fits, setup, task_items
from genforge.speedrun.stage import StageContext

if TYPE_CHECKING:
    from genforge.train.grpo import GRPOConfig
    from genforge.train.trainer import TrainConfig

NAME = "grpo"
TITLE = "Alignment: GRPO with a verifiable reward"


@dataclass
class Config:
    max_new_tokens: int = 128  # answer budget (room for a rationale)
    # verifiable tasks GRPO trains and is scored on. GRPO learns only from groups whose answers differ in reward,
    # so the task must be one the SFT model sometimes but not always gets right when sampling (measured at tiny,
    # seed 0, 24 train prompts x 8 samples): worked arithmetic greedy 0.72 (test), pass@8 0.92 at T=0.5 with 88 %
    # of groups mixed; coin_flip and multiple_choice are at chance / knowledge-bound, last_letter 0.00 at any T
    tasks: list[str] = field(default_factory=lambda: ["arithmetic"])
    # every problem is asked in this prompt style (the world writes each one as "cot" and "direct"; "" = each row's
    # own prompt). Direct-answer prompts ("Give only the final answer") scored 0.00 greedy and pass@8 0.00 at
    # T=0.3-0.7: every group is all wrong, nothing to learn; the same held-out problems asked directly are reported
    style: str = "cot"
    other_style: str = "direct"  # reported before/after on the same held-out problems, not trained ("" = none)
    test_items: int = 200  # held-out problems per task (paired before/after; all of them at tiny)
    rollouts: int = 40  # with the lr decaying to 0: +0.150 on the worked sums at seed 0, +0.160 at seed 1 (stage ~140
    # s CPU); 20 at a flat lr: +0.050 (~70 s). Every variant measured is in MEASURED below; none makes the row hold
    rollout_prompts: int = 8
    group_size: int = 8
    epochs: int = 1  # passes over each rollout (their mu); > 1 reuses the sampled answers, with the ratio clipped
    # (2 passes: +0.100 at 20 rollouts, +0.090 at 30 with the cosine lr)
    temperature: float = 0.5  # sampling temperature of the groups: at T=1 only 5 % of worked sums come out right
    # (pass@8 0.25, 75 % of groups all wrong); at T=0.5 42 % (pass@8 0.92)
    micro_batch: int = 16
    min_lr_ratio: float = 0.0  # the lr decays (the Trainer's cosine) to lr * this by the last step; 1 = flat
    lr: float = 3e-5  # Adam's step does not shrink with Dr. GRPO's smaller loss; 1e-4 and up lowered arithmetic
    # at tiny in every variant measured (GRPO 3e-4: 0.46 -> 0.10; Dr. GRPO 1.5e-4: 0.46 -> 0.20)
    beta: float = 0.04  # k3 KL to the SFT model in the loss: DeepSeekMath's 0.04 (Shao et al. 2024); Dr. GRPO drops
    # it (beta 0): at 40 cosine rollouts +0.155 vs +0.150 (seed 0), +0.145 vs +0.160 (seed 1). Clip: 0.2 (both papers)
    dr_grpo: bool = True  # Dr. GRPO (Liu et al. 2025): no std scaling, no per-answer length normalisation. With
    # them (GRPO as published) every tiny run measured lowered accuracy (coin_flip 0.54 -> 0.38-0.46, answers shorter)

    def __post_init__(self) -> None:
        from genforge.errors import ConfigError

        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"grpo.min_lr_ratio={self.min_lr_ratio}: the final lr as a share of grpo.lr, between 0 "
                              "and 1 (1 = a flat lr)")


@dataclass
class Outputs:
    grpo: str  # the policy's checkpoint
    accuracy: dict[str, dict[str, float]]  # before/after -> task -> accuracy
    zero_std_groups: float  # share of groups whose G answers all scored the same (no signal)
    seconds: float


def run(ctx: StageContext, cfg: Config, report: StageReport, *, world: world.Outputs, sft: sft.Outputs) -> Outputs:
    """GRPO from the SFT model on the verifiable tasks; paired accuracy before/after on held-out problems."""
    from genforge.eval.stats import bootstrap_diff, bootstrap_mean
    from genforge.train.grpo import train_grpo
    from genforge.train.ppo import verifiable_reward
    from genforge.train.rollout import make_policy

    t0, c0 = time.perf_counter(), time.process_time()
    s = setup(ctx, cfg, world, sft, NAME)
    tasks = [t for t in cfg.tasks if any(r.get("task") == t for r in s.train_rows)]
    room = s.sft.config.max_seq_len - cfg.max_new_tokens
    train = fits(s.tok, [restyle(r, cfg.style) for r in s.train_rows if r.get("task") in tasks], room)
    test = {t: fits(s.tok, [restyle(r, cfg.style) for r in s.test_rows if r.get("task") == t], room)[:cfg.test_items]
            for t in tasks}
    test = {t: rows for t, rows in test.items() if rows}
    # the same held-out problems in the other style: not trained, reported (does GRPO's change carry over?)
    other = {t: fits(s.tok, [restyle(r, cfg.other_style) for r in rows], room) for t, rows in test.items()
             if cfg.other_style and cfg.other_style != cfg.style}
    other = {t: rows for t, rows in other.items() if rows}
    policy = make_policy(copy.deepcopy(s.sft))
    _, hist = train_grpo(policy, s.tok, train, verifiable_reward(s.tok), grpo_config(cfg, s.train_cfg), s.out)
    policy.eval()
    before_items = {t: task_items(s.sft, s.tok, t, rows).items for t, rows in test.items()}
    after_items = {t: task_items(policy, s.tok, t, rows).items for t, rows in test.items()}
    before = {t: sum(v) / len(v) for t, v in before_items.items()}
    after = {t: sum(v) / len(v) for t, v in after_items.items()}
    a = [x for t in test for x in after_items[t]]
    b = [x for t in test for x in before_items[t]]
    zero = sum(h["zero_std_groups"] for h in hist) / max(1, len(hist))
    per = ", ".join(f"{t} {before[t]:.2f} -> {after[t]:.2f}" for t in after)
    what = f"{cfg.style}-prompted " if cfg.style else ""
    if a:
        report.lesson("GRPO raises verifiable-task accuracy by >= 10 points",
                      ("accuracy after GRPO", bootstrap_mean(a, seed=ctx.seed)),
                      (f"{START} model", bootstrap_mean(b, seed=ctx.seed)),
                      effect=bootstrap_diff(a, b, paired=True, seed=ctx.seed), target=0.10,
                      note=f"{len(a)} held-out {what}problems ({per}), greedy, paired bootstrap; reward = the world's "
                           f"answer check; {cfg.rollouts} rollouts x {cfg.rollout_prompts} prompts x G="
                           f"{cfg.group_size} at T={cfg.temperature:g}, lr {cfg.lr:g}; {zero:.0%} of groups had no "
                           "reward spread")
    for t in after:
        report.row(f"GRPO: {what}{t} accuracy (test, greedy)", after[t], before[t],
                   f"{len(test[t])} held-out problems; baseline = {START} model")
    for t, rows in other.items():
        o_b, o_a = (task_items(m, s.tok, t, rows).items for m in (s.sft, policy))
        report.row(f"GRPO: {t} accuracy, the same problems asked {cfg.other_style} (not trained)", sum(o_a) / len(o_a),
                   sum(o_b) / len(o_b), f"{len(rows)} held-out problems; baseline = {START} model; no sampled "
                   "answer to these is right, so no group has a reward spread to learn from")
    report.note("**GRPO at tiny** (measured; reward = the world's answer check: 1 for an exact final answer, no "
                "partial credit). GRPO learns only from groups whose answers differ in reward. The SFT model's sampled "
                "worked sums are right 42 % of the time at T=0.5 (pass@8 0.92) but 5 % at T=1 (pass@8 0.25); its "
                "direct answers are never right at any T (pass@8 0.00); coin_flip is at chance and multiple_choice "
                "needs facts the model lacks; last_letter is 0.00 at any T. So the stage asks every arithmetic problem "
                "in the worked style and samples at T=0.5. Most wrong greedy answers carry one wrong digit fact in one "
                "step (\"2+5+1=7\") or a miscopied operand, then carry on consistently. Variants on the 200 held-out "
                "problems (stage CPU s on the shared machine; lr flat unless \"cosine\", which decays to 0):\n\n"
                + "\n".join(["| variant | seed 0 (SFT 0.505) | seed 1 (SFT 0.260) | CPU s, seed 0 |",
                             "|---|---|---|---|"] + [f"| {v} | {s0} | {s1} | {c} |" for v, s0, s1, c in MEASURED])
                + "\n\nEarlier chat models, same stage: lr >= 1e-4 lowered accuracy (0.72 -> 0.36); GRPO as published "
                "(std scaling, 1/|o| length norm) lowered coin_flip (0.54 -> 0.38-0.46, shorter answers); no closing "
                "on arithmetic +0.095 (seed 1 +0.060); closings on every task +0.080. The gain stays at +0.05 to "
                "+0.16 whatever the variant; the row needs its interval's lower end above 0.10, an effect near +0.17. "
                "Twice the rollouts with a decaying lr is the best measured (+0.15 at seed 0, +0.16 at seed 1, the "
                "gain the same at both seeds) at twice the CPU, off the text chain's critical path (align and overopt "
                "run beside it); it is the default, and its interval still starts just below +0.10.")
    seconds = time.perf_counter() - t0
    report.note(f"Stage timings: {seconds:.0f} s wall, {time.process_time() - c0:.0f} s CPU.")
    return Outputs(grpo=str(s.out / "checkpoint"), accuracy={"before": before, "after": after},
                   zero_std_groups=zero, seconds=seconds)


# (variant, seed-0 gain [95 % CI], seed-1 gain, stage CPU s): measured with this code on copies of a full tiny run
# (seed 0: /tmp/final9; seed 1: world..sft rebuilt at seed 1). Kept here so the note and the Config agree.
MEASURED = [
    ("20 rollouts x 8 prompts, lr 3e-5 flat (the default until session 8)", "+0.050 [-0.025, 0.130]",
     "+0.150 [0.075, 0.225]", "70"),
    ("40 rollouts, cosine (the default)", "+0.150 [0.090, 0.220]", "+0.160 [0.095, 0.230]", "142"),
    ("40 rollouts, cosine, no KL term (beta 0)", "+0.155 [0.090, 0.225]", "+0.145 [0.075, 0.220]", "143"),
    ("40 rollouts, cosine from lr 6e-5", "+0.115 [0.045, 0.190]", "–", "~150"),
    ("30 rollouts, cosine, 2 passes each (`epochs` 2)", "+0.090 [0.025, 0.155]", "–", "166"),
    ("20 rollouts x 16 prompts, cosine", "+0.130 [0.060, 0.200]", "–", "190"),
    ("40 rollouts x 4 prompts x G=16, cosine", "+0.130 [0.060, 0.205]", "–", "164"),
    ("20 rollouts, 2 passes each (last session, same SFT model)", "+0.100 [0.025, 0.170]", "–", "96"),
]


def grpo_config(cfg: Config, train_cfg: Callable[..., TrainConfig]) -> GRPOConfig:
    """The trainer's `GRPOConfig` from the stage's Config; `train_cfg(micro_batch, lr, **kw)` makes the shared
    alignment `TrainConfig` (`align.Setup.train_cfg`)."""
    from genforge.train.grpo import GRPOConfig

    return GRPOConfig(rollouts=cfg.rollouts, rollout_prompts=cfg.rollout_prompts, group_size=cfg.group_size,
                      max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, beta=cfg.beta,
                      dr_grpo=cfg.dr_grpo, epochs=cfg.epochs,
                      train=train_cfg(cfg.micro_batch, cfg.lr, min_lr_ratio=cfg.min_lr_ratio))


def restyle(row: dict, style: str) -> dict:
    """The row asked in prompt style `style` (the world's `prompts[style]`); unchanged when `style` is "" or the
    row has no such variant."""
    alt = (row.get("prompts") or {}).get(style) if style else None
    return {**row, "prompt": alt, "style": style} if alt else row
