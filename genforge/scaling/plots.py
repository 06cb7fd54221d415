"""The scaling report's figures: the compute frontier, IsoFLOP profiles, exponents, emergence, calibration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# the sweep's types (Run, SweepResult, LawFit, Approach2) are duck-typed here: the sweep imports this module
Run = SweepResult = LawFit = Approach2 = Any


def _figure(ncols: int = 1):
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols if ncols > 1 else 6.4, 4), dpi=110, squeeze=False)
    return plt, fig, axes[0]


def _save(plt, fig, path: str | Path) -> Path:
    from genforge.report import save_figure

    for ax in fig.axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def frontier(path: str | Path, runs: list[Run], law: LawFit, heldout: Run | None = None) -> Path:
    """Loss vs compute, one line per size; the fitted law's curve for each size dashed."""
    plt, fig, (ax,) = _figure()
    depths = sorted({r.depth for r in runs})
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(depths)))
    for depth, col in zip(depths, colors):
        rs = sorted((r for r in runs if r.depth == depth), key=lambda r: r.flops)
        ax.plot([r.flops for r in rs], [r.val_loss for r in rs], "o-", color=col,
                label=f"depth {depth} (N={rs[0].n:.2g})")
        cs = np.geomspace(min(r.flops for r in runs) / 2, max(r.flops for r in runs) * 4, 50)
        ax.plot(cs, law.loss(rs[0].n, cs / (6 * rs[0].n)), "--", color=col, alpha=0.6)
    best = [min((r for r in runs if r.flops == c), key=lambda r: r.val_loss) for c in sorted({r.flops for r in runs})]
    ax.plot([r.flops for r in best], [r.val_loss for r in best], "k:", lw=2, label="frontier (best size per budget)")
    if heldout is not None:
        ax.plot([heldout.flops], [heldout.val_loss], "r*", ms=12, label=f"held-out depth {heldout.depth}")
        ax.plot([heldout.flops], [law.loss(heldout.n, heldout.tokens)], "rx", ms=10, label="its prediction")
    ax.set_xscale("log")
    ax.set_xlabel("training compute C = 6 N D (FLOPs)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("Loss vs compute per model size")
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def isoflop(path: str | Path, a2: Approach2) -> Path:
    """Loss vs N at each budget, the parabola in log N and its minimum."""
    plt, fig, (ax, ax2) = _figure(2)
    colors = plt.cm.plasma(np.linspace(0, 0.85, len(a2.profiles)))
    for p, col in zip(a2.profiles, colors):
        ax.plot(p.n, p.loss, "o", color=col, label=f"C={p.flops:.2g}")
        xs = np.linspace(np.log(min(p.n)) - 0.3, np.log(max(p.n)) + 0.3, 60)
        ax.plot(np.exp(xs), np.polyval(p.coef, xs), "-", color=col, alpha=0.7)
        ax.plot([p.n_opt], [p.loss_opt], "kx" if p.interior else "k^", ms=9)
    ax.set_xscale("log")
    ax.set_xlabel("parameters N (matmul)")
    ax.set_ylabel("validation loss")
    ax.set_title("IsoFLOP profiles (x = minimum, ^ = at the edge)")
    ax.legend(fontsize=7)
    cs = np.array([p.flops for p in a2.profiles])
    inside = np.array([p.interior for p in a2.profiles])
    n_opt = np.array([p.n_opt for p in a2.profiles])
    ax2.plot(cs[inside], n_opt[inside], "o", color="tab:blue", label="N_opt")
    ax2.plot(cs[inside], cs[inside] / 6 / n_opt[inside], "s", color="tab:orange", label="D_opt")
    ax2.plot(cs[~inside], n_opt[~inside], "o", mfc="none", color="tab:blue", label="N_opt at the edge (not fitted)")
    if a2.n_law is not None:
        grid = np.geomspace(cs.min() / 3, cs.max() * 3, 30)
        ax2.plot(grid, a2.n_law(grid), "-", label=f"N ∝ C^{a2.n_law.exponent:.2f}")
        ax2.plot(grid, a2.d_law(grid), "-", label=f"D ∝ C^{a2.d_law.exponent:.2f}")
    from matplotlib.ticker import NullFormatter

    ax2.xaxis.set_minor_formatter(NullFormatter())
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("compute C (FLOPs)")
    ax2.set_title("Compute-optimal N and D (approach 2)")
    ax2.legend(fontsize=7)
    return _save(plt, fig, path)


def exponents(path: str | Path, res: SweepResult) -> Path:
    """alpha, beta and the N_opt exponent with bootstrap intervals, against Chinchilla's estimates."""
    plt, fig, (ax,) = _figure()
    law, boot = res.law, res.boot
    names = ["alpha (N)", "beta (D)", "a: N_opt ∝ C^a"]
    vals = [law.alpha, law.beta, law.beta / (law.alpha + law.beta)]
    ivs = [boot.alpha, boot.beta, boot.n_exponent]
    ref = [0.34, 0.28, 0.46]  # Hoffmann et al. 2022, approach 3
    xs = np.arange(len(names))
    err = np.array([[v - lo for v, (lo, _) in zip(vals, ivs)], [hi - v for v, (_, hi) in zip(vals, ivs)]])
    ax.errorbar(xs, vals, yerr=np.maximum(err, 0), fmt="o", capsize=6, label="this sweep (95 % bootstrap)")
    ax.scatter(xs, ref, marker="_", s=400, color="gray", label="Chinchilla (approach 3)")
    if res.isoflops is not None and res.isoflops.n_law is not None:
        ax.scatter([2], [res.isoflops.n_law.exponent], marker="s", color="tab:orange", label="approach 2")
    ax.set_xticks(xs, names)
    ax.set_ylabel("exponent")
    ax.set_title("Fitted exponents")
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def emergence(path: str | Path, e: dict) -> Path:
    """Per task: exact match vs N (left) and per-token probability of the answer vs N (right)."""
    plt, fig, (ax, ax2) = _figure(2)
    for task, per_size in e["tasks"].items():
        ax.plot(e["n"], [np.mean(x["exact"]) for x in per_size], "o-", label=task)
        ax2.plot(e["n"], [np.mean(x["token_prob"]) for x in per_size], "o-", label=task)
    titles = ("exact match (all answer tokens greedy-correct)", "per-token probability of the answer")
    for a, title in zip((ax, ax2), titles):
        a.set_xscale("log")
        a.set_xlabel("parameters N (matmul)")
        a.set_title(title, fontsize=9)
        a.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def calibration(path: str | Path, n: list[float], eces: list[float], accs: list[float]) -> Path:
    plt, fig, (ax,) = _figure()
    ax.plot(n, eces, "o-", label="expected calibration error")
    ax.plot(n, accs, "s-", label="accuracy")
    ax.axhline(0.25, color="gray", ls=":", label="chance accuracy")
    ax.set_xscale("log")
    ax.set_xlabel("parameters N (matmul)")
    ax.set_title("Multiple choice: accuracy and calibration vs size")
    ax.legend(fontsize=7)
    return _save(plt, fig, path)
