"""`genforge scaling`: train a grid of sizes x compute budgets on the world corpus, fit the laws, check them.

The grid is Chinchilla's IsoFLOP design (Hoffmann et al. 2022, approach 2): for each compute budget C and
each size N (the depth dial), the run trains on D = C / (6 N) tokens with its own cosine schedule ending at D
(intermediate checkpoints of a longer schedule would overstate the loss of short runs, their section 3.1).
So each size sees as many token budgets as there are compute budgets, and each budget is one IsoFLOP
profile. N counts the parameters a token passes through in a matmul (block matrices + output head): the
input embedding is a lookup, not compute, so C = 6 N D is the compute actually spent (attention, 6 L T C per
token, is left out as Kaplan et al. 2020 do; it is < 10 % at these context lengths).

Every run is `genforge pretrain` (the shared trainer) into out_dir/runs/<name>/ and is skipped when its
result exists, so an interrupted sweep continues where it stopped. Then: approach 3 and approach 2 fits,
bootstrap intervals of the exponents, the compute-optimal N and D for `target_flops`, a held-out prediction
of a larger run not used in any fit, emergence and calibration vs size, plots, and out_dir/report.md.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from genforge.errors import ConfigError
from genforge.io import read_json, write_json
from genforge.model.gpt import GPTConfig
from genforge.report import StageReport
from genforge.scaling import emergence as em
from genforge.scaling import fit as sf
from genforge.scaling.plan import count
from genforge.train.trainer import TrainConfig


def _train_defaults() -> TrainConfig:
    return TrainConfig(micro_batch=4, eval_every=0, ckpt_every=0, log_every=10, threads=1)


@dataclass
class ScalingConfig:
    """`genforge scaling`: a sweep of sizes x compute budgets, the fitted laws, a held-out check, emergence."""

    size: str = "reduced"  # recipe preset: reduced (minutes, a demonstration) | small (<= 60 min, 2 cores) | gpu
    out_dir: str = "runs/scaling"
    shards: str = "runs/tiny/shards"  # token shards + tokenizer (e.g. the tiny speedrun's)
    tasks: str = "runs/tiny/world/tasks"  # world tasks for emergence and calibration ("" = skip them)
    depths: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])  # sizes by the depth dial (width 32 x depth)
    flops: list[float] = field(default_factory=lambda: [6e10, 1.2e11, 2.4e11])  # compute budgets C = 6 N D
    heldout_depth: int = 6  # a larger model trained after the fit, whose loss the fit must predict
    heldout_flops: float = 4.8e11  # its budget (beyond the grid's largest: an extrapolation in N and C)
    target_flops: float = 1e21  # the budget to answer "which N and D?" for
    seq_len: int = 64
    eval_batches: int = 32  # val batches (micro_batch x seq_len tokens each) behind every loss
    min_steps: int = 20  # refuse budgets that give a run fewer optimizer steps than this
    bootstrap: int = 200  # resamples of the runs for the exponents' intervals
    emergence_items: int = 100  # test items per task (0 = skip emergence and calibration)
    seed: int = 1337
    model: GPTConfig = field(default_factory=GPTConfig)  # shape fields other than depth (vocab comes from shards)
    train: TrainConfig = field(default_factory=_train_defaults)  # max_steps and warmup are set per run


@dataclass
class Run:
    name: str
    depth: int
    flops: float
    n: int  # matmul parameters
    params: int  # all parameters
    tokens: int
    steps: int
    val_loss: float = math.nan
    seconds: float = 0.0
    process_seconds: float = 0.0
    checkpoint: str = ""


def plan_runs(cfg: ScalingConfig, vocab: int) -> tuple[list[Run], Run]:
    """The grid's runs and the held-out run, with tokens and steps from each budget."""
    tokens_per_step = cfg.train.micro_batch * cfg.train.grad_accum * cfg.seq_len

    def make(depth: int, c: float) -> Run:
        shape = copy.deepcopy(cfg.model)
        shape.depth, shape.vocab_size = depth, vocab
        n = count(shape.resolved())
        steps = int(c / (6 * n.matmul) // tokens_per_step)
        if steps < cfg.min_steps:
            raise ConfigError(f"depth {depth} at flops={c:.3g} gets {steps} steps (< min_steps={cfg.min_steps}); "
                              "raise the budget, lower train.micro_batch or seq_len, or drop the size")
        return Run(f"d{depth}_c{c:.2e}", depth, c, n.matmul, n.total, steps * tokens_per_step, steps)

    if len(cfg.depths) < 3 or len(cfg.flops) < 1 or len(cfg.depths) * len(cfg.flops) < 5:
        raise ConfigError("a sweep needs >= 3 depths and >= 5 runs in all (depths x flops)")
    grid = [make(d, c) for c in sorted(cfg.flops) for d in sorted(cfg.depths)]
    return grid, make(cfg.heldout_depth, cfg.heldout_flops)


def train_run(cfg: ScalingConfig, run: Run, progress: bool = True) -> Run:
    """One `genforge pretrain` run (skipped when its result.json exists)."""
    from genforge.train.pretrain import PretrainConfig, main

    folder = Path(cfg.out_dir) / "runs" / run.name
    done = folder / "result.json"
    if done.exists():
        return Run(**read_json(done, f"{done}: missing"))
    pc = PretrainConfig(shards=cfg.shards, out_dir=str(folder), seq_len=cfg.seq_len, eval_batches=cfg.eval_batches,
                        model=copy.deepcopy(cfg.model), train=copy.deepcopy(cfg.train))
    pc.model.depth = run.depth
    pc.model.max_seq_len = max(pc.model.max_seq_len, cfg.seq_len)
    pc.train.max_steps = run.steps
    pc.train.warmup_steps = max(1, run.steps // 10)
    pc.train.seed = cfg.seed
    pc.train.progress = progress and cfg.train.progress
    t0, p0 = time.perf_counter(), time.process_time()
    res = main(pc)
    run.val_loss, run.seconds, run.process_seconds = res["val_loss"], time.perf_counter() - t0, time.process_time() - p0
    run.checkpoint = str(folder / "checkpoint")
    write_json(done, asdict(run))
    return run


@dataclass
class SweepResult:
    runs: list[Run]
    heldout: Run
    law: sf.LawFit
    boot: sf.Bootstrap
    isoflops: sf.Approach2 | None
    heldout_pred: float
    heldout_pred_ci: tuple[float, float]
    emergence: dict | None = None


def fit_all(cfg: ScalingConfig, runs: list[Run], heldout: Run) -> SweepResult:
    """Approach 3 (+ bootstrap), approach 2 (when every budget has >= 3 sizes), the held-out prediction."""
    n = [r.n for r in runs]
    d = [r.tokens for r in runs]
    loss = [r.val_loss for r in runs]
    law = sf.fit_law(n, d, loss)
    boot = sf.bootstrap_law(n, d, loss, law, n_resamples=cfg.bootstrap, seed=cfg.seed)
    by_budget: dict[float, tuple[list, list]] = {}
    for r in runs:
        by_budget.setdefault(r.flops, ([], []))
        by_budget[r.flops][0].append(r.n)
        by_budget[r.flops][1].append(r.val_loss)
    iso = None
    if all(len(v[0]) >= 3 for v in by_budget.values()) and len(by_budget) >= 2:
        iso = sf.fit_isoflops(by_budget)
    pred = float(law.loss(heldout.n, heldout.tokens))
    preds = [float(f.loss(heldout.n, heldout.tokens)) for f in boot.fits]
    lo, hi = np.percentile(preds, [2.5, 97.5]) if preds else (math.nan, math.nan)
    return SweepResult(runs, heldout, law, boot, iso, pred, (float(lo), float(hi)))


def run_emergence(cfg: ScalingConfig, runs: list[Run]) -> dict | None:
    """Score each size's largest-budget model: per task exact match and per-token probability; calibration."""
    if not cfg.tasks or cfg.emergence_items <= 0:
        return None
    from genforge.checkpoint import load_checkpoint

    best: dict[int, Run] = {}
    for r in runs:
        if r.depth not in best or r.flops > best[r.depth].flops:
            best[r.depth] = r
    cache = Path(cfg.out_dir) / "emergence.json"
    key = {"runs": [best[d].name for d in sorted(best)], "tasks": str(cfg.tasks), "items": cfg.emergence_items}
    if cache.exists():
        saved = read_json(cache, f"{cache}: missing")
        if saved.get("key") == key:
            return saved["scores"]
    items = em.load_items(cfg.tasks, cfg.emergence_items)
    out = {"depths": [], "n": [], "tasks": {}, "choice": []}
    for depth in sorted(best):
        r = best[depth]
        model, tok, _ = load_checkpoint(r.checkpoint)
        res, choice = em.score_model(model, tok, items)
        out["depths"].append(depth)
        out["n"].append(r.n)
        for task, tr in res.items():
            out["tasks"].setdefault(task, []).append(asdict(tr))
        out["choice"].append(asdict(choice) if choice else None)
    write_json(cache, {"key": key, "scores": out})
    return out


def sweep(cfg: ScalingConfig, progress: bool = True) -> SweepResult:
    """Train (or reuse) every run, then fit and check; writes out_dir/results.json."""
    from genforge.tokenizer import Tokenizer

    vocab = Tokenizer.load(cfg.shards).vocab_size
    grid, heldout = plan_runs(cfg, vocab)
    for i, run in enumerate(grid):
        if progress:
            print(f"[scaling] run {i + 1}/{len(grid)}: depth {run.depth}, C={run.flops:.2e}, N={run.n:,}, "
                  f"D={run.tokens:,} tokens ({run.steps} steps)", flush=True)
        grid[i] = train_run(cfg, run, progress)
    if progress:
        print(f"[scaling] held-out run: depth {heldout.depth}, C={heldout.flops:.2e}, N={heldout.n:,}", flush=True)
    # the fit is made (and saved) before the held-out run trains: its prediction cannot peek
    pre = fit_all(cfg, grid, heldout)
    write_json(Path(cfg.out_dir) / "prediction.json", {"heldout": heldout.name, "predicted_loss": pre.heldout_pred,
                                                       "law": pre.law.as_dict()})
    heldout = train_run(cfg, heldout, progress)
    pre.heldout = heldout
    pre.emergence = run_emergence(cfg, grid + [heldout])
    write_json(Path(cfg.out_dir) / "results.json", {
        "runs": [asdict(r) for r in grid], "heldout": asdict(heldout), "law": pre.law.as_dict(),
        "bootstrap": {"alpha": pre.boot.alpha, "beta": pre.boot.beta, "E": pre.boot.E,
                      "n_exponent": pre.boot.n_exponent, "fits": len(pre.boot.fits)},
        "isoflops": None if pre.isoflops is None else {
            "profiles": [asdict(p) for p in pre.isoflops.profiles],
            "n_exponent": pre.isoflops.n_law.exponent if pre.isoflops.n_law else None,
            "d_exponent": pre.isoflops.d_law.exponent if pre.isoflops.d_law else None},
        "heldout_predicted": pre.heldout_pred, "heldout_predicted_ci": pre.heldout_pred_ci,
        "emergence": pre.emergence})
    return pre


# ------------------------------------------------------------------------------------------------ report
def report(cfg: ScalingConfig, res: SweepResult, sr: StageReport) -> None:
    """Lessons, rows and plots of a finished sweep into `sr` (plots under out_dir/plots/)."""
    from genforge.scaling import plots

    out = Path(cfg.out_dir)
    law, boot, h = res.law, res.boot, res.heldout
    sr.row("runs", len(res.runs), note=f"{len(cfg.depths)} sizes (depth {min(cfg.depths)}-{max(cfg.depths)}) x "
           f"{len(cfg.flops)} compute budgets; each its own cosine schedule")
    sr.row("fitted law", f"L = {law.E:.3f} + {law.A:.3g}/N^{law.alpha:.3f} + {law.B:.3g}/D^{law.beta:.3f}",
           note="approach 3: Huber (delta 1e-3) on log loss, L-BFGS from a grid (Hoffmann et al. 2022)")
    sr.lesson("loss falls as a power law in parameters (alpha > 0)", ("alpha", law.alpha),
              effect=(law.alpha, *boot.alpha, len(res.runs)), target=0.0, effect_name="exponent",
              note=f"bootstrap over runs ({len(boot.fits)} refits); Chinchilla: 0.34")
    sr.lesson("loss falls as a power law in tokens (beta > 0)", ("beta", law.beta),
              effect=(law.beta, *boot.beta, len(res.runs)), target=0.0, effect_name="exponent",
              note="Chinchilla: 0.28")
    err = abs(res.heldout_pred - h.val_loss) / h.val_loss
    lo, hi = res.heldout_pred_ci
    errs = sorted(abs(x - h.val_loss) / h.val_loss for x in (lo, hi))
    inside = lo <= h.val_loss <= hi
    sr.lesson(f"the law predicts a larger held-out run (depth {h.depth}, C={h.flops:.2g}) within 5 %",
              ("predicted loss", res.heldout_pred), ("measured loss", h.val_loss),
              effect=(err, errs[0] if not inside else 0.0, errs[1], len(res.runs)), target=0.05,
              direction="below", effect_name="relative error",
              note=f"fit saved before the run trained; interval from the bootstrap fits' predictions "
                   f"[{lo:.3f}, {hi:.3f}]")
    sr.row("held-out run", h.val_loss, baseline=res.heldout_pred,
           note=f"N={h.n:,}, D={h.tokens:,}: measured (value) vs predicted (baseline); error {err:.1%}")
    n_opt, d_opt = law.optimal(cfg.target_flops)
    sr.row(f"compute-optimal at C={cfg.target_flops:.2g} (approach 3)", f"N={n_opt:.3g}, D={d_opt:.3g}",
           note=f"{d_opt / n_opt:.3g} tokens per parameter (Chinchilla: ~20); N_opt ∝ C^"
                f"{law.beta / (law.alpha + law.beta):.2f} [{boot.n_exponent[0]:.2f}, {boot.n_exponent[1]:.2f}]")
    if res.isoflops is not None:
        a2 = res.isoflops
        interior = sum(p.interior for p in a2.profiles)
        if a2.n_law is not None:
            n2 = float(a2.n_law(cfg.target_flops))
            sr.row(f"compute-optimal at C={cfg.target_flops:.2g} (approach 2)",
                   f"N={n2:.3g}, D={cfg.target_flops / 6 / n2:.3g}",
                   note=f"N_opt ∝ C^{a2.n_law.exponent:.2f}, D_opt ∝ C^{a2.d_law.exponent:.2f} through the "
                        f"{interior} interior IsoFLOP minima (Chinchilla: 0.49, 0.51)")
        else:
            sr.row("compute-optimal N and D (approach 2)", "not identified",
                   note=f"only {interior} of {len(a2.profiles)} IsoFLOP minima lie inside the sizes tried; "
                        "add smaller or larger sizes (or budgets) so the valleys are bracketed")
        sr.lesson("at fixed compute an intermediate size is best (IsoFLOP valleys)",
                  ("budgets with an interior minimum", interior), ("budgets", len(a2.profiles)),
                  effect=interior / len(a2.profiles), target=0.5, effect_name="share of budgets",
                  note="a minimum at the edge means the sizes tried do not bracket the optimum at that budget")
    # plots
    plots.frontier(out / "plots" / "frontier.png", res.runs, law, h)
    sr.plot("plots/frontier.png", "Loss vs compute per size (dots), the fitted law (lines) and the held-out run")
    if res.isoflops is not None:
        plots.isoflop(out / "plots" / "isoflop.png", res.isoflops)
        sr.plot("plots/isoflop.png", "IsoFLOP profiles: loss vs N at fixed compute, parabola fits and minima")
    plots.exponents(out / "plots" / "exponents.png", res)
    sr.plot("plots/exponents.png", "Fitted exponents with 95 % bootstrap intervals (Chinchilla's values dashed)")
    total = sum(r.process_seconds for r in res.runs) + h.process_seconds
    sr.row("training CPU time", total, note="seconds of process time for every run (what a small sweep scales from)")
    if res.emergence:
        emergence_report(cfg, res.emergence, sr)


def emergence_report(cfg: ScalingConfig, e: dict, sr: StageReport) -> None:
    from genforge.eval.stats import bootstrap_diff
    from genforge.scaling import plots

    out = Path(cfg.out_dir)
    plots.emergence(out / "plots" / "emergence.png", e)
    sr.plot("plots/emergence.png", "Each task vs size: exact match (left) and per-token probability of the answer "
            "(right), the same items (after Schaeffer et al. 2023)")
    small, large = 0, len(e["n"]) - 1
    for task, per_size in e["tasks"].items():
        ex = [float(np.mean(x["exact"])) for x in per_size]
        tp = [float(np.mean(x["token_prob"])) for x in per_size]
        sr.row(f"{task}: exact match by size", " / ".join(f"{v:.2f}" for v in ex),
               note="per-token prob: " + " / ".join(f"{v:.2f}" for v in tp)
               + f" (N = {', '.join(f'{n:.2g}' for n in e['n'])})")
    cont = np.concatenate([per_size[large]["token_prob"] for per_size in e["tasks"].values()])
    cont0 = np.concatenate([per_size[small]["token_prob"] for per_size in e["tasks"].values()])
    exact = np.concatenate([per_size[large]["exact"] for per_size in e["tasks"].values()])
    exact0 = np.concatenate([per_size[small]["exact"] for per_size in e["tasks"].values()])
    sr.note("Emergence and calibration score each size's model from the grid's largest budget (equal compute, so a "
            "larger model saw fewer tokens) and the held-out run; at budgets where the smallest model is the "
            "compute-optimal one, larger models are worse on every metric: the comparison that separates metric from "
            "ability needs the sizes on the compute frontier (size=small or larger).")
    sr.lesson("the continuous metric improves with size (largest vs smallest model, same items)",
              ("per-token probability, largest", float(cont.mean())), ("smallest", float(cont0.mean())),
              effect=bootstrap_diff(cont, cont0, paired=True), target=0.0)
    sr.lesson("exact match improves with size (largest vs smallest model, same items)",
              ("exact match, largest", float(exact.mean())), ("smallest", float(exact0.mean())),
              effect=bootstrap_diff(exact, exact0, paired=True), target=0.0,
              note="a metric that needs every answer token right can stay flat while the per-token one moves")
    choices = [c for c in e["choice"] if c]
    if len(choices) == len(e["n"]) and choices:
        eces = [em.ece(c["confidence"], c["correct"]) for c in choices]
        accs = [float(np.mean(c["correct"])) for c in choices]
        plots.calibration(out / "plots" / "calibration.png", e["n"], eces, accs)
        sr.plot("plots/calibration.png", "Multiple-choice accuracy and expected calibration error vs size")
        sr.row("multiple choice: accuracy by size", " / ".join(f"{a:.2f}" for a in accs), baseline=0.25,
               note="ECE: " + " / ".join(f"{x:.3f}" for x in eces))
        a = em.ChoiceResult(**choices[small])
        b = em.ChoiceResult(**choices[large])
        sr.lesson("larger models are better calibrated (ECE smallest - largest > 0)",
                  ("ECE, largest", eces[large]), ("ECE, smallest", eces[small]),
                  effect=em.bootstrap_ece_diff(a, b, seed=cfg.seed), target=0.0,
                  note="4-option questions about world facts; confidence = normalised probability of the letter")
