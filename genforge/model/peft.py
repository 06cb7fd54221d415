"""Parameter-efficient fine-tuning, composed onto a `GPT` without subclassing it.

* LoRA (Hu et al. 2021): `LoRALinear` wraps an `nn.Linear`; y = W x + (alpha / r) * B A dropout(x),
  A (r, in) kaiming-uniform, B (out, r) zeros, so a fresh adapter leaves the model unchanged. Several
  named adapters live side by side in one wrapper and are selected per request (`set_adapter`,
  `use_adapter`, even one adapter per batch row). Merging adds B A into W for free inference.
  Module and key names follow Hugging Face `peft` (`base_layer`, `lora_A.<name>`, ...), and
  `save_lora` / `load_lora` read and write peft's adapter folder format, so adapters move both ways.
* Prompt tuning (Lester et al. 2021): `PromptTuning` wraps the model and prepends n trainable
  virtual-token embeddings through `inputs_embeds`; the base is frozen.
* Bottleneck adapters (Houlsby et al. 2019): x + up(gelu(down(x))) after the attention output
  projection and after the MLP down projection (before each residual add, as in the paper), with a
  zero up-projection so the model starts unchanged. Wrapping the projections (not the blocks) keeps
  the engine's static decode path usable.
* Selective tuning: freeze everything except chosen layers, norms, biases or named parameters
  (BitFit, Ben Zaken et al. 2021, trains biases only; our Llama-style model has none, which we say).

Every method reports its trainable parameters (`trainable_summary`) and its training memory
(`training_memory`).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.errors import CheckpointError, ConfigError
from genforge.io import write_json
from genforge.model.gpt import KVCache

HF_LORA_PREFIX = "base_model.model."  # peft's PeftModelForCausalLM -> LlamaForCausalLM
HF_MODEL_PREFIX = "model."  # LlamaForCausalLM -> LlamaModel (lm_head sits outside it)
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


# ---------------------------------------------------------------------------------------------- LoRA
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


def apply_lora(model: nn.Module, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               target_modules: Sequence[str] | str = ("q_proj", "v_proj"), adapter_name: str = "default",
               use_rslora: bool = False) -> nn.Module:
    """Add a LoRA adapter named `adapter_name` to every targeted Linear, freeze everything else, make it active.

    target_modules: names like "q_proj" (peft's suffix match), a full name like "layers.0.mlp.up_proj",
    a regex string, or "all-linear". A target that matches nothing raises, listing the names that exist.
    Calling again with another name adds a second adapter beside the first (only the new one trains).
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
    set_adapter(model, adapter_name)
    return model


def adapter_names(model: nn.Module) -> list[str]:
    """Names of the LoRA adapters loaded into the model."""
    return list(dict.fromkeys(a for m in lora_modules(model).values() for a in m.lora_A))


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


@contextlib.contextmanager
def use_adapter(model: nn.Module, name: str | list[str | None] | None) -> Iterator[nn.Module]:
    """Per-call selection: `with use_adapter(model, "math"): model(ids)`; the previous choice is restored."""
    mods = list(lora_modules(model).values())
    before = [(m.active, {a: m.lora_A[a].weight.requires_grad for a in m.lora_A}) for m in mods]
    set_adapter(model, name)
    try:
        yield model
    finally:
        for m, (active, grads) in zip(mods, before):
            m.active = active
            for a, g in grads.items():
                m.lora_A[a].weight.requires_grad_(g)
                m.lora_B[a].weight.requires_grad_(g)


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
    name = name or next((m.active for m in mods.values() if isinstance(m.active, str)), None)
    if name is None:
        raise ConfigError("merge_lora: no adapter is active; name the one to merge")
    _check_mergeable(model, name)
    for m in mods.values():
        if name in m.lora_A and name not in m.merged:
            m.base_layer.weight += m.delta_weight(name).to(m.base_layer.weight.dtype)
            m.merged.append(name)


@torch.no_grad()
def unmerge_lora(model: nn.Module) -> None:
    """Subtract every merged adapter from the base weights again."""
    for m in lora_modules(model).values():
        while m.merged:
            m.base_layer.weight -= m.delta_weight(m.merged.pop()).to(m.base_layer.weight.dtype)


def merge_and_unload(model: nn.Module, name: str | None = None) -> nn.Module:
    """Merge adapter `name` (default: the active one) and replace every LoRALinear by its plain Linear.

    The result is an ordinary GPT again, e.g. for `save_checkpoint` or HF export.
    """
    mods = lora_modules(model)
    if mods:
        merge_lora(model, name)
    for n, m in mods.items():
        _set_module(model, n, m.base_layer)
    return model


# -------------------------------------------------------------------------------- LoRA in peft's format
def _our_to_hf(name: str) -> str:
    return name if name == "lm_head" else HF_MODEL_PREFIX + name


def _hf_to_our(name: str) -> str:
    return name[len(HF_MODEL_PREFIX):] if name.startswith(HF_MODEL_PREFIX) else name


def _base_fingerprint(model: nn.Module) -> dict[str, int]:
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
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / ADAPTER_CONFIG, cfg)
    save_file(tensors, str(folder / ADAPTER_WEIGHTS),
              metadata={"format": "pt", "genforge_base": json.dumps(_base_fingerprint(model))})
    return folder


def read_adapter_config(folder: str | Path) -> dict:
    """adapter_config.json of an adapter folder, with clear errors."""
    f = Path(folder) / ADAPTER_CONFIG
    if not f.exists():
        raise CheckpointError(f"{folder}: no {ADAPTER_CONFIG}; is this an adapter folder?")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f}: corrupt JSON ({e.msg} at line {e.lineno})") from None


def _read_adapter_weights(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
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


def _check_base(model: nn.Module, meta: dict[str, str], where: Path) -> None:
    if "genforge_base" not in meta:
        return
    want, have = json.loads(meta["genforge_base"]), _base_fingerprint(model)
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
    sd, meta = _read_adapter_weights(folder)
    _check_base(model, meta, folder)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    saved_base: dict[str, torch.Tensor] = {}
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
    set_adapter(model, adapter_name)
    return model


# ------------------------------------------------------------------------------------- prompt tuning
class PromptTuning(nn.Module):
    """A frozen model behind n trainable virtual tokens prepended to every input (Lester et al. 2021).

    Behaves like the model it wraps: forward(input_ids, cache=..., position_ids=..., attention_mask=...)
    returns logits for the real tokens only. Virtual tokens take positions 0..n-1 (as peft does), so a
    caller's positions shift by n. With a KV cache, the first call (prefill) writes the virtual tokens
    into the cache, growing it by n columns; `config.max_seq_len` is the base's minus n, so callers that
    size caches and prompts from the config stay within the base model's context.
    """

    def __init__(self, model: nn.Module, num_virtual_tokens: int = 8, init_token_ids: Sequence[int] | None = None,
                 seed: int = 0):
        super().__init__()
        if num_virtual_tokens < 1:
            raise ConfigError(f"peft.num_virtual_tokens must be >= 1, got {num_virtual_tokens}")
        self.base_model = model
        for p in model.parameters():
            p.requires_grad_(False)
        emb = model.embed_tokens.weight
        n = num_virtual_tokens
        if init_token_ids is None:
            # initialise from embeddings of sampled vocabulary tokens: Lester et al. found this beats random init
            g = torch.Generator().manual_seed(seed)
            init_token_ids = torch.randint(0, emb.shape[0], (n,), generator=g).tolist()
        self.prompt_embeddings = nn.Parameter(emb.detach()[torch.tensor(list(init_token_ids)[:n])].clone())
        self.num_virtual_tokens = n
        self.config = replace(model.config, max_seq_len=model.config.max_seq_len - n)

    def forward(self, input_ids: torch.Tensor | None = None, *, cache: KVCache | None = None,
                position_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, return_hidden: bool = False) -> torch.Tensor:
        x = self.base_model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        B, T, _ = x.shape
        n = self.num_virtual_tokens
        prefill = cache is None or cache.pos == 0
        if position_ids is not None:
            position_ids = position_ids + n
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask.new_ones(B, n), attention_mask], dim=1)  # (B, n + S)
        if not prefill:
            return self.base_model(inputs_embeds=x, cache=cache, position_ids=position_ids,
                                   attention_mask=attention_mask, return_hidden=return_hidden)
        if cache is not None:
            _grow_cache(cache, n)
        if position_ids is not None:
            virt = torch.arange(n, device=x.device).expand(B, n)
            position_ids = torch.cat([virt, position_ids], dim=1)
        prompt = self.prompt_embeddings.to(x.dtype).unsqueeze(0).expand(B, n, -1)  # (B, n, C)
        out = self.base_model(inputs_embeds=torch.cat([prompt, x], dim=1), cache=cache, position_ids=position_ids,
                              attention_mask=attention_mask, return_hidden=return_hidden)
        return out[:, n:]  # (B, T, V) or (B, T, C): the virtual positions predict nothing we score


def _grow_cache(cache: KVCache, n: int) -> None:
    """Prepend n empty columns to a fresh cache so virtual tokens fit beside the caller's tokens."""
    pad = cache.k.new_zeros(*cache.k.shape[:3], n, cache.k.shape[4])
    cache.k, cache.v = torch.cat([pad, cache.k], dim=3), torch.cat([pad, cache.v], dim=3)
    cache.max_len += n


def save_prompt_tuning(model: PromptTuning, folder: str | Path, base_model_name_or_path: str = "") -> Path:
    """peft's PROMPT_TUNING folder: adapter_config.json + `prompt_embeddings` (n, C) in safetensors."""
    from safetensors.torch import save_file

    c = model.base_model.config
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / ADAPTER_CONFIG, {
        "peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path
        or None, "num_virtual_tokens": model.num_virtual_tokens, "token_dim": c.width,
        "num_transformer_submodules": 1, "num_attention_heads": c.width // c.head_dim, "num_layers": c.depth,
        "prompt_tuning_init": "RANDOM", "inference_mode": True})
    save_file({"prompt_embeddings": model.prompt_embeddings.detach().float().contiguous().cpu()},
              str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt", "genforge_base": json.dumps(
                  _base_fingerprint(model.base_model))})
    return folder


def load_prompt_tuning(model: nn.Module, folder: str | Path) -> PromptTuning:
    folder = Path(folder)
    cfg = read_adapter_config(folder)
    sd, meta = _read_adapter_weights(folder)
    _check_base(model, meta, folder)
    emb = sd.get("prompt_embeddings")
    if emb is None:
        raise CheckpointError(f"{folder}: no 'prompt_embeddings' tensor in {ADAPTER_WEIGHTS}")
    width = model.config.width
    if emb.dim() != 2 or emb.shape[1] != width:
        raise CheckpointError(f"{folder}: prompt embeddings are {tuple(emb.shape)} but the model's width is {width}; "
                              "the adapter belongs to another base model")
    wrapped = PromptTuning(model, int(cfg.get("num_virtual_tokens", emb.shape[0])))
    with torch.no_grad():
        wrapped.prompt_embeddings.copy_(emb[:wrapped.num_virtual_tokens])
    return wrapped


# ------------------------------------------------------------------------------- bottleneck adapters
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
    write_json(folder / ADAPTER_CONFIG, {"peft_type": "BOTTLENECK", "task_type": "CAUSAL_LM", "adapter_size": size,
                                          "where": where, "base_model_name_or_path": base_model_name_or_path or None})
    tensors = {f"{n}.{k}": v.detach().float().contiguous().cpu() for n, m in mods.items()
               for k, v in m.state_dict().items() if not k.startswith("base_layer.")}
    save_file(tensors, str(folder / ADAPTER_WEIGHTS),
              metadata={"format": "pt", "genforge_base": json.dumps(_base_fingerprint(model))})
    return folder


def load_bottleneck(model: nn.Module, folder: str | Path) -> nn.Module:
    folder = Path(folder)
    cfg = read_adapter_config(folder)
    sd, meta = _read_adapter_weights(folder)
    _check_base(model, meta, folder)
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


# ----------------------------------------------------------------------------------- selective tuning
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


# ----------------------------------------------------------------------------------- any adapter folder
def save_adapter(model: nn.Module, folder: str | Path, base_model_name_or_path: str = "") -> Path:
    """Save whichever adapter the model carries (LoRA, prompt tuning or bottleneck) into `folder`."""
    if isinstance(model, PromptTuning):
        return save_prompt_tuning(model, folder, base_model_name_or_path)
    if lora_modules(model):
        return save_lora(model, folder, base_model_name_or_path=base_model_name_or_path)
    if any(isinstance(m, BottleneckAdapter) for m in model.modules()):
        return save_bottleneck(model, folder, base_model_name_or_path)
    raise ConfigError("save_adapter: the model carries no adapter (full fine-tuning saves a checkpoint instead)")


def load_adapter(model: nn.Module, folder: str | Path, adapter_name: str = "default") -> nn.Module:
    """Load an adapter folder of any supported kind onto `model`; returns the model to use (maybe a wrapper)."""
    kind = read_adapter_config(folder).get("peft_type")
    if kind == "LORA":
        return load_lora(model, folder, adapter_name)
    if kind == "PROMPT_TUNING":
        return load_prompt_tuning(model, folder)
    if kind == "BOTTLENECK":
        return load_bottleneck(model, folder)
    raise CheckpointError(f"{folder}: peft_type {kind!r} is not supported (LORA, PROMPT_TUNING or BOTTLENECK)")


# ------------------------------------------------------------------------------------ accounting
def trainable_summary(model: nn.Module) -> dict[str, float]:
    """{"trainable", "total", "percent"}: parameter counts (tied weights once)."""
    seen: dict[int, nn.Parameter] = {}
    for p in model.parameters():
        seen.setdefault(id(p), p)
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return {"trainable": trainable, "total": total, "percent": 100.0 * trainable / max(total, 1)}


def training_memory(model: nn.Module, loss_fn: Callable[[nn.Module, Any], tuple], batch: Any,
                    optimizer_slots: int = 2) -> dict[str, float]:
    """Peak training memory of one step, in MiB: weights + grads + optimizer state + saved activations.

    On CUDA it is measured (`torch.cuda.max_memory_allocated` around a forward/backward). On CPU the
    process's max RSS only ever grows, so one number per method cannot be read from it; instead we
    count bytes exactly: every parameter, a gradient and `optimizer_slots` AdamW moments per trainable
    parameter, and the activations autograd saves for backward (hooked with `saved_tensors_hooks`,
    each storage once, weights excluded). This is the quantity PEFT shrinks.
    """
    params = {id(p): p for p in model.parameters()}.values()
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    train_bytes = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in param_ptrs and t.device.type != "meta":
            saved[s.data_ptr()] = s.nbytes()
        return t

    device = next(iter(params)).device
    was_training = model.training
    model.train()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _, _ = loss_fn(model, batch)
    loss.backward()
    out = {"weights_mib": weight_bytes / 2**20, "grads_mib": train_bytes / 2**20,
           "optimizer_mib": optimizer_slots * train_bytes / 2**20, "activations_mib": sum(saved.values()) / 2**20}
    out["total_mib"] = sum(out.values())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        out["cuda_peak_mib"] = (torch.cuda.max_memory_allocated(device) - start) / 2**20 + out["weights_mib"]
    for p in params:
        p.grad = None
    model.train(was_training)
    return out
