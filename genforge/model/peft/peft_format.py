"""Adapter folders in Hugging Face `peft`'s format: adapter_config.json + adapter_model.safetensors.

`save_lora` / `load_lora` read and write peft's LoRA folders, so adapters move both ways; the shared
helpers (config reading, weights, the base-model fingerprint check) serve the other adapter kinds too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import torch.nn as nn

from genforge.errors import CheckpointError, ConfigError
from genforge.io import read_json, write_json
from genforge.model.peft.lora import (
    HF_MODEL_PREFIX,
    LoRALinear,
    _linear_names,
    _module_matches,
    _set_module,
    adapter_names,
    add_token_rows,
    lora_modules,
    set_adapter,
    token_row_modules,
)

HF_LORA_PREFIX = "base_model.model."  # peft's PeftModelForCausalLM -> LlamaForCausalLM
TOKEN_ROWS_KEY = "token_adapter.trainable_tokens_delta"  # peft's TrainableTokensWrapper, adapter name dropped
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _our_to_hf(name: str) -> str:
    return name if name == "lm_head" else HF_MODEL_PREFIX + name


def _hf_to_our(name: str) -> str:
    return name[len(HF_MODEL_PREFIX):] if name.startswith(HF_MODEL_PREFIX) else name


def base_fingerprint(model: nn.Module) -> dict[str, int]:
    c = getattr(model, "config", None)
    return {k: int(getattr(c, k)) for k in ("vocab_size", "width", "depth") if c is not None and hasattr(c, k)}


def save_lora(model: nn.Module, folder: str | Path, adapter_name: str | None = None,
              base_model_name_or_path: str = "") -> Path:
    """Write one LoRA adapter as a peft adapter folder (adapter_config.json + adapter_model.safetensors).

    `peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), folder)` loads it. The
    base model's vocab/width/depth go into the safetensors metadata (peft ignores it) so `load_lora`
    can name a mismatched base.
    """
    from safetensors.torch import save_file

    mods = lora_modules(model)
    name = adapter_name or next((m.active for m in mods.values() if isinstance(m.active, str)), None)
    if name is None or name not in adapter_names(model):
        raise ConfigError(f"save_lora: no adapter named {name!r}; loaded adapters: {adapter_names(model)}")
    wrapped = {n: m for n, m in mods.items() if name in m.lora_A}
    ranks = {m.lora_A[name].out_features for m in wrapped.values()}
    scales = {m.scaling[name] for m in wrapped.values()}
    if len(ranks) != 1 or len(scales) != 1:
        raise ConfigError("save_lora: modules of one adapter differ in rank or scaling; peft's format needs one")
    r, scaling = ranks.pop(), scales.pop()
    # peft's target_modules is a suffix list: short names when they pick exactly the wrapped modules
    leaves = sorted({n.rsplit(".", 1)[-1] for n in wrapped})
    exact = {n for n in _linear_names(model) if _module_matches(n, leaves)} == set(wrapped)
    targets = leaves if exact else sorted(_our_to_hf(n) for n in wrapped)
    first = next(iter(wrapped.values()))
    cfg = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path or None,
        "r": r, "lora_alpha": scaling * r, "lora_dropout": float(getattr(first.lora_dropout[name], "p", 0.0)),
        "target_modules": targets, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
        "use_dora": False, "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
        "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None, "layers_pattern": None,
    }
    tensors = {}
    for n, m in wrapped.items():
        key = HF_LORA_PREFIX + _our_to_hf(n)
        tensors[f"{key}.lora_A.weight"] = m.lora_A[name].weight.detach().float().contiguous().cpu()
        tensors[f"{key}.lora_B.weight"] = m.lora_B[name].weight.detach().float().contiguous().cpu()
    # trainable token rows (peft's trainable_token_indices); a tied head follows the embedding, as in peft
    for n, m in token_row_modules(model).items():
        if m.owner is m and name in m.token_indices:
            cfg["trainable_token_indices"] = {n.rsplit(".", 1)[-1]: list(m.token_indices[name])}
            tensors[f"{HF_LORA_PREFIX}{_our_to_hf(n)}.{TOKEN_ROWS_KEY}"] = (
                m.trainable_tokens_delta[name].detach().float().contiguous().cpu())
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / ADAPTER_CONFIG, cfg)
    save_file(tensors, str(folder / ADAPTER_WEIGHTS),
              metadata={"format": "pt", "genforge_base": json.dumps(base_fingerprint(model))})
    return folder


def read_adapter_config(folder: str | Path) -> dict:
    """adapter_config.json of an adapter folder, with clear errors."""
    return read_json(Path(folder) / ADAPTER_CONFIG, f"{folder}: no {ADAPTER_CONFIG}; is this an adapter folder?",
                     CheckpointError)


def read_adapter_weights(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    f = folder / ADAPTER_WEIGHTS
    if not f.exists():
        if (folder / "adapter_model.bin").exists():
            return torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True), {}
        raise CheckpointError(f"{folder}: no {ADAPTER_WEIGHTS}; the adapter folder is incomplete")
    try:
        with safe_open(str(f), framework="pt") as sf:
            return {k: sf.get_tensor(k) for k in sf.keys()}, sf.metadata() or {}
    except Exception as e:  # safetensors raises its own error types on truncated files
        raise CheckpointError(f"{f}: cannot read adapter weights ({e})") from None


def check_base(model: nn.Module, meta: dict[str, str], where: Path) -> None:
    if "genforge_base" not in meta:
        return
    want, have = json.loads(meta["genforge_base"]), base_fingerprint(model)
    diff = [f"{k} {want[k]} vs {have[k]}" for k in want if k in have and want[k] != have[k]]
    if diff:
        raise CheckpointError(f"{where}: adapter was trained on a different base model ({', '.join(diff)}, "
                              "adapter vs model); load it onto the model it was trained from")


def _pattern_value(patterns: dict, hf_name: str, default: float) -> float:
    """peft's rank/alpha_pattern lookup: a key matches a module whose name ends with it (as a regex)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", hf_name):
            return value
    return default


def load_lora(model: nn.Module, folder: str | Path, adapter_name: str = "default") -> nn.Module:
    """Load a peft LoRA adapter folder (saved by peft or by `save_lora`) as adapter `adapter_name`.

    The wrapped modules come from the weight names; each A/B shape is checked against the model, so an
    adapter for another base raises naming the module and the mismatch. The adapter becomes active.
    """
    folder = Path(folder)
    cfg = read_adapter_config(folder)
    if cfg.get("peft_type") != "LORA":
        raise CheckpointError(f"{folder}: peft_type {cfg.get('peft_type')!r} is not LORA (use load_adapter)")
    options = ("use_dora", "fan_in_fan_out", "lora_bias", "modules_to_save", "layer_replication")
    unsupported = [k for k in options if cfg.get(k)] + (["bias"] if cfg.get("bias", "none") != "none" else [])
    if unsupported:
        raise CheckpointError(f"{folder}: adapter uses peft options genforge does not support: {unsupported}")
    sd, meta = read_adapter_weights(folder)
    check_base(model, meta, folder)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    saved_base: dict[str, torch.Tensor] = {}
    rows = {k: sd.pop(k) for k in [k for k in sd if k.endswith("." + TOKEN_ROWS_KEY)]}
    token_indices = _token_indices(cfg, rows, folder)
    for k, v in sd.items():
        m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", k)
        b = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.base_layer\.weight", k)
        if b is not None:
            # peft saves the base weight of a LoRA'd lm_head / embedding too ("save_embedding_layers")
            saved_base[b.group(1)] = v
            continue
        if m is None:
            raise CheckpointError(f"{folder}: unexpected tensor {k!r} (only LoRA A/B weights of Linear layers "
                                  "are supported, not embeddings or extra trained modules)")
        pairs.setdefault(m.group(1), {})[m.group(2)] = v
    if not pairs:
        raise CheckpointError(f"{folder}: the adapter holds no LoRA weights")
    if adapter_name in adapter_names(model):
        raise ConfigError(f"a LoRA adapter named {adapter_name!r} is already loaded; pick another name")
    alpha = float(cfg.get("lora_alpha", 8))
    plan = []
    for hf_name, ab in sorted(pairs.items()):
        ours = _hf_to_our(hf_name)
        if "A" not in ab or "B" not in ab:
            raise CheckpointError(f"{folder}: {hf_name} has lora_{'A' if 'A' not in ab else 'B'} missing")
        try:
            mod = model.get_submodule(ours)
        except AttributeError:
            depth = getattr(getattr(model, "config", None), "depth", "?")
            raise CheckpointError(f"{folder}: adapter has weights for {hf_name}, which this model lacks (it has "
                                  f"{depth} layers); the adapter belongs to a different base") from None
        base = mod.base_layer if isinstance(mod, LoRALinear) else mod
        if not isinstance(base, nn.Linear):
            raise CheckpointError(f"{folder}: {hf_name} is a {type(base).__name__}, not a Linear layer")
        A, B = ab["A"], ab["B"]
        r = A.shape[0]
        problems = []
        if A.dim() != 2 or A.shape[1] != base.in_features:
            problems.append(f"input size {A.shape[-1]} vs {base.in_features}")
        if B.dim() != 2 or B.shape[0] != base.out_features:
            vocab = " (vocab size)" if ours == "lm_head" else ""
            problems.append(f"output size {B.shape[0]} vs {base.out_features}{vocab}")
        if B.shape[-1] != r:
            problems.append(f"lora_A rank {r} vs lora_B rank {B.shape[-1]}")
        if problems:
            raise CheckpointError(f"{folder}: {hf_name} does not fit the model: {', '.join(problems)} (adapter vs "
                                  "model); the adapter belongs to another base model")
        a = float(_pattern_value(cfg.get("alpha_pattern") or {}, hf_name, alpha))
        W = saved_base.pop(hf_name, None)
        if W is not None and W.shape != base.weight.shape:
            raise CheckpointError(f"{folder}: the adapter's copy of {hf_name} is {tuple(W.shape)} but the model's is "
                                  f"{tuple(base.weight.shape)}; the adapter belongs to another base model")
        plan.append((ours, mod, r, a, A, B, W))
    if saved_base:
        raise CheckpointError(f"{folder}: base weights {sorted(saved_base)} saved without LoRA weights; not supported")
    for p in model.parameters():
        p.requires_grad_(False)
    for ours, mod, r, a, A, B, W in plan:
        if not isinstance(mod, LoRALinear):
            mod = LoRALinear(mod)
            _set_module(model, ours, mod)
        mod.add_adapter(adapter_name, r, a, 0.0, bool(cfg.get("use_rslora")))
        with torch.no_grad():
            mod.lora_A[adapter_name].weight.copy_(A)
            mod.lora_B[adapter_name].weight.copy_(B)
            if W is not None:  # as peft does on load: the saved copy replaces the base weight
                mod.base_layer.weight.copy_(W)
    if token_indices:
        values = next(iter(rows.values()))
        add_token_rows(model, token_indices, adapter_name)
        emb = model.embed_tokens
        if values.shape != emb.trainable_tokens_delta[adapter_name].shape:
            raise CheckpointError(f"{folder}: trainable token rows are {tuple(values.shape)} but {len(token_indices)} "
                                  f"rows of this model's embedding are {tuple(emb.weight[token_indices].shape)}; "
                                  "the adapter belongs to another base model")
        with torch.no_grad():
            emb.trainable_tokens_delta[adapter_name].copy_(values)
    set_adapter(model, adapter_name)
    return model


def _token_indices(cfg: dict, rows: dict[str, torch.Tensor], folder: Path) -> list[int]:
    """The token ids of the adapter's trainable embedding rows ([] if none), checked against its weights."""
    spec = cfg.get("trainable_token_indices")
    if not spec and not rows:
        return []
    if isinstance(spec, dict):
        if len(spec) != 1 or not next(iter(spec)).endswith("embed_tokens"):
            raise CheckpointError(f"{folder}: trainable_token_indices {sorted(spec)}: only the input embedding "
                                  "(embed_tokens) is supported")
        spec = next(iter(spec.values()))
    keys = sorted(rows)
    if not spec or len(keys) != 1 or not keys[0].split(".")[-3] == "embed_tokens":
        raise CheckpointError(f"{folder}: trainable token rows {keys} do not match trainable_token_indices {spec!r}; "
                              "the adapter folder is inconsistent")
    return [int(i) for i in spec]
