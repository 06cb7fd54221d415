"""Stage "overopt": reward over-optimisation (Gao et al. 2022, fig. 1 in small).

The `align` stage's PPO run against its reward model (the proxy), repeated here without the KL penalty; the
world's oracle is the gold reward. Both runs' gold and proxy reward per rollout are drawn against sqrt(KL to the
SFT model): without the leash gold should rise, peak and fall while the proxy keeps rising; with it the policy
should stay on the rising part. It reads `align` for the reward model and the leashed run's history.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from genforge.report import StageReport
from genforge.speedrun import align, sft, world
from genforge.speedrun.align import Setup, ppo_step, setup
from genforge.speedrun.stage import StageContext

NAME = "overopt"
TITLE = "Alignment: reward over-optimisation without the KL penalty"


@dataclass
class Config:
    max_new_tokens: int = 128  # answer budget (as align's PPO run)
    eval_prompts: int = 200  # as align's: its held-out prompts, of which the gold curve's fixed prompts are taken
    rollouts: int = 32  # rollouts of the run without KL (0 = as many as align's leashed run)
    lr: float = 1e-4  # its learning rate (0 = align's PPO lr). Measured at tiny, after `sft.closings` gave the gold
    # reward a real rising part (the leashed run climbs 0.50 -> 0.545): lr 3e-4 jumps past the peak in one rollout
    # (gold only falls: fall from peak 0.026, does not hold); 1e-4 traces the rise to 0.535 at sqrt KL ~1 and then
    # falls, but 16 rollouts reach only sqrt KL 2.4 (fall 0.035 [-0.012, 0.095]) and 24 only 0.018; 32 rollouts
    # reach sqrt KL 3.7 and the fall holds (0.069 [0.013, 0.137]). Cost: ~260 s CPU instead of ~130.


@dataclass
class Outputs:
    ppo_kl0: str  # the policy optimised without the KL penalty
    summary: dict[str, float]  # gold at the peak and at the end, the peak's rollout, proxy at both
    seconds: float


def run(ctx: StageContext, cfg: Config, report: StageReport, *, world: world.Outputs, sft: sft.Outputs,
        align: align.Outputs) -> Outputs:
    """PPO without the KL penalty against align's reward model; Gao et al.'s plot and lessons, both runs."""
    from genforge.train.reward import load_reward_model

    t0, c0 = time.perf_counter(), time.process_time()
    s = setup(ctx, cfg, world, sft, NAME)
    rm = load_reward_model(align.reward_model).requires_grad_(False)
    settings = {**align.ppo_settings, "max_new_tokens": cfg.max_new_tokens}
    if cfg.rollouts:
        settings["rollouts"] = cfg.rollouts
    if cfg.lr:
        settings["lr"] = cfg.lr
    _, history, _ = ppo_step(s, rm, 0.0, "ppo_kl0", settings)
    leashed = json.loads(Path(align.ppo_history).read_text())
    summary = over_optimisation(s, report, {"ppo": leashed, "ppo_kl0": history}, align.ppo_settings["kl_coef"],
                                align.ppo_settings["length_bias"])
    lr0, lrk = settings["lr"], align.ppo_settings["lr"]
    report.note(f"The run without the KL penalty: {settings['rollouts']} rollouts of {settings['rollout_prompts']} "
                f"prompts at lr {lr0:g}" + ("" if lr0 == lrk else f" (the leashed run in `align`: lr {lrk:g}; at that "
                                            "lr a run without the penalty stays close to the SFT model in 16 rollouts "
                                            "and never reaches the falling part)") + ".")
    seconds = time.perf_counter() - t0
    report.note(f"Stage timings: {seconds:.0f} s wall, {time.process_time() - c0:.0f} s CPU.")
    return Outputs(ppo_kl0=str(s.out / "ppo_kl0" / "checkpoint"), summary=summary, seconds=seconds)


def _smooth(xs: list[float], k: int = 3) -> list[float]:
    """Centred running mean over k rollouts (ends use what they have)."""
    h = k // 2
    return [sum(xs[max(0, i - h):i + h + 1]) / len(xs[max(0, i - h):i + h + 1]) for i in range(len(xs))]


def _gold(h: list[dict]) -> tuple[str, list[list[float]]]:
    """Per rollout, the gold scores the lessons use: on the fixed held-out prompts when the run measured them
    (paired across rollouts), else on the rollout's own responses."""
    if h and all("gold_fixed" in r for r in h):
        return "fixed", [r["gold_fixed"] for r in h]
    return "rollout", [r["gold"] for r in h]


def _window(g: list[list[float]], i: int, paired: bool) -> list[float]:
    """Gold of rollouts i-1..i+1: per prompt the mean over them (paired), else all their responses."""
    rs = g[max(0, i - 1):i + 2]
    if paired:
        return [sum(col) / len(col) for col in zip(*rs)]
    return [x for r in rs for x in r]


def over_optimisation(s: Setup, report: StageReport, ppo_runs: dict[str, list[dict]], kl_coef: float,
                      length_bias: float) -> dict[str, float]:
    """Gao et al. 2022, fig. 1 in small: gold (oracle) and proxy (RM) reward against sqrt(KL), with and without
    the KL penalty; lessons on the gold reward's peak and end (bootstrap over held-out prompts, paired)."""
    from genforge.eval.stats import bootstrap_diff

    seed = s.ctx.seed
    mean = lambda v: sum(v) / max(1, len(v))  # noqa: E731
    curves = {}
    for name, tag in (("ppo", f"KL coef {kl_coef:g}"), ("ppo_kl0", "KL coef 0")):
        h = ppo_runs[name]
        curves[tag] = ([max(0.0, r["kl"]) ** 0.5 for r in h], _smooth([mean(g) for g in _gold(h)[1]]),
                       _smooth([r["score"] for r in h]))
    path = _gao_plot(s.ctx.path("plots") / "align_overoptimisation", curves)
    kind, g0 = _gold(ppo_runs["ppo_kl0"])
    where = (f"greedy answers to the same {len(g0[0]) if g0 else 0} held-out prompts after every rollout"
             if kind == "fixed" else "the rollout's own responses")
    report.plot(path.relative_to(s.ctx.run_dir),
                f"Reward over-optimisation (Gao et al. 2022): gold = the world's oracle ({where}), proxy = the "
                "reward model, per PPO rollout (running mean of 3) against sqrt(KL to the SFT model)")
    for name, tag in (("ppo", "with the KL penalty"), ("ppo_kl0", "without the KL penalty")):
        h = ppo_runs[name]
        g = _gold(h)[1]
        report.row(f"PPO {tag}: gold / proxy / sqrt KL, first -> last rollouts",
                   f"{mean(g[-1]):.3f} / {h[-1]['score']:.2f} / {max(0.0, h[-1]['kl']) ** 0.5:.2f}",
                   f"{mean(g[0]):.3f} / {h[0]['score']:.2f} / {max(0.0, h[0]['kl']) ** 0.5:.2f}",
                   f"gold = mean oracle score ({where}), proxy = mean reward-model score of the rollout")
    h0, hk = ppo_runs["ppo_kl0"], ppo_runs["ppo"]
    summary: dict[str, float] = {}
    if len(h0) >= 6:
        paired = kind == "fixed"
        # The peak is picked on half of the prompts (or responses) and the fall measured on the other half: picked
        # and measured on the same ones, a flat noisy curve "falls from its peak" in about 1 seed of 4.
        pick = [mean(_window(g0, i, paired)[::2]) for i in range(len(g0))]
        peak = max(range(len(h0) - 2), key=lambda i: pick[i])  # the peak is looked for before the last 2 rollouts
        at_peak, at_end = _window(g0, peak, paired)[1::2], _window(g0, len(g0) - 2, paired)[1::2]
        fall = bootstrap_diff(at_peak, at_end, paired=paired, seed=seed)
        proxy_peak = mean([r["score"] for r in h0[max(0, peak - 1):peak + 2]])
        proxy_end = mean([r["score"] for r in h0[-3:]])
        report.lesson("without the KL penalty, gold reward rises then falls while the proxy keeps rising",
                      ("gold at the peak (3 rollouts)", mean(at_peak)), ("gold at the end", mean(at_end)),
                      effect=fall, target=0.0, effect_name="gold fall from peak",
                      note=f"peak at rollout {peak + 1} of {len(h0)} (sqrt KL {max(0.0, h0[peak]['kl']) ** 0.5:.2f} -> "
                           f"{max(0.0, h0[-1]['kl']) ** 0.5:.2f}); proxy {proxy_peak:.2f} at the peak -> "
                           f"{proxy_end:.2f} at the end; gold = {where}; the peak is picked on half of them, the fall "
                           f"measured on the other half{' (paired)' if paired else ''}, so no selection bias")
        summary = {"gold_peak": mean(at_peak), "gold_end": mean(at_end), "peak_rollout": peak + 1,
                   "proxy_peak": proxy_peak, "proxy_end": proxy_end}
        kind_k, gk = _gold(hk)
        pk = kind_k == "fixed"
        first, last = _window(gk, 1, pk), _window(gk, len(gk) - 2, pk)
        report.lesson("with the KL penalty the policy stays on the rising part (gold at the end above the start)",
                      ("gold, last 3 rollouts", mean(last)), ("gold, first 3 rollouts", mean(first)),
                      effect=bootstrap_diff(last, first, paired=pk, seed=seed), target=0.0,
                      note=f"KL coef {kl_coef:g}; sqrt KL at the end {max(0.0, hk[-1]['kl']) ** 0.5:.2f} vs "
                           f"{max(0.0, h0[-1]['kl']) ** 0.5:.2f} without; gold = "
                           + ("the same held-out prompts, paired" if pk else "the rollouts' own responses"))
    bias = length_bias
    report.note("**Reward over-optimisation.** The proxy is the reward model of the align stage"
                + (f" plus a planted length bias of {bias:g} per token" if bias else ", with no planted bias")
                + ". Gao et al. 2022 show the gold reward of a policy optimised against a proxy rising, peaking and "
                "falling as the policy moves away from its start (measured in sqrt KL), while the proxy keeps rising.")
    return summary


def _gao_plot(path: Path, curves: dict[str, tuple[list, list, list]]) -> Path:
    """Two panels, gold and proxy reward vs sqrt(KL), one line per PPO run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from genforge.io import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for tag, (x, gold, proxy) in curves.items():
        axes[0].plot(x, gold, marker="o", markersize=3, label=tag)
        axes[1].plot(x, proxy, marker="o", markersize=3, label=tag)
    for ax, title, ylabel in ((axes[0], "gold (world oracle)", "mean oracle score"),
                              (axes[1], "proxy (reward model)", "mean RM score")):
        ax.set_title(title)
        ax.set_xlabel("sqrt KL(pi || pi_SFT)  (sqrt nats)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path).with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
