"""Fitting scaling laws to (N, D, loss) runs: Chinchilla's approaches 2 and 3 (Hoffmann et al. 2022, arXiv 2203.15556).

Approach 3 fits the parametric loss of every run at once,

    L(N, D) = E + A / N^alpha + B / D^beta                                   (Hoffmann et al., eq. 2)

by minimising a Huber loss (delta 1e-3) between log L_hat and log L over a grid of starting points with L-BFGS,
with L_hat written as LSE(a - alpha log N, b - beta log D, e) (A = e^a, B = e^b, E = e^e) so the search is
unconstrained and well scaled (their section D.2). Minimising it under C = 6 N D gives the compute-optimal split

    N_opt(C) = G (C/6)^(beta/(alpha+beta)),  D_opt(C) = (C/6) / N_opt,   G = (alpha A / (beta B))^(1/(alpha+beta))

Approach 2 (IsoFLOP profiles) fixes a few compute budgets, trains several sizes at each, fits a parabola to loss
vs log N per budget and takes its minimum; power laws N_opt ∝ C^a, D_opt ∝ C^b through those minima give the
exponents without assuming the functional form above. Chinchilla found a ≈ b ≈ 0.5 (tokens ≈ 20 x parameters).

Intervals: percentile bootstrap over runs (resample the runs with replacement, refit), as the paper's
Table A3 does for approach 3.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from genforge.errors import ConfigError


@dataclass
class LawFit:
    """L(N, D) = E + A/N^alpha + B/D^beta, and how well it fits."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    huber: float = math.nan  # the objective at the optimum (mean Huber of log residuals)
    n_runs: int = 0

    def loss(self, n: float | np.ndarray, d: float | np.ndarray) -> float | np.ndarray:
        """Predicted loss at N parameters and D tokens."""
        return self.E + self.A / np.power(n, self.alpha) + self.B / np.power(d, self.beta)

    def optimal(self, flops: float) -> tuple[float, float]:
        """(N_opt, D_opt) minimising L under C = 6 N D (closed form; Hoffmann et al. eq. 4)."""
        a, b = self.alpha, self.beta
        g = (a * self.A / (b * self.B)) ** (1.0 / (a + b))
        n = g * (flops / 6.0) ** (b / (a + b))
        return n, flops / (6.0 * n)

    def as_dict(self) -> dict:
        return asdict(self)


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    """Huber's loss: quadratic within delta, linear beyond (robust to a few bad runs)."""
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray,
               delta: float) -> tuple[float, np.ndarray]:
    """Mean Huber(log L_hat - log L) and its gradient in theta = (a, b, e, alpha, beta)."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])  # (3, runs)
    top = terms.max(axis=0)
    w = np.exp(terms - top)  # (3, runs)
    lse = top + np.log(w.sum(axis=0))  # log L_hat
    w = w / w.sum(axis=0)  # d lse / d term
    r = lse - log_l
    dh = np.clip(r, -delta, delta)  # d huber / d r
    n = len(r)
    grad = np.array([(dh * w[0]).sum(), (dh * w[1]).sum(), (dh * w[2]).sum(),
                     -(dh * w[0] * log_n).sum(), -(dh * w[1] * log_d).sum()]) / n
    return float(huber(r, delta).mean()), grad


# a coarser version of Hoffmann et al.'s initialisation grid (section D.2; 243 starts, ~3 s): every fit tries all
GRID = {"alpha": (0.2, 0.6, 1.2), "beta": (0.2, 0.6, 1.2), "e": (-1.0, 0.0, 1.0), "a": (0.0, 8.0, 16.0),
        "b": (0.0, 8.0, 16.0)}


def fit_law(n: Sequence[float], d: Sequence[float], loss: Sequence[float], *, delta: float = 1e-3,
            starts: Sequence[np.ndarray] | None = None, polish: int = 8) -> LawFit:
    """Approach 3: fit L(N, D) to runs of N parameters, D tokens and final loss (Huber on log loss, L-BFGS).

    `starts` (theta vectors) replaces the initialisation grid (the bootstrap restarts from the full fit)."""
    from genforge.extras import require

    minimize = require("scipy.optimize", "scaling").minimize

    log_n, log_d, log_l = (np.log(np.asarray(x, dtype=np.float64)) for x in (n, d, loss))
    if len(log_l) < 5:
        raise ConfigError(f"a scaling-law fit needs >= 5 runs (5 parameters), got {len(log_l)}; add sizes or budgets")
    if starts is None:
        starts = [np.array([a, b, e, al, be]) for a, b, e, al, be in
                  itertools.product(GRID["a"], GRID["b"], GRID["e"], GRID["alpha"], GRID["beta"])]
    bounds = [(None, None)] * 3 + [(0.0, 5.0)] * 2

    def run(x0: np.ndarray, tight: bool):
        # the objective is ~1e-6 near the optimum: default tolerances stop far from it, so the best few
        # starts of a quick pass are polished with tight ones (as fast as polishing all, ~10x cheaper)
        opts = {"ftol": 1e-15, "gtol": 1e-12, "maxiter": 2000} if tight else {"maxiter": 200}
        return minimize(_objective, x0, args=(log_n, log_d, log_l, delta), jac=True, method="L-BFGS-B",
                        bounds=bounds, options=opts)

    rough = sorted((run(x0, False) for x0 in starts), key=lambda r: r.fun)
    best = min((run(r.x, True) for r in rough[:polish]), key=lambda r: r.fun)
    a, b, e, alpha, beta = best.x
    return LawFit(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=float(alpha), beta=float(beta),
                  huber=float(best.fun), n_runs=len(log_l))


def _theta(f: LawFit) -> np.ndarray:
    return np.array([math.log(f.A), math.log(f.B), math.log(f.E), f.alpha, f.beta])


@dataclass
class PowerLaw:
    """y = k * x^exponent, fitted by least squares in log-log space."""

    k: float
    exponent: float

    def __call__(self, x: float | np.ndarray) -> float | np.ndarray:
        return self.k * np.power(x, self.exponent)


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> PowerLaw:
    """Least squares line through (log x, log y)."""
    lx, ly = np.log(np.asarray(x, dtype=np.float64)), np.log(np.asarray(y, dtype=np.float64))
    if len(lx) < 2 or np.ptp(lx) == 0:
        raise ConfigError(f"a power law needs >= 2 distinct x values, got {len(set(lx.tolist()))}")
    slope, icpt = np.polyfit(lx, ly, 1)
    return PowerLaw(k=float(math.exp(icpt)), exponent=float(slope))


@dataclass
class IsoFLOP:
    """One compute budget's profile: the runs at that budget and the parabola's minimum."""

    flops: float
    n: list[float]
    loss: list[float]
    coef: list[float]  # parabola in log N: loss = c0 (log N)^2 + c1 log N + c2
    n_opt: float
    loss_opt: float
    interior: bool  # the minimum lies inside the sizes tried (else it is an extrapolation: trust it less)


def isoflop_profile(flops: float, n: Sequence[float], loss: Sequence[float]) -> IsoFLOP:
    """Approach 2 for one budget: parabola through (log N, loss), its vertex as N_opt."""
    ln = np.log(np.asarray(n, dtype=np.float64))
    ys = np.asarray(loss, dtype=np.float64)
    if len(ln) < 3:
        raise ConfigError(f"an IsoFLOP profile needs >= 3 sizes at one budget, got {len(ln)} at C={flops:.3g}")
    c0, c1, c2 = np.polyfit(ln, ys, 2)
    if c0 > 0:
        x_opt = -c1 / (2 * c0)
        interior = bool(ln.min() <= x_opt <= ln.max())
        x_opt = float(np.clip(x_opt, ln.min() - 1.0, ln.max() + 1.0))  # a flat parabola must not fly off
    else:  # concave or flat: no minimum; the best run tried is the answer, at the edge
        x_opt, interior = float(ln[np.argmin(ys)]), False
    return IsoFLOP(flops=float(flops), n=[float(v) for v in n], loss=[float(v) for v in ys],
                   coef=[float(c0), float(c1), float(c2)], n_opt=math.exp(x_opt),
                   loss_opt=float(np.polyval([c0, c1, c2], x_opt)), interior=interior)


@dataclass
class Approach2:
    profiles: list[IsoFLOP]
    n_law: PowerLaw | None  # N_opt(C); None when fewer than 2 budgets have their minimum inside the sizes tried
    d_law: PowerLaw | None  # D_opt(C) = C / (6 N_opt)


def fit_isoflops(budgets: dict[float, tuple[Sequence[float], Sequence[float]]]) -> Approach2:
    """Approach 2 over budgets {C: (sizes, losses)}: each budget's optimum, then N_opt, D_opt vs C power laws
    through the *interior* minima only (a minimum at the grid's edge says "smaller/larger than tried", not where)."""
    profiles = [isoflop_profile(c, n, loss) for c, (n, loss) in sorted(budgets.items())]
    inside = [p for p in profiles if p.interior]
    if len(inside) < 2:
        return Approach2(profiles, None, None)
    cs = [p.flops for p in inside]
    n_opt = [p.n_opt for p in inside]
    return Approach2(profiles, fit_power_law(cs, n_opt), fit_power_law(cs, [c / (6 * n) for c, n in zip(cs, n_opt)]))


@dataclass
class Bootstrap:
    """Percentile intervals of the fitted quantities over resampled runs."""

    fits: list[LawFit]
    alpha: tuple[float, float]
    beta: tuple[float, float]
    E: tuple[float, float]
    n_exponent: tuple[float, float]  # beta / (alpha + beta): N_opt ∝ C^this


def bootstrap_law(n: Sequence[float], d: Sequence[float], loss: Sequence[float], full: LawFit, *,
                  n_resamples: int = 200, seed: int = 0, confidence: float = 0.95) -> Bootstrap:
    """Refit approach 3 on runs resampled with replacement (starting from the full fit and a few grid points)."""
    n, d, loss = (np.asarray(x, dtype=np.float64) for x in (n, d, loss))
    rng = np.random.default_rng(seed)
    starts = [_theta(full), np.array([5.0, 5.0, 0.0, 0.5, 0.5]), np.array([10.0, 10.0, 0.5, 1.0, 1.0])]
    fits = []
    for _ in range(n_resamples):
        idx = rng.integers(0, len(n), len(n))
        if len(set(n[idx].tolist())) < 2 or len(set(d[idx].tolist())) < 2:
            continue  # a resample with one size (or one budget) cannot identify an exponent
        fits.append(fit_law(n[idx], d[idx], loss[idx], starts=starts))
    q = ((1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100)

    def pct(vals: list[float]) -> tuple[float, float]:
        lo, hi = np.percentile(vals, q)
        return float(lo), float(hi)

    return Bootstrap(fits, pct([f.alpha for f in fits]), pct([f.beta for f in fits]), pct([f.E for f in fits]),
                     pct([f.beta / max(f.alpha + f.beta, 1e-9) for f in fits]))
