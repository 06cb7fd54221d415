"""Metrics: Fréchet distance (pytorch-fid's), FID self ~0 / noise large, precision/recall, faithfulness."""

import numpy as np
import pytest
import torch

from genforge.image.metrics import (
    accuracy,
    bootstrap_fid,
    caption_faithfulness,
    extract_features,
    fid,
    frechet_distance,
    precision_recall,
    train_classifier,
)
from genforge.world.images import load_digits_set, make_shapes


def test_frechet_distance_known_value():
    # Two Gaussians with covariances I and 4I in D dims and means 0 and m: d^2 = |m|^2 + D(1 + 4 - 2*2) = |m|^2 + D
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200000, 3))
    b = 2 * rng.standard_normal((200000, 3)) + np.array([1.0, 0.0, 2.0])
    assert abs(frechet_distance(a, b) - (5.0 + 3.0)) < 0.1
    assert abs(frechet_distance(a, a)) < 1e-6


@pytest.fixture(scope="module")
def digits_clf():
    tr = load_digits_set("train", seed=0)
    return train_classifier(tr.images, tr.labels, steps=300, seed=0)


def test_fid_self_near_zero_and_noise_large(digits_clf):
    te = load_digits_set("test", seed=0)
    tr = load_digits_set("train", seed=0)
    assert accuracy(digits_clf, te.images, te.labels)["digit"] > 0.85
    self_fid = fid(digits_clf, te.images, te.images)
    real_real = fid(digits_clf, tr.images[:360], te.images)
    noise = fid(digits_clf, te.images, torch.rand(360, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    assert abs(self_fid) < 1e-3
    assert noise > 20 * max(real_real, 1e-3)


def test_precision_recall(digits_clf):
    te = load_digits_set("test", seed=0)
    real = extract_features(digits_clf, te.images[:200])
    same = extract_features(digits_clf, te.images[200:])
    pr = precision_recall(real, same)
    assert pr["precision"] > 0.7 and pr["recall"] > 0.7
    # a "generator" that only makes zeros: faithful-ish images, no coverage
    zeros = te.images[200:][te.labels["digit"][200:] == 0]
    pr0 = precision_recall(real, extract_features(digits_clf, zeros))
    assert pr0["recall"] < 0.3
    noise = extract_features(digits_clf, torch.rand(150, 1, 8, 8, generator=torch.Generator().manual_seed(1)))
    assert precision_recall(real, noise)["precision"] < pr["precision"] - 0.3


def test_caption_faithfulness_with_heldout_attribute_classifier():
    train = make_shapes(1500, seed=10)
    clf = train_classifier(train.images, train.labels, steps=400, seed=1)
    test = make_shapes(200, seed=11)
    acc = accuracy(clf, test.images, test.labels)
    assert min(acc.values()) > 0.7 and acc["colour"] > 0.95, acc  # (shape is the slow one to learn in 400 steps)
    right = caption_faithfulness(clf, test.images, test.labels)
    wrong = caption_faithfulness(clf, test.images, {k: (v + 1) % int(v.max() + 1) for k, v in test.labels.items()})
    assert right["all"] > 0.6 and wrong["all"] < 0.05
    assert abs(right["colour"] - acc["colour"]) < 1e-6


def test_precision_recall_against_itself_is_one_and_far_away_is_zero():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((100, 8))
    assert precision_recall(a, a) == {"precision": 1.0, "recall": 1.0}
    assert precision_recall(a, a + 100.0) == {"precision": 0.0, "recall": 0.0}
    # half the generated points far away: precision falls to ~0.5, the other half still covers part of the data
    mix = np.concatenate([a[:50], a[50:] + 100.0])
    pr = precision_recall(a, mix)
    assert pr["precision"] == 0.5 and 0.4 < pr["recall"] < 1.0


def test_bootstrap_precision_recall_intervals():
    from genforge.image.metrics import bootstrap_precision_recall

    rng = np.random.default_rng(1)
    real, fake = rng.standard_normal((150, 4)), rng.standard_normal((150, 4)) * 1.5
    iv = bootstrap_precision_recall(real, fake, n_resamples=200)
    pr = precision_recall(real, fake)
    for k in ("precision", "recall"):
        assert iv[k].estimate == pr[k] and iv[k].low <= pr[k] <= iv[k].high and iv[k].high - iv[k].low < 0.3
    with pytest.raises(Exception, match="k=3"):
        precision_recall(real[:3], fake)


def test_bootstrap_fid_interval_holds_its_estimate_and_the_spread_of_new_draws():
    """FID's finite-sample bias pushes percentile intervals above their own estimate; the normal bootstrap
    interval holds the estimate, and its half-width matches the spread of FIDs over fresh draws of samples."""
    rng = np.random.default_rng(0)
    real = rng.normal(size=(1000, 16))
    draws = [frechet_distance(real, rng.normal(0.2, 1.0, size=(150, 16))) for _ in range(40)]
    want = 1.96 * float(np.std(draws, ddof=1))
    for seed in range(3):
        iv = bootstrap_fid(real, rng.normal(0.2, 1.0, size=(150, 16)), n_resamples=100, seed=seed)
        assert iv.low < iv.estimate < iv.high
        assert 0.5 * want < (iv.high - iv.low) / 2 < 2 * want, (iv, want)
