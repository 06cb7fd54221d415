"""Image metrics on features of a classifier trained here: FID, precision/recall, caption faithfulness.

FID (Heusel et al. 2017) is the Fréchet distance between Gaussians fitted to features of real and generated
images. The standard FID uses ImageNet Inception features; ours come from a small CNN trained in the run on the
image world (or digits), so the numbers are only comparable within this project, never with CIFAR-10 FIDs.
The distance itself is `pytorch-fid`'s `calculate_frechet_distance`, not a re-implementation.
Precision/recall follow Kynkäänniemi et al. 2019 (k-NN balls around feature vectors).
"""

from __future__ import annotations

import ast
import importlib.util
import warnings
from collections.abc import Callable
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from genforge.errors import GenforgeError
from genforge.eval.stats import Interval


class WorldClassifier(nn.Module):
    """A small CNN with one head per attribute; its penultimate layer (feat_dim) is the FID feature space."""

    def __init__(self, in_ch: int, heads: dict[str, int], width: int = 16, feat_dim: int = 64) -> None:
        super().__init__()
        self.heads_spec = dict(heads)
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(width * 16, feat_dim), nn.ReLU())
        self.heads = nn.ModuleDict({k: nn.Linear(feat_dim, n) for k, n in heads.items()})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> (B, feat_dim)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {k: h(f) for k, h in self.heads.items()}


def train_classifier(images: torch.Tensor, labels: dict[str, torch.Tensor], steps: int = 600, batch_size: int = 64,
                     lr: float = 2e-3, seed: int = 0) -> WorldClassifier:
    """Fit a `WorldClassifier` on (images, labels) with cross-entropy summed over heads; returns it in eval mode."""
    torch.manual_seed(seed)
    heads = {k: int(v.max()) + 1 for k, v in labels.items()}
    clf = WorldClassifier(images.shape[1], heads)
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=g)
        x = images[idx]
        x = x + 0.02 * torch.randn(x.shape, generator=g)  # a little noise: features should not hinge on exact pixels
        out = clf(x)
        loss = sum(F.cross_entropy(out[k], labels[k][idx]) for k in heads)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return clf.eval()


@torch.no_grad()
def accuracy(clf: WorldClassifier, images: torch.Tensor, labels: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-head accuracy of the classifier."""
    out = clf(images)
    return {k: float((out[k].argmax(-1) == labels[k]).float().mean()) for k in labels}


@torch.no_grad()
def extract_features(clf: WorldClassifier, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """(N, C, H, W) -> (N, feat_dim) float64 numpy features."""
    clf.eval()
    return torch.cat([clf.features(images[i: i + batch_size]) for i in range(0, len(images), batch_size)]).double(
    ).numpy()


def _load_frechet() -> Callable:
    """pytorch-fid's `calculate_frechet_distance`.

    `pytorch_fid.fid_score` imports torchvision at module level (for its Inception network, which we do not use);
    where torchvision cannot be imported (e.g. a CPU-only torch beside PyPI's CUDA torchvision), we compile that
    one function from the installed pytorch-fid source instead, so the code that runs is still theirs.
    """
    try:
        from pytorch_fid.fid_score import calculate_frechet_distance

        return calculate_frechet_distance
    except Exception:  # noqa: BLE001 - torchvision missing or broken; fall through to the source
        pass
    spec = importlib.util.find_spec("pytorch_fid")
    if spec is None or not spec.submodule_search_locations:
        raise GenforgeError("FID needs pytorch-fid: pip install --no-deps pytorch-fid (plus genforge[image])")
    src_path = Path(list(spec.submodule_search_locations)[0]) / "fid_score.py"
    tree = ast.parse(src_path.read_text(encoding="utf-8"))
    fn = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "calculate_frechet_distance"]
    if not fn:
        raise GenforgeError(f"{src_path}: no calculate_frechet_distance; install pytorch-fid 0.3")
    from scipy import linalg

    namespace: dict = {"np": np, "linalg": linalg}
    exec(compile(ast.Module(body=fn, type_ignores=[]), str(src_path), "exec"), namespace)  # noqa: S102
    return namespace["calculate_frechet_distance"]


_FRECHET: Callable | None = None


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D), via pytorch-fid."""
    global _FRECHET
    if _FRECHET is None:
        _FRECHET = _load_frechet()
    mu_a, mu_b = feats_a.mean(0), feats_b.mean(0)
    cov_a, cov_b = np.cov(feats_a, rowvar=False), np.cov(feats_b, rowvar=False)
    from scipy.linalg import LinAlgWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # scipy 1.17 deprecates sqrtm(disp=...) they pass
        warnings.simplefilter("ignore", LinAlgWarning)
        try:
            return float(_FRECHET(mu_a, cov_a, mu_b, cov_b))
        except (np.linalg.LinAlgError, ValueError):
            # Singular covariances (dead features, fewer samples than dimensions) make newer scipy's sqrtm fail
            # outright; pytorch-fid's own remedy for this case is a small ridge on both diagonals, so apply it.
            ridge = np.eye(cov_a.shape[0]) * 1e-6
            return float(_FRECHET(mu_a, cov_a + ridge, mu_b, cov_b + ridge))


def fid(clf: WorldClassifier, real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID of `fake` against `real` on the classifier's features (not comparable with Inception FIDs)."""
    return frechet_distance(extract_features(clf, real), extract_features(clf, fake))


def precision_recall(real_feats: np.ndarray, fake_feats: np.ndarray, k: int = 3) -> dict[str, float]:
    """Improved precision/recall (Kynkäänniemi et al. 2019, eq. 1-3).

    The real manifold is the union of balls around each real feature vector with radius = the distance to its
    k-th nearest real neighbour (k = 3 as in the paper); likewise for the generated set.
    precision: share of fake points inside the real manifold (fidelity);
    recall: share of real points inside the fake manifold (coverage).
    """
    hits = _manifold_hits(real_feats, fake_feats, k)
    return {"precision": float(hits["precision"].mean()), "recall": float(hits["recall"].mean())}


def _manifold_hits(real_feats: np.ndarray, fake_feats: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-point indicators behind `precision_recall`: {'precision': (F,) bool, 'recall': (R,) bool}."""
    real = torch.as_tensor(np.asarray(real_feats), dtype=torch.float64)
    fake = torch.as_tensor(np.asarray(fake_feats), dtype=torch.float64)
    if min(len(real), len(fake)) <= k:
        raise GenforgeError(f"precision_recall: k={k} needs more than k points per set, got {len(real)} real and "
                            f"{len(fake)} generated")

    def radii(x: torch.Tensor) -> torch.Tensor:
        # the k-th smallest distance, counting the point itself (distance 0) as the 0-th
        return torch.cdist(x, x).kthvalue(k + 1, dim=1).values  # (N,)

    d = torch.cdist(fake, real)  # (F, R)
    return {"precision": (d <= radii(real)[None]).any(1).numpy(),
            "recall": (d.t() <= radii(fake)[None]).any(1).numpy()}


def bootstrap_precision_recall(real_feats: np.ndarray, fake_feats: np.ndarray, k: int = 3, *,
                               n_resamples: int = 1000, seed: int = 0) -> dict[str, Interval]:
    """`precision_recall` with 95 % percentile bootstrap intervals: precision is a mean over the generated
    points (inside the fixed real manifold or not), recall a mean over the real points (inside the fixed generated
    manifold or not), so each is resampled over its own points. Resampling the generated set for recall would
    shrink its k-NN radii (duplicates sit at distance 0) and bias it."""
    from genforge.eval.stats import bootstrap_proportion

    hits = _manifold_hits(real_feats, fake_feats, k)
    return {key: bootstrap_proportion(v.astype(float), n_resamples=n_resamples, seed=seed) for key, v in hits.items()}


@torch.no_grad()
def caption_faithfulness(attr_clf: WorldClassifier, images: torch.Tensor, requested: dict[str, torch.Tensor]
                         ) -> dict[str, float]:
    """Share of generated images whose requested attributes a held-out attribute classifier confirms.

    Returns per-attribute agreement and 'all' (every requested attribute right).
    """
    out = attr_clf(images)
    hits = {k: out[k].argmax(-1) == v for k, v in requested.items()}
    res = {k: float(h.float().mean()) for k, h in hits.items()}
    res["all"] = float(torch.stack(list(hits.values())).all(0).float().mean())
    return res


def bootstrap_fid(real_feats: np.ndarray, fake_feats: np.ndarray, other_feats: np.ndarray | None = None, *,
                  n_resamples: int = 200, seed: int = 0, confidence: float = 0.95) -> Interval:
    """FID of fake against real with a normal bootstrap interval over the generated images (the real set is
    fixed: the interval says how much the number moves with another draw of samples): estimate +- z * the
    standard deviation of the resampled FIDs.

    Why not percentile intervals: FID is biased upward at finite n, and a resample with replacement repeats
    images, so every bootstrap FID is larger still and percentile intervals sit above their own estimate
    (measured: estimate 1.29, percentile [1.45, 2.19]); reflecting them (the basic bootstrap) overshoots the
    other way. The spread of the resamples is what is sound, and what two models with the same n compare by.

    With `other_feats` (the same number of images, row i made from the same starting noise as fake row i), the
    statistic is FID(fake) - FID(other) and both sets are resampled with the same indices (a paired bootstrap).
    """
    n = len(fake_feats)
    if other_feats is not None and len(other_feats) != n:
        raise GenforgeError(f"bootstrap_fid: paired sets need the same size, got {n} and {len(other_feats)}")

    def stat(idx: np.ndarray | slice) -> float:
        d = frechet_distance(real_feats, fake_feats[idx])
        return d - frechet_distance(real_feats, other_feats[idx]) if other_feats is not None else d

    rng = np.random.default_rng(seed)
    boots = np.array([stat(rng.integers(0, n, n)) for _ in range(n_resamples)])
    z = float(NormalDist().inv_cdf(0.5 + confidence / 2))
    est, sd = stat(slice(None)), float(np.std(boots, ddof=1))
    return Interval(est, est - z * sd, est + z * sd, n, confidence)
