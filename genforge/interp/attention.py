"""Attention weights of every layer, recomputed from each attention module's own inputs.

The model's attention runs through `F.scaled_dot_product_attention`, which never materialises the
weights. A forward pre-hook on each `self_attn` sees exactly what the module sees (the normed residual
x, the RoPE tables, the mask), and we recompute softmax(q k^T / sqrt(D) + mask) with the module's own
q/k projections and gpt.py's `apply_rope`, so there is no second copy of the attention math to drift
apart. `check_reconstruction` verifies weights @ V through o_proj reproduces the module's output.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from genforge.errors import ConfigError
from genforge.model.gpt import apply_rope


def _qkv(attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """q (B, H, T, D) and k, v repeated to H heads (B, H, T, D), RoPE applied as the module does."""
    B, T, _ = x.shape
    H, K, D = attn.n_head, attn.n_kv_head, attn.head_dim
    q = attn.q_proj(x).view(B, T, H, D).transpose(1, 2)
    k = attn.k_proj(x).view(B, T, K, D).transpose(1, 2)
    v = attn.v_proj(x).view(B, T, K, D).transpose(1, 2)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    # grouped-query: query head h reads kv head h // (H/K) (HF's repeat_kv order)
    k, v = k.repeat_interleave(H // K, dim=1), v.repeat_interleave(H // K, dim=1)
    return q, k, v


def weights_from_inputs(attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                        mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + mask): (B, H, T, T) for one attention module's inputs (no KV cache)."""
    q, k, _ = _qkv(attn, x, cos, sin)
    T = x.shape[1]
    scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(attn.head_dim)  # (B, H, T, T)
    visible = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()[None, None]  # causal
    if mask is not None:
        visible = visible & mask  # mask: (B, 1, T, T) bool, True = may attend
    return torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)


class _Grab:
    """Forward pre-hook that keeps an attention module's positional inputs (x, cos, sin, mask, cache, layer)."""

    def __init__(self):
        self.args: tuple = ()

    def __call__(self, _mod, args):
        if args[4] is not None:
            raise ConfigError("attention weights are recomputed for a plain forward; call the model without a cache")
        self.args = args[:4]


@torch.no_grad()
def attention_weights(model: nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      return_outputs: bool = False):
    """Attention weights of every layer: (L, B, H, T, T) for ids (B, T); rows sum to 1 over keys.

    return_outputs=True also returns the modules' real outputs [(B, T, C)] * L (for checking)."""
    grabs, outs, handles = [], [], []
    for block in model.layers:
        g = _Grab()
        grabs.append(g)
        handles.append(block.self_attn.register_forward_pre_hook(g))
        handles.append(block.self_attn.register_forward_hook(lambda _m, _i, o: outs.append(o.detach())))
    try:
        model(ids, attention_mask=attention_mask)
    finally:
        for h in handles:
            h.remove()
    ws = torch.stack([weights_from_inputs(b.self_attn, *g.args) for b, g in zip(model.layers, grabs)])
    if not return_outputs:
        return ws
    return ws, outs, grabs


@torch.no_grad()
def check_reconstruction(model: nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> float:
    """Largest |o_proj(weights @ V) - module output| over layers: ~1e-6 when the recomputed weights are right."""
    ws, outs, grabs = attention_weights(model, ids, attention_mask, return_outputs=True)
    worst = 0.0
    for w, out, block, g in zip(ws, outs, model.layers, grabs):
        attn = block.self_attn
        _, _, v = _qkv(attn, *g.args[:3])
        y = (w.to(v.dtype) @ v).transpose(1, 2).reshape(out.shape[0], out.shape[1], -1)  # (B, T, H*D)
        worst = max(worst, float((attn.o_proj(y) - out).abs().max()))
    return worst


def heatmap(path, weights: torch.Tensor, tokens: list[str], title: str):
    """Save a grid of head-averaged attention maps, one panel per layer; weights (L, H, T, T) for one prompt."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from genforge.report import save_figure

    L = weights.shape[0]
    fig, axes = plt.subplots(1, L, figsize=(3.2 * L, 3.4), dpi=110)
    axes = [axes] if L == 1 else list(axes)
    for i, ax in enumerate(axes):
        ax.imshow(weights[i].mean(0).numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"layer {i}", fontsize=9)
        ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=6)
        ax.set_yticks(range(len(tokens)), tokens if i == 0 else [""] * len(tokens), fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
