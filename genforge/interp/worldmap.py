"""The world map: recover the towns' planted 2-D coordinates from the model's town-name representations.

Gurnee & Tegmark (2023) found that linear probes read latitude and longitude off LLM activations for
place names. Here the tiny world's towns have planted coordinates (`genforge.world.geo`), which the
corpus only ever mentions as relative travel distances and directions; we take each town name's residual
vector (last token of the name, averaged over a few short contexts), project it onto its top-2
principal components (the picture) and fit cross-validated linear probes to (x, y) per layer (the number:
R^2 on held-out towns), against the same probes fitted to coordinates shuffled over towns.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from genforge.interp.hooks import features_at

# Short contexts that end with the town's name: its last token's vector, averaged over them, is the town's.
TOWN_CONTEXTS = ("{}", "The town of {}", "We walked to {}", "A letter from {}")


def entity_features(model: nn.Module, tok, names: Sequence[str], contexts: Sequence[str] = TOWN_CONTEXTS,
                    batch_size: int = 64) -> torch.Tensor:
    """(L + 1, N, C): each name's last-token residual vector per layer, averaged over the contexts."""
    total = None
    for ctx in contexts:
        seqs = [tok.encode(ctx.format(n), add_bos=True) for n in names]
        f = features_at(model, seqs, [-1] * len(seqs), batch_size=batch_size, pad_id=tok.pad_id or 0)
        total = f if total is None else total + f
    return total / len(contexts)


def pca_2d(x: torch.Tensor) -> torch.Tensor:
    """Top-2 principal-component scores of x (N, C): (N, 2)."""
    xc = x.float() - x.float().mean(0)
    _, _, v = torch.linalg.svd(xc, full_matrices=False)
    return xc @ v[:2].T


def procrustes(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (N, 2) rotated, reflected, scaled and shifted to best match b (N, 2) in least squares (for drawing only)."""
    am, bm = a.mean(0), b.mean(0)
    a0, b0 = a - am, b - bm
    u, s, vt = torch.linalg.svd(a0.T @ b0)
    r = u @ vt
    scale = s.sum() / a0.pow(2).sum().clamp(min=1e-12)
    return a0 @ r * scale + bm


def map_plot(path: str | Path, names: Sequence[str], true_xy: torch.Tensor, pca_xy: torch.Tensor,
             probe_xy: torch.Tensor | None, regions: Sequence[str], title: str) -> Path:
    """Three panels: the planted map, the top-2 PCA of the names (aligned to it by Procrustes), the probe's
    held-out predictions; colours are regions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from genforge.report import save_figure

    panels = [("planted coordinates", true_xy), ("PCA of town names (aligned)", procrustes(pca_xy, true_xy))]
    if probe_xy is not None:
        panels.append(("linear probe, held-out towns", probe_xy))
    uniq = sorted(set(regions))
    colour = {r: plt.cm.tab10(i % 10) for i, r in enumerate(uniq)}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), dpi=110)
    for ax, (label, xy) in zip(axes, panels):
        for (x, y), n, r in zip(xy.tolist(), names, regions):
            ax.scatter([x], [y], color=colour[r], s=14)
            ax.annotate(n, (x, y), fontsize=5, alpha=0.8)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("east (km)")
        ax.set_ylabel("north (km)")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", ls="", color=colour[r], label=r) for r in uniq]
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(uniq)), fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return save_figure(fig, path)
