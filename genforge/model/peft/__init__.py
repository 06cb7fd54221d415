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
(`genforge.train.memory.training_memory`).

Modules: `lora.py`, `peft_format.py` (peft-library folders), `prompt_tuning.py`, `bottleneck.py`,
`selective.py`; this file re-exports their public names and picks the right one for any adapter folder.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from genforge.errors import CheckpointError, ConfigError
from genforge.model.peft.bottleneck import (
    ADAPTER_SITES,
    BottleneckAdapter,
    apply_adapters,
    load_bottleneck,
    save_bottleneck,
)
from genforge.model.peft.lora import (
    HF_MODEL_PREFIX,
    LoRALinear,
    TokenRows,
    adapter_names,
    add_token_rows,
    apply_lora,
    lora_modules,
    merge_and_unload,
    merge_lora,
    set_adapter,
    token_row_modules,
    unmerge_lora,
    use_adapter,
)
from genforge.model.peft.peft_format import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    HF_LORA_PREFIX,
    load_lora,
    read_adapter_config,
    save_lora,
)
from genforge.model.peft.prompt_tuning import PromptTuning, load_prompt_tuning, save_prompt_tuning
from genforge.model.peft.selective import select_trainable, trainable_summary

__all__ = ["ADAPTER_CONFIG", "ADAPTER_SITES", "ADAPTER_WEIGHTS", "HF_LORA_PREFIX", "HF_MODEL_PREFIX",
           "BottleneckAdapter", "LoRALinear", "PromptTuning", "TokenRows", "adapter_names", "add_token_rows",
           "apply_adapters", "apply_lora",
           "load_adapter", "load_bottleneck", "load_lora", "load_prompt_tuning", "lora_modules", "merge_and_unload",
           "merge_lora", "read_adapter_config", "save_adapter", "save_bottleneck", "save_lora", "save_prompt_tuning",
           "select_trainable", "set_adapter", "token_row_modules", "trainable_summary", "unmerge_lora",
           "use_adapter"]


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
