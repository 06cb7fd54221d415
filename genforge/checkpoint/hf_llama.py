"""The Hugging Face decoder families: `GPT` checkpoints that `transformers` loads as they are.

A GPT is written as the simplest HF family that expresses it (Llama for genforge's own models; Qwen2, Qwen3,
Mistral, Gemma, Gemma 2 for imported ones: `genforge.model.hf.hf_model_type`), and any of those folders (and
Phi-3) is read back. Files: `config.json`, `model.safetensors` (HF names), `tokenizer.json` +
`tokenizer_config.json` (with the chat template, written by the core), `generation_config.json`, and
the core's `genforge.json`. `transformers.AutoModelForCausalLM` and `AutoTokenizer` load the folder.
The name and config mapping itself is `genforge.model.hf` (pure functions, no file layout).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

from genforge.checkpoint.core import load_model, register_family, save_checkpoint
from genforge.errors import CheckpointError
from genforge.io import write_json
from genforge.model.gpt import GPT, GPTConfig
from genforge.model.hf import (
    from_hf_config,
    from_hf_state_dict,
    load_hf_weights,
    read_hf_config,
    to_hf_config,
    to_hf_state_dict,
)
from genforge.tokenizer import Tokenizer


class LlamaFamily:
    """`GPT` <-> a Hugging Face folder of a supported decoder family (Llama, Mistral, Qwen2/3, Gemma/2, Phi-3)."""

    name = "gpt"

    def owns(self, model: nn.Module) -> bool:
        return isinstance(model, GPT)

    def write(self, folder: Path, model: nn.Module, tokenizer: Tokenizer | None) -> None:
        assert isinstance(model, GPT)
        ids = dict(bos_id=tokenizer.bos_id, eos_id=tokenizer.end_id, pad_id=tokenizer.pad_id) if tokenizer else {}
        write_json(folder / "config.json", to_hf_config(model.config, **ids))
        save_file({k: v.float() if v.is_floating_point() else v for k, v in to_hf_state_dict(model).items()},
                  str(folder / "model.safetensors"), metadata={"format": "pt"})
        gen: dict = {"do_sample": False, "max_new_tokens": 128}
        if tokenizer:
            # a chat model ends its turn with <|end|>; plain text ends with <|eos|>: both stop generation
            gen.update(bos_token_id=tokenizer.bos_id, eos_token_id=[tokenizer.end_id, tokenizer.eos_id],
                       pad_token_id=tokenizer.pad_id)
        write_json(folder / "generation_config.json", gen)

    def load(self, folder: Path, meta: dict, device: str | torch.device) -> GPT:
        cfg: GPTConfig = from_hf_config(read_hf_config(folder), where=str(folder / "config.json"))
        if "model" in meta:  # keep fields HF has no name for (init_std, dropout)
            cfg.init_std = meta["model"].get("init_std", cfg.init_std)
            cfg.dropout = meta["model"].get("dropout", 0.0)
        sd = from_hf_state_dict(load_hf_weights(folder), cfg)
        with torch.device("meta"):
            model = GPT(cfg)  # no memory, no init: the weights come from the file
        model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True, assign=True)
        if cfg.tie_embeddings:
            model.lm_head.weight = model.embed_tokens.weight
        model.build_rope()  # non-persistent buffers were created on the meta device
        return model.to(device).eval()


register_family(LlamaFamily())


def import_hf(src: str | Path, dst: str | Path) -> Path:
    """Turn a local HF folder (Llama, Mistral, Qwen2/3, Gemma/2, Phi-3) into a genforge checkpoint (weights,
    config, tokenizer); a config field genforge does not model raises a one-line CheckpointError naming it."""
    src = Path(src)
    model = load_model(src)
    tok = None
    if (src / "tokenizer.json").exists():
        try:
            tok = Tokenizer.load(src)
        except CheckpointError:
            tok = None  # a foreign tokenizer without our chat tokens: copied verbatim below
    out = save_checkpoint(dst, model, tok, meta={"imported_from": str(src.resolve())})
    if tok is None:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"):
            if (src / name).exists():
                shutil.copy(src / name, out / name)
    return out
