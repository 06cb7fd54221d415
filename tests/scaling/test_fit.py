"""Scaling-law fits recover known laws from synthetic losses (approach 3 and approach 2 of Hoffmann et al. 2022)."""

import numpy as np
import pytest

from genforge.errors import ConfigError
from genforge.scaling.fit import LawFit, bootstrap_law, fit_isoflops, fit_law, fit_power_law, isoflop_profile

TRUE = LawFit(E=1.7, A=400.0, B=1500.0, alpha=0.34, beta=0.28)  # Chinchilla's own exponents, other constants
N = np.repeat([1e5, 3e5, 1e6, 3e6, 1e7], 3)
D = np.tile([1e7, 1e8, 1e9], 5)


def test_exact_losses_give_back_the_law():
    f = fit_law(N, D, TRUE.loss(N, D))
    for k in ("E", "A", "B", "alpha", "beta"):
        assert getattr(f, k) == pytest.approx(getattr(TRUE, k), rel=1e-3), k


def test_noisy_losses_give_the_exponents_and_a_bootstrap_interval_around_them():
    rng = np.random.default_rng(0)
    loss = TRUE.loss(N, D) * np.exp(rng.normal(0, 0.003, len(N)))
    f = fit_law(N, D, loss)
    assert f.alpha == pytest.approx(TRUE.alpha, abs=0.03) and f.beta == pytest.approx(TRUE.beta, abs=0.03)
    b = bootstrap_law(N, D, loss, f, n_resamples=30, seed=0)
    assert len(b.fits) >= 25
    assert b.alpha[0] <= f.alpha <= b.alpha[1] and b.beta[0] <= f.beta <= b.beta[1]
    assert b.alpha[1] - b.alpha[0] < 0.1


def test_a_wrong_law_is_not_recovered():
    # the fit must be able to fail: losses from other exponents give other exponents
    other = LawFit(E=1.7, A=400.0, B=1500.0, alpha=0.6, beta=0.15)
    f = fit_law(N, D, other.loss(N, D))
    assert abs(f.alpha - TRUE.alpha) > 0.2 and abs(f.beta - TRUE.beta) > 0.1


def test_compute_optimal_split_is_the_minimum_on_the_isoflop_line():
    c = 1e21
    n_opt, d_opt = TRUE.optimal(c)
    assert 6 * n_opt * d_opt == pytest.approx(c)
    ns = np.logspace(6, 12, 4001)
    numeric = ns[np.argmin(TRUE.loss(ns, c / (6 * ns)))]
    assert n_opt == pytest.approx(numeric, rel=0.01)


def test_isoflop_minima_follow_the_predicted_exponent():
    budgets = {}
    for c in (1e17, 1e18, 1e19, 1e20):
        n_mid, _ = TRUE.optimal(c)
        ns = n_mid * np.logspace(-0.6, 0.6, 7)
        budgets[c] = (ns, TRUE.loss(ns, c / (6 * ns)))
    a2 = fit_isoflops(budgets)
    expected = TRUE.beta / (TRUE.alpha + TRUE.beta)  # N_opt ∝ C^(beta/(alpha+beta))
    assert a2.n_law.exponent == pytest.approx(expected, abs=0.02)
    assert a2.d_law.exponent == pytest.approx(1 - expected, abs=0.02)
    assert all(p.interior for p in a2.profiles)


def test_isoflop_needs_three_sizes_and_power_law_two_points():
    with pytest.raises(ConfigError, match=">= 3 sizes"):
        isoflop_profile(1e18, [1e6, 2e6], [3.0, 2.9])
    with pytest.raises(ConfigError):
        fit_power_law([1.0, 1.0], [2.0, 3.0])
    assert fit_power_law([1, 10, 100], [2, 20, 200]).exponent == pytest.approx(1.0)


def test_isoflop_minima_at_the_edge_are_not_fitted():
    # every budget's best size is the smallest tried: no valley, so approach 2 must not invent an exponent
    budgets = {c: ([1e5, 3e5, 1e6], [2.0 + k, 2.5 + k, 3.5 + k]) for k, c in enumerate((1e15, 1e16, 1e17))}
    a2 = fit_isoflops(budgets)
    assert not any(p.interior for p in a2.profiles) and a2.n_law is None
