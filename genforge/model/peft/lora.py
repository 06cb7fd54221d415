"""LoRA (Hu et al. 2021): `LoRALinear` wraps an `nn.Linear`; y = W x + (alpha / r) * B A dropout(x).

A (r, in) kaiming-uniform, B (out, r) zeros, so a fresh adapter leaves the model unchanged. Several named
adapters live side by side in one wrapper and are selected per request (`set_adapter`, `use_adapter`, even
one adapter per batch row). Merging adds B A into W for free inference. Module and key names follow
Hugging Face `peft` (`base_layer`, `lora_A.<name>`, ...); its folder format is `peft_format.py`.

An adapter may also train chosen rows of the token embedding (`TokenRows`, peft's `trainable_token_indices`): the
tokens the fine-tuning data uses that pretraining never trained (new chat-template tokens, a character the corpus
lacks). A low-rank update of the blocks cannot give a token the base model never predicts a usable output row
(with tied embeddings the row is the token's output weight too); training k rows costs k * C parameters.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.errors import ConfigError

HF_MODEL_PREFIX = "model."  # LlamaForCausalLM -> LlamaModel (lm_head sits outside it)


class LoRALinear(nn.Module):
    """An `nn.Linear` plus any number of named low-rank updates (only the active ones apply).

    `active` is None (base only), an adapter name, or a list with one name (or None) per batch row.
    Adapters in `merged` have been added into the base weight and are skipped in forward.
    """

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base_layer = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.active: str | list[str | None] | None = None
        self.merged: list[str] = []

    @property
    def weight(self) -> torch.Tensor:  # code that reads `.weight` (tied heads, exports) sees the base
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def add_adapter(self, name: str, r: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False) -> None:
        """A new adapter: A kaiming-uniform (as nn.Linear and peft), B zeros, so its update starts at 0."""
        if r < 1:
            raise ConfigError(f"peft.r must be >= 1, got {r}")
        w = self.base_layer.weight
        self.lora_A[name] = nn.Linear(self.in_features, r, bias=False, device=w.device, dtype=w.dtype)
        self.lora_B[name] = nn.Linear(r, self.out_features, bias=False, device=w.device, dtype=w.dtype)
        nn.init.kaiming_uniform_(self.lora_A[name].weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B[name].weight)
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # rsLoRA (Kalajdzievski 2023) divides by sqrt(r) so larger ranks keep learning
        self.scaling[name] = alpha / (math.sqrt(r) if use_rslora else r)

    def delta_weight(self, name: str) -> torch.Tensor:
        """The adapter's update to W: scaling * B @ A, shape (out, in)."""
        return self.scaling[name] * (self.lora_B[name].weight @ self.lora_A[name].weight)

    def _lora(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.lora_B[name](self.lora_A[name](self.lora_dropout[name](x))) * self.scaling[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        active = self.active
        if active is None:
            return y
        if isinstance(active, str):  # an adapter may target only some modules: the others pass through
            return y if active in self.merged or active not in self.lora_A else y + self._lora(active, x)
        # one adapter per batch row (mixed-adapter batches, as peft's `adapter_names=`)
        if len(active) != x.shape[0]:
            raise ConfigError(f"per-row adapters: {len(active)} names for a batch of {x.shape[0]} rows")
        if self.merged:
            raise ConfigError(f"adapter(s) {self.merged} are merged into the weights; unmerge before per-row selection")
        for name in dict.fromkeys(a for a in active if a is not None and a in self.lora_A):
            rows = torch.tensor([i for i, a in enumerate(active) if a == name], device=x.device)
            y = y.index_add(0, rows, self._lora(name, x.index_select(0, rows)).to(y.dtype))
        return y


class TokenRows(nn.Module):
    """An `nn.Embedding` (or the `nn.Linear` head tied to it) whose rows at chosen token ids come from a trainable
    tensor per adapter (peft's `TrainableTokensLayer`: the values replace the rows, initialised from them, so a
    fresh adapter leaves the model unchanged). The head of a tied model follows the embedding's rows (`owner`)."""

    def __init__(self, base: nn.Embedding | nn.Linear, owner: TokenRows | None = None):
        super().__init__()
        self.base_layer = base
        self._owner = [owner] if owner is not None else []  # a list: the owner is not registered twice
        self.trainable_tokens_delta = nn.ParameterDict()
        self.token_indices: dict[str, list[int]] = {}
        self.originals: dict[str, torch.Tensor] = {}  # rows before merging, (k, C)
        self.active: str | list[str | None] | None = None
        self.merged: list[str] = []

    @property
    def owner(self) -> TokenRows:
        return self._owner[0] if self._owner else self

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base_layer, "bias", None)

    def add_adapter(self, name: str, indices: Sequence[int]) -> None:
        """Rows `indices` become trainable for adapter `name`, starting from their current values."""
        w = self.base_layer.weight
        bad = [i for i in indices if not 0 <= int(i) < w.shape[0]]
        if bad:
            raise ConfigError(f"peft.trainable_token_indices {bad} are outside the vocabulary (0..{w.shape[0] - 1})")
        idx = list(dict.fromkeys(int(i) for i in indices))  # peft keeps the given order (the rows follow it)
        self.token_indices[name] = idx
        self.trainable_tokens_delta[name] = nn.Parameter(w.detach()[idx].clone())  # (k, C)

    def _rows(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(token ids (k,), their trained rows (k, C)) of the active adapter, or None (base rows apply)."""
        o, name = self.owner, self.active
        if isinstance(name, list):
            raise ConfigError("per-row adapter selection is not supported with trainable token rows; "
                              "select one adapter for the batch")
        if name is None or name in self.merged or name not in o.token_indices:
            return None
        w = self.base_layer.weight
        return torch.tensor(o.token_indices[name], device=w.device), o.trainable_tokens_delta[name].to(w.dtype)

    def merged_weight(self) -> torch.Tensor:
        """The base weight (V, C) with the active adapter's rows in place (differentiable in the rows)."""
        rows = self._rows()
        return self.base_layer.weight if rows is None else self.base_layer.weight.index_copy(0, *rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.base_layer, nn.Embedding):
            b = self.base_layer
            w = self.merged_weight()
            return F.embedding(x, w, b.padding_idx, b.max_norm, b.norm_type, b.scale_grad_by_freq, b.sparse)
        y = self.base_layer(x)  # (..., V) through the frozen weight: no (V, C) weight gradient is formed
        rows = self._rows()
        if rows is None:
            return y
        idx, values = rows
        b = self.base_layer.bias
        cols = F.linear(x, values.to(x.dtype), None if b is None else b[idx])  # (..., k) the trained rows' logits
        return y.index_copy(y.dim() - 1, idx, cols.to(y.dtype))


def _module_matches(name: str, targets: Sequence[str] | str) -> bool:
    """peft's rule: a list entry matches a module whose name equals it or ends with '.' + it; a string is a
    regex that must match the whole name (tried on our name and on the HF name 'model.<name>')."""
    if isinstance(targets, str):
        if targets == "all-linear":
            return name != "lm_head"
        return bool(re.fullmatch(targets, name) or re.fullmatch(targets, HF_MODEL_PREFIX + name))
    return any(name == t or name.endswith("." + t) for t in targets)


def _linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, LoRALinear)) and ".lora_" not in n
            and not n.endswith(".base_layer")]


def _no_match_error(targets: Any, model: nn.Module, what: str = "peft.target_modules") -> ConfigError:
    names = _linear_names(model)
    leaves = sorted(dict.fromkeys(n.rsplit(".", 1)[-1] for n in names))
    return ConfigError(f"{what}={targets!r} matches no module; linear modules are named {leaves} "
                       f"(full names like {names[0]!r}); target them by these names")


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Our module name -> LoRALinear, for every wrapped module."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def token_row_modules(model: nn.Module) -> dict[str, TokenRows]:
    """Our module name -> TokenRows (the embedding and, when tied, the head that follows it)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, TokenRows)}


def add_token_rows(model: nn.Module, indices: Sequence[int], adapter_name: str = "default") -> None:
    """Make the rows `indices` of `model.embed_tokens` trainable for adapter `adapter_name` (peft's
    `trainable_token_indices`); with tied embeddings `lm_head` uses the same rows."""
    emb = getattr(model, "embed_tokens", None)
    if not isinstance(emb, (nn.Embedding, TokenRows)):
        raise ConfigError("peft.trainable_token_indices needs a model with an `embed_tokens` embedding")
    if not isinstance(emb, TokenRows):
        head = getattr(model, "lm_head", None)
        tied = isinstance(head, nn.Module) and getattr(head, "weight", None) is emb.weight
        if tied and not isinstance(head, nn.Linear):
            raise ConfigError("peft.trainable_token_indices with a LoRA on the tied lm_head is not supported; "
                              "leave lm_head out of peft.target_modules")
        emb = TokenRows(emb)
        model.embed_tokens = emb
        if tied:
            model.lm_head = TokenRows(head, owner=emb)
    if adapter_name in emb.token_indices:
        raise ConfigError(f"adapter {adapter_name!r} already has trainable token rows")
    emb.add_adapter(adapter_name, indices)


def apply_lora(model: nn.Module, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               target_modules: Sequence[str] | str = ("q_proj", "v_proj"), adapter_name: str = "default",
               use_rslora: bool = False, trainable_token_indices: Sequence[int] = ()) -> nn.Module:
    """Add a LoRA adapter named `adapter_name` to every targeted Linear, freeze everything else, make it active.

    target_modules: names like "q_proj" (peft's suffix match), a full name like "layers.0.mlp.up_proj",
    a regex string, or "all-linear". A target that matches nothing raises, listing the names that exist.
    Calling again with another name adds a second adapter beside the first (only the new one trains).
    trainable_token_indices: token ids whose embedding rows the adapter also trains (`add_token_rows`).
    """
    names = [n for n in _linear_names(model) if _module_matches(n, target_modules)]
    if isinstance(target_modules, (list, tuple)):
        unmatched = [t for t in target_modules if not any(_module_matches(n, [t]) for n in names)]
        if unmatched:
            raise _no_match_error(unmatched, model)
    if not names:
        raise _no_match_error(target_modules, model)
    if any(adapter_name in m.lora_A for m in lora_modules(model).values()):
        raise ConfigError(f"a LoRA adapter named {adapter_name!r} is already loaded; pick another name")
    for p in model.parameters():
        p.requires_grad_(False)
    for n in names:
        m = model.get_submodule(n)
        if not isinstance(m, LoRALinear):
            m = LoRALinear(m)
            _set_module(model, n, m)
        m.add_adapter(adapter_name, r, alpha, dropout, use_rslora)
    if len(trainable_token_indices):
        add_token_rows(model, trainable_token_indices, adapter_name)
    set_adapter(model, adapter_name)
    return model


def adapter_names(model: nn.Module) -> list[str]:
    """Names of the LoRA adapters loaded into the model."""
    return list(dict.fromkeys([a for m in lora_modules(model).values() for a in m.lora_A]
                              + [a for m in token_row_modules(model).values() for a in m.token_indices]))


def set_adapter(model: nn.Module, name: str | list[str | None] | None) -> None:
    """Select the LoRA adapter for the following calls: a name, None (the base model) or one name per row.

    Only the selected adapter's parameters train; the others stay frozen.
    """
    known = adapter_names(model)
    wanted = [name] if isinstance(name, str) else [a for a in (name or []) if a is not None]
    unknown = sorted({a for a in wanted if a not in known})
    if unknown:
        raise ConfigError(f"no LoRA adapter named {unknown}; loaded adapters: {known}")
    for m in lora_modules(model).values():
        m.active = name if isinstance(name, str) or name is None else list(name)
        for a in m.lora_A:
            train = isinstance(name, str) and a == name
            m.lora_A[a].weight.requires_grad_(train)
            m.lora_B[a].weight.requires_grad_(train)
    for m in token_row_modules(model).values():
        m.active = name if isinstance(name, str) or name is None else list(name)
        for a, p in m.trainable_tokens_delta.items():
            p.requires_grad_(isinstance(name, str) and a == name)


@contextlib.contextmanager
def use_adapter(model: nn.Module, name: str | list[str | None] | None) -> Iterator[nn.Module]:
    """Per-call selection: `with use_adapter(model, "math"): model(ids)`; the previous choice is restored."""
    mods = list(lora_modules(model).values())
    before = [(m.active, {a: m.lora_A[a].weight.requires_grad for a in m.lora_A}) for m in mods]
    rows = list(token_row_modules(model).values())
    rows_before = [(m.active, {a: p.requires_grad for a, p in m.trainable_tokens_delta.items()}) for m in rows]
    set_adapter(model, name)
    try:
        yield model
    finally:
        for m, (active, grads) in zip(mods, before):
            m.active = active
            for a, g in grads.items():
                m.lora_A[a].weight.requires_grad_(g)
                m.lora_B[a].weight.requires_grad_(g)
        for m, (active, grads) in zip(rows, rows_before):
            m.active = active
            for a, g in grads.items():
                m.trainable_tokens_delta[a].requires_grad_(g)


def _check_mergeable(model: nn.Module, name: str) -> None:
    head = getattr(model, "lm_head", None)
    if isinstance(head, LoRALinear) and getattr(getattr(model, "config", None), "tie_embeddings", False):
        raise ConfigError("lm_head shares its weight with embed_tokens (tie_embeddings=true): merging its LoRA "
                          "update would change the input embeddings too; keep the adapter unmerged")
    if name not in adapter_names(model):
        raise ConfigError(f"no LoRA adapter named {name!r}; loaded adapters: {adapter_names(model)}")


@torch.no_grad()
def merge_lora(model: nn.Module, name: str | None = None) -> None:
    """Add adapter `name` (default: the active one) into the base weights: W += scaling * B A.

    Forward then skips it, so outputs are unchanged (up to rounding) and inference costs nothing extra.
    A merged adapter applies to every request until `unmerge_lora`.
    """
    mods = lora_modules(model)
    rows = token_row_modules(model)
    name = name or next((m.active for m in [*mods.values(), *rows.values()] if isinstance(m.active, str)), None)
    if name is None:
        raise ConfigError("merge_lora: no adapter is active; name the one to merge")
    _check_mergeable(model, name)
    for m in mods.values():
        if name in m.lora_A and name not in m.merged:
            m.base_layer.weight += m.delta_weight(name).to(m.base_layer.weight.dtype)
            m.merged.append(name)
    for m in rows.values():  # the owner writes the shared weight once; a tied head only marks itself merged
        if name in m.owner.token_indices and name not in m.merged:
            if m.owner is m:
                w = m.base_layer.weight
                idx = torch.tensor(m.token_indices[name], device=w.device)
                m.originals[name] = w[idx].clone()
                w.index_copy_(0, idx, m.trainable_tokens_delta[name].to(w.dtype))
            m.merged.append(name)


@torch.no_grad()
def unmerge_lora(model: nn.Module) -> None:
    """Subtract every merged adapter from the base weights again."""
    for m in lora_modules(model).values():
        while m.merged:
            m.base_layer.weight -= m.delta_weight(m.merged.pop()).to(m.base_layer.weight.dtype)
    for m in token_row_modules(model).values():
        while m.merged:
            name = m.merged.pop()
            if m.owner is m:
                w = m.base_layer.weight
                w.index_copy_(0, torch.tensor(m.token_indices[name], device=w.device), m.originals.pop(name))


def merge_and_unload(model: nn.Module, name: str | None = None) -> nn.Module:
    """Merge adapter `name` (default: the active one) and replace every LoRALinear by its plain Linear.

    The result is an ordinary GPT again, e.g. for `save_checkpoint` or HF export.
    """
    mods, rows = lora_modules(model), token_row_modules(model)
    if mods or rows:
        merge_lora(model, name)
    for n, m in [*mods.items(), *rows.items()]:
        _set_module(model, n, m.base_layer)
    return model
