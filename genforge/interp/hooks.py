"""Read any layer: forward hooks that capture module outputs, and the residual stream of a decoder.

`capture(model, ["layers.2.mlp", "norm"])` is a context manager that records the output of each named
module during the forwards run inside it. `residual_stream(model, ids)` returns what every layer leaves
in the residual stream: index 0 is the token embedding, index l the output of block l (L + 1 tensors),
the convention of the logit lens (nostalgebraist 2020) and of Hugging Face's `output_hidden_states`
(except that HF's last entry is already normed; ours is not: apply `model.norm` to compare).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn

from genforge.errors import ConfigError


def module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called `name` ("layers.1.self_attn"); a wrong name lists a few that exist."""
    mods = dict(model.named_modules())
    if name not in mods:
        close = [n for n in mods if n and name.split(".")[-1] in n][:5] or [n for n in mods if n][:8]
        raise ConfigError(f"model has no module '{name}'; some that exist: {', '.join(close)}")
    return mods[name]


@contextlib.contextmanager
def capture(model: nn.Module, names: Sequence[str], detach: bool = True) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record the outputs of the named modules: {name: [output of each call, in call order]}.

    A module that returns a tuple is recorded by its first element. Hooks are removed on exit, even on error.
    """
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = []
    for n in names:
        def hook(_mod, _inp, out, n=n):
            out = out[0] if isinstance(out, tuple) else out
            seen[n].append(out.detach() if detach else out)
        handles.append(module(model, n).register_forward_hook(hook))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def n_layers(model: nn.Module) -> int:
    return len(model.layers)


@torch.no_grad()
def residual_stream(model: nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The residual stream after the embedding and after every block: (L + 1, B, T, C) for ids (B, T)."""
    names = ["embed_tokens"] + [f"layers.{i}" for i in range(n_layers(model))]
    with capture(model, names) as seen:
        model(ids, attention_mask=attention_mask)
    return torch.stack([seen[n][0] for n in names])


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into ids (B, T) and a 0/1 mask (B, T); causal attention makes right padding harmless
    for every real position, so features at real positions equal those of the unpadded sequence."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


@torch.no_grad()
def features_at(model: nn.Module, seqs: Sequence[Sequence[int]], positions: Sequence[int], batch_size: int = 64,
                pad_id: int = 0) -> torch.Tensor:
    """Residual-stream vectors at one position of each sequence, every layer: (L + 1, N, C).

    positions[i] indexes seqs[i] (negative counts from its end). Sequences are right-padded in batches.
    """
    out = []
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i:i + batch_size]
        ids, _ = pad_batch(chunk, pad_id)
        # no attention_mask: with right padding and a causal mask the real positions never see the pads
        hs = residual_stream(model, ids)  # (L+1, b, T, C)
        pos = torch.tensor([p if p >= 0 else len(s) + p for s, p in zip(chunk, positions[i:i + batch_size])])
        out.append(hs[:, torch.arange(len(chunk)), pos])  # (L+1, b, C)
    return torch.cat(out, dim=1)
