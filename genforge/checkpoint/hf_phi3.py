"""Phi-3: LoRA adapters trained on an imported (split) Phi-3, written for the ORIGINAL fused checkpoint.

genforge splits Phi-3's fused `qkv_proj` and `gate_up_proj` at import (`genforge.model.hf`), so its LoRA
adapters wrap q_proj, k_proj, v_proj, gate_proj and up_proj, names `peft` cannot find in a
`Phi3ForCausalLM`. The conversion is exact: LoRA updates on the row blocks of one fused matrix are one
LoRA of the summed rank with A stacked and B block-diagonal,

    [s B_q A_q; s B_k A_k; s B_v A_v] = s [B_q 0 0; 0 B_k 0; 0 0 B_v] [A_q; A_k; A_v],

so q/k/v of rank r become a rank-3r `qkv_proj` adapter (gate/up: rank 2r `gate_up_proj`), with peft's
`rank_pattern`/`alpha_pattern` keeping the scale s = alpha / r. A projection the adapter did not target
contributes zero blocks.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from genforge.errors import ConfigError
from genforge.io import write_json
from genforge.model.peft import ADAPTER_CONFIG, ADAPTER_WEIGHTS, HF_LORA_PREFIX, lora_modules

FUSED = {"qkv_proj": ("self_attn", ("q_proj", "k_proj", "v_proj")),
         "gate_up_proj": ("mlp", ("gate_proj", "up_proj"))}
KEPT = {"o_proj": "self_attn", "down_proj": "mlp"}


def save_lora_phi3(model: nn.Module, folder: str | Path, adapter_name: str = "default",
                   base_model_name_or_path: str = "") -> Path:
    """Write `adapter_name` of a LoRA-wrapped imported Phi-3 as a peft adapter for `Phi3ForCausalLM`."""
    from safetensors.torch import save_file

    mods = {n: m for n, m in lora_modules(model).items() if adapter_name in m.lora_A}
    if not mods:
        raise ConfigError(f"save_lora_phi3: no LoRA adapter named {adapter_name!r} in the model")
    ranks = {m.lora_A[adapter_name].out_features for m in mods.values()}
    scales = {m.scaling[adapter_name] for m in mods.values()}
    if len(ranks) != 1 or len(scales) != 1:
        raise ConfigError("save_lora_phi3: the adapter's modules differ in rank or scaling; peft's format needs one")
    r, s = ranks.pop(), scales.pop()
    tensors: dict[str, torch.Tensor] = {}
    targets: set[str] = set()
    for i, layer in enumerate(model.layers):
        for fused, (parent, parts) in FUSED.items():
            block = getattr(layer, parent)
            wrapped = [f"layers.{i}.{parent}.{p}" in mods for p in parts]
            if not any(wrapped):
                continue
            a_rows = []
            outs = [getattr(block, p).weight.shape[0] for p in parts]
            b = torch.zeros(sum(outs), r * len(parts))
            row = 0
            for j, (p, n_out) in enumerate(zip(parts, outs)):
                m = mods.get(f"layers.{i}.{parent}.{p}")
                width = getattr(block, p).weight.shape[1]
                a_rows.append(m.lora_A[adapter_name].weight.detach().float() if m else torch.zeros(r, width))
                if m:
                    b[row:row + n_out, j * r:(j + 1) * r] = m.lora_B[adapter_name].weight.detach().float()
                row += n_out
            key = f"{HF_LORA_PREFIX}model.layers.{i}.{parent}.{fused}"
            tensors[f"{key}.lora_A.weight"] = torch.cat(a_rows).contiguous()  # (len(parts) * r, C)
            tensors[f"{key}.lora_B.weight"] = b.contiguous()  # (sum of outs, len(parts) * r)
            targets.add(fused)
        for name, parent in KEPT.items():
            m = mods.get(f"layers.{i}.{parent}.{name}")
            if m is not None:
                key = f"{HF_LORA_PREFIX}model.layers.{i}.{parent}.{name}"
                tensors[f"{key}.lora_A.weight"] = m.lora_A[adapter_name].weight.detach().float().contiguous()
                tensors[f"{key}.lora_B.weight"] = m.lora_B[adapter_name].weight.detach().float().contiguous()
                targets.add(name)
    covered = {f"layers.{i}.{p}.{n}" for i in range(len(model.layers)) for p, ns in FUSED.values() for n in ns}
    covered |= {f"layers.{i}.{p}.{n}" for i in range(len(model.layers)) for n, p in KEPT.items()}
    if set(mods) - covered:
        raise ConfigError(f"save_lora_phi3: {sorted(set(mods) - covered)[0]} has no Phi-3 counterpart")
    rank = {f: r * len(parts) for f, (_, parts) in FUSED.items() if f in targets}
    cfg = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path or None,
        "r": r, "lora_alpha": s * r, "lora_dropout": 0.0, "target_modules": sorted(targets), "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "init_lora_weights": True,
        "inference_mode": True, "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None,
        # the fused modules have rank len(parts) * r; alpha grows with it so that alpha / rank stays s
        "rank_pattern": rank, "alpha_pattern": {f: s * k for f, k in rank.items()},
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / ADAPTER_CONFIG, cfg)
    save_file(tensors, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return folder
