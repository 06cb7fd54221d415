"""Bootstrap intervals on synthetic data whose true effect is known."""

import math

import numpy as np
import pytest

from genforge.errors import DataError
from genforge.eval import stats


def _paired_draw(rng, n, effect, item_sd=1.0, noise_sd=0.3):
    """Two scores per item sharing an item difficulty (so they correlate): b = d + e1, a = d + effect + e2."""
    d = rng.normal(0, item_sd, n)
    return d + effect + rng.normal(0, noise_sd, n), d + rng.normal(0, noise_sd, n)


def test_paired_diff_covers_the_true_effect_about_95_percent_of_the_time():
    rng = np.random.default_rng(123)
    true, draws, hits = 0.25, 300, 0
    for i in range(draws):
        a, b = _paired_draw(rng, 60, true)
        ci = stats.bootstrap_diff_paired(a, b, n_resamples=400, seed=i)
        hits += ci.low <= true <= ci.high
    coverage = hits / draws
    # Percentile bootstrap slightly undercovers at n=60; 300 draws put the sampling error near 1.3 points.
    assert 0.89 <= coverage <= 0.99, coverage


def test_proportion_interval_covers_the_true_rate():
    rng = np.random.default_rng(7)
    p, draws, hits = 0.3, 300, 0
    for i in range(draws):
        x = (rng.random(200) < p).astype(float)
        ci = stats.bootstrap_proportion(x, n_resamples=400, seed=i)
        hits += ci.low <= p <= ci.high
    assert 0.89 <= hits / draws <= 0.99


def test_paired_interval_is_narrower_than_unpaired_when_items_correlate():
    a, b = _paired_draw(np.random.default_rng(0), 100, 0.2)
    paired = stats.bootstrap_diff(a, b, paired=True)
    unpaired = stats.bootstrap_diff(a, b, paired=False)
    assert paired.estimate == pytest.approx(unpaired.estimate)
    # shared item difficulty (sd 1) cancels only in the paired resample; noise sd is 0.3
    assert (paired.high - paired.low) < 0.5 * (unpaired.high - unpaired.low)
    assert paired.n == 100 and unpaired.n == 200


def test_real_effect_excludes_zero_and_no_effect_includes_it():
    rng = np.random.default_rng(1)
    a, b = _paired_draw(rng, 150, 0.3)
    assert stats.bootstrap_diff_paired(a, b).low > 0
    a0, b0 = _paired_draw(rng, 150, 0.0)
    ci0 = stats.bootstrap_diff_paired(a0, b0)
    assert ci0.low < 0 < ci0.high and not ci0.excludes(0.0)


def test_unpaired_diff_of_accuracies():
    rng = np.random.default_rng(2)
    a = (rng.random(400) < 0.6).astype(float)
    b = (rng.random(300) < 0.3).astype(float)
    ci = stats.bootstrap_diff_unpaired(a, b)
    assert ci.estimate == pytest.approx(a.mean() - b.mean())
    assert ci.excludes(0.0) and ci.low < 0.3 < ci.high


def test_same_seed_same_interval_and_resample_count_matters():
    x = np.random.default_rng(3).random(50)
    assert stats.bootstrap_mean(x, seed=5) == stats.bootstrap_mean(x, seed=5)
    assert stats.bootstrap_mean(x, seed=5) != stats.bootstrap_mean(x, seed=6)
    assert stats.bootstrap_mean(x, n_resamples=10).n == 50


def test_large_inputs_are_resampled_in_chunks():
    x = np.random.default_rng(4).random(30_000)  # 2000 x 30000 indices would be 480 MB at once
    ci = stats.bootstrap_mean(x)
    se = x.std() / math.sqrt(x.size)
    assert ci.high - ci.low == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_win_rate_counts_ties_as_half():
    a = [3, 1, 2, 2]
    b = [1, 3, 2, 2]
    assert list(stats.win_outcomes(a, b)) == [1.0, 0.0, 0.5, 0.5]
    ci = stats.bootstrap_win_rate(a, b)
    assert ci.estimate == 0.5 and ci.low <= 0.5 <= ci.high
    rng = np.random.default_rng(5)
    x = rng.normal(size=200)
    better = stats.bootstrap_win_rate(x + 0.5 + rng.normal(0, 0.5, 200), x)
    assert better.low > 0.5


def test_ratio_of_means():
    rng = np.random.default_rng(6)
    full = (rng.random(300) < 0.5).astype(float)
    lora = full * (rng.random(300) < 0.9)  # LoRA solves ~90 % of what full FT solves
    ci = stats.bootstrap_ratio(lora, full)
    assert ci.estimate == pytest.approx(lora.mean() / full.mean())
    assert 0.8 < ci.low < ci.estimate < ci.high <= 1.0
    with pytest.raises(DataError, match="undefined"):
        stats.bootstrap_ratio([1, 1], [0, 0])


@pytest.mark.parametrize("values", [[0.7], [0.4] * 25])
def test_degenerate_inputs_give_zero_width_intervals(values):
    ci = stats.bootstrap_mean(values)
    assert ci.low == ci.high == ci.estimate == pytest.approx(values[0])
    d = stats.bootstrap_diff_paired(values, values)
    assert d.estimate == d.low == d.high == 0.0


def test_bad_inputs_raise_data_errors():
    with pytest.raises(DataError, match="no values"):
        stats.bootstrap_mean([])
    with pytest.raises(DataError, match="NaN"):
        stats.bootstrap_mean([1.0, float("nan")])
    with pytest.raises(DataError, match="same items"):
        stats.bootstrap_diff_paired([1, 2], [1, 2, 3])
    with pytest.raises(DataError, match="0 or 1"):
        stats.bootstrap_proportion([0, 0.5])


def test_mean_std_over_seeds():
    s = stats.mean_std([0.5, 0.6, 0.7])
    assert s.mean == pytest.approx(0.6) and s.std == pytest.approx(0.1) and s.n == 3
    one = stats.mean_std([0.42])
    assert one.mean == 0.42 and one.std == 0.0 and one.n == 1
    assert "3 seeds" in str(s)
