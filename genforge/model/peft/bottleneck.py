"""Bottleneck adapters (Houlsby et al. 2019): x + up(gelu(down(x))) after the attention output projection and
after the MLP down projection (before each residual add, as in the paper), with a zero up-projection so the
model starts unchanged. Wrapping the projections (not the blocks) keeps the engine's static decode path usable.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.errors import CheckpointError, ConfigError
from genforge.io import write_json
from genforge.model.peft import peft_format as fmt
from genforge.model.peft.lora import _set_module


class BottleneckAdapter(nn.Module):
    """h = base(x); h + up(gelu(down(h))) (Houlsby et al. 2019, fig. 2), up zero-initialised so h is unchanged."""

    def __init__(self, base: nn.Linear, size: int):
        super().__init__()
        if size < 1:
            raise ConfigError(f"peft.adapter_size must be >= 1, got {size}")
        self.base_layer = base
        w = base.weight
        d = base.out_features
        self.down = nn.Linear(d, size, device=w.device, dtype=w.dtype)
        self.up = nn.Linear(size, d, device=w.device, dtype=w.dtype)
        nn.init.normal_(self.down.weight, std=1e-2)  # "near-identity" init, as the paper recommends
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base_layer(x)
        return h + self.up(F.gelu(self.down(h)))


ADAPTER_SITES = {"attn": "self_attn.o_proj", "mlp": "mlp.down_proj"}


def apply_adapters(model: nn.Module, size: int = 16, where: Sequence[str] = ("attn", "mlp")) -> nn.Module:
    """Insert bottleneck adapters after each block's attention and/or MLP output; freeze the rest."""
    bad = [w for w in where if w not in ADAPTER_SITES]
    if bad or not where:
        raise ConfigError(f"peft.adapter_where={list(where)}: choose from {list(ADAPTER_SITES)}")
    for p in model.parameters():
        p.requires_grad_(False)
    for i in range(len(model.layers)):
        for w in where:
            name = f"layers.{i}.{ADAPTER_SITES[w]}"
            mod = model.get_submodule(name)
            if isinstance(mod, BottleneckAdapter):
                raise ConfigError(f"{name} already has a bottleneck adapter")
            _set_module(model, name, BottleneckAdapter(mod, size))
    return model


def save_bottleneck(model: nn.Module, folder: str | Path, base_model_name_or_path: str = "") -> Path:
    """genforge's own adapter folder (peft has no Houlsby adapter): same file names, peft_type BOTTLENECK."""
    from safetensors.torch import save_file

    mods = {n: m for n, m in model.named_modules() if isinstance(m, BottleneckAdapter)}
    if not mods:
        raise ConfigError("save_bottleneck: the model has no bottleneck adapters")
    size = next(iter(mods.values())).down.out_features
    where = sorted({k for n in mods for k, site in ADAPTER_SITES.items() if n.endswith(site)})
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / fmt.ADAPTER_CONFIG, {"peft_type": "BOTTLENECK", "task_type": "CAUSAL_LM", "adapter_size": size,
                                          "where": where, "base_model_name_or_path": base_model_name_or_path or None})
    tensors = {f"{n}.{k}": v.detach().float().contiguous().cpu() for n, m in mods.items()
               for k, v in m.state_dict().items() if not k.startswith("base_layer.")}
    save_file(tensors, str(folder / fmt.ADAPTER_WEIGHTS),
              metadata={"format": "pt", "genforge_base": json.dumps(fmt.base_fingerprint(model))})
    return folder


def load_bottleneck(model: nn.Module, folder: str | Path) -> nn.Module:
    folder = Path(folder)
    cfg = fmt.read_adapter_config(folder)
    sd, meta = fmt.read_adapter_weights(folder)
    fmt.check_base(model, meta, folder)
    apply_adapters(model, int(cfg["adapter_size"]), cfg.get("where", ["attn", "mlp"]))
    own = {k: v for k, v in model.state_dict().items() if any(s in k for s in (".down.", ".up."))}
    if set(own) != set(sd):
        raise CheckpointError(f"{folder}: adapter tensors do not match the model (missing "
                              f"{sorted(set(own) - set(sd))[:3]}, unexpected {sorted(set(sd) - set(own))[:3]})")
    bad = [k for k in own if own[k].shape != sd[k].shape]
    if bad:
        raise CheckpointError(f"{folder}: {bad[0]} is {tuple(sd[bad[0]].shape)} in the adapter but "
                              f"{tuple(own[bad[0]].shape)} in the model; the adapter belongs to another base")
    model.load_state_dict(sd, strict=False)
    return model
