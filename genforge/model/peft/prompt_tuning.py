"""Prompt tuning (Lester et al. 2021): `PromptTuning` wraps the model and prepends n trainable virtual-token
embeddings through `inputs_embeds`; the base is frozen. Saved in peft's PROMPT_TUNING folder format."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn

from genforge.errors import CheckpointError, ConfigError
from genforge.io import write_json
from genforge.model.gpt import KVCache
from genforge.model.peft import peft_format as fmt


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
    write_json(folder / fmt.ADAPTER_CONFIG, {
        "peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path
        or None, "num_virtual_tokens": model.num_virtual_tokens, "token_dim": c.width,
        "num_transformer_submodules": 1, "num_attention_heads": c.width // c.head_dim, "num_layers": c.depth,
        "prompt_tuning_init": "RANDOM", "inference_mode": True})
    save_file({"prompt_embeddings": model.prompt_embeddings.detach().float().contiguous().cpu()},
              str(folder / fmt.ADAPTER_WEIGHTS), metadata={"format": "pt", "genforge_base": json.dumps(
                  fmt.base_fingerprint(model.base_model))})
    return folder


def load_prompt_tuning(model: nn.Module, folder: str | Path) -> PromptTuning:
    folder = Path(folder)
    cfg = fmt.read_adapter_config(folder)
    sd, meta = fmt.read_adapter_weights(folder)
    fmt.check_base(model, meta, folder)
    emb = sd.get("prompt_embeddings")
    if emb is None:
        raise CheckpointError(f"{folder}: no 'prompt_embeddings' tensor in {fmt.ADAPTER_WEIGHTS}")
    width = model.config.width
    if emb.dim() != 2 or emb.shape[1] != width:
        raise CheckpointError(f"{folder}: prompt embeddings are {tuple(emb.shape)} but the model's width is {width}; "
                              "the adapter belongs to another base model")
    wrapped = PromptTuning(model, int(cfg.get("num_virtual_tokens", emb.shape[0])))
    with torch.no_grad():
        wrapped.prompt_embeddings.copy_(emb[:wrapped.num_virtual_tokens])
    return wrapped
