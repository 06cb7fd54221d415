"""Selective tuning: freeze everything except chosen layers, norms, biases or named parameters (BitFit,
Ben Zaken et al. 2021, trains biases only; our Llama-style model has none, which we say), and the count of
what is trainable that every PEFT method reports."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch.nn as nn

from genforge.errors import ConfigError


def select_trainable(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Freeze every parameter except those chosen; returns the names left trainable.

    Patterns: "norms" (every RMSNorm gain), "biases" (BitFit), "layers.3" / "layer:3" (one block, -1 = last),
    "embed_tokens", "lm_head", or any regex searched in parameter names. A pattern that selects nothing
    raises, listing what exists.
    """
    names = [n for n, _ in model.named_parameters()]
    depth = len(getattr(model, "layers", []))
    chosen: list[str] = []
    for pat in patterns:
        if pat == "norms":
            hit = [n for n in names if "norm" in n]
        elif pat == "biases":
            hit = [n for n in names if n.endswith(".bias")]
            if not hit:
                raise ConfigError("peft.selective: 'biases' selects nothing: this Llama-style model has no bias "
                                  "terms (BitFit needs them); choose norms or layers instead")
        elif m := re.fullmatch(r"layers?[.:](-?\d+)", pat):
            i = int(m.group(1)) % max(depth, 1)
            hit = [n for n in names if n.startswith(f"layers.{i}.")]
        else:
            hit = [n for n in names if re.search(pat, n)]
        if not hit:
            raise ConfigError(f"peft.selective pattern {pat!r} selects no parameter; use norms, biases, layers.N "
                              f"(0..{depth - 1}), embed_tokens, lm_head or a regex over names like {names[:3]}")
        chosen += hit
    keep = set(chosen)
    for n, p in model.named_parameters():
        p.requires_grad_(n in keep)
    return [n for n in names if n in keep]


def trainable_summary(model: nn.Module) -> dict[str, float]:
    """{"trainable", "total", "percent"}: parameter counts (tied weights once)."""
    seen: dict[int, nn.Parameter] = {}
    for p in model.parameters():
        seen.setdefault(id(p), p)
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return {"trainable": trainable, "total": total, "percent": 100.0 * trainable / max(total, 1)}
