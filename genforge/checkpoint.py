"""Checkpoints a Hugging Face user recognises.

A checkpoint is a folder: `config.json` (Llama fields), `model.safetensors` (HF names),
`tokenizer.json` + `tokenizer_config.json` (with the chat template), `generation_config.json`,
and `genforge.json` (our resolved run config, step and metrics). `transformers.AutoModelForCausalLM`
and `AutoTokenizer` load it as is. Training state for resume (optimizer, RNG) is written beside the
weights by the trainer. Every folder is written to a temp name and renamed into place, so a kill
mid-save leaves the previous complete checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from genforge.errors import CheckpointError
from genforge.io import atomic_dir, write_json
from genforge.model.gpt import GPT, GPTConfig, rope_tables
from genforge.model.hf import (
    from_hf_config,
    from_hf_state_dict,
    load_hf_weights,
    read_hf_config,
    to_hf_config,
    to_hf_state_dict,
)
from genforge.tokenizer import Tokenizer


def write_checkpoint_files(folder: Path, model: GPT, tokenizer: Tokenizer | None = None,
                           run_config: dict | None = None, meta: dict | None = None) -> None:
    """Write the checkpoint files into an existing folder (not atomic by itself; see save_checkpoint)."""
    model = getattr(model, "module", model)  # unwrap DDP
    cfg = model.config
    ids = dict(bos_id=tokenizer.bos_id, eos_id=tokenizer.end_id, pad_id=tokenizer.pad_id) if tokenizer else {}
    write_json(folder / "config.json", to_hf_config(cfg, **ids))
    save_file({k: v.float() if v.is_floating_point() else v for k, v in to_hf_state_dict(model).items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    gen = {"do_sample": False, "max_new_tokens": 128}
    if tokenizer:
        # a chat model ends its turn with <|end|>; plain text ends with <|eos|>: both stop generation
        gen.update(bos_token_id=tokenizer.bos_id, eos_token_id=[tokenizer.end_id, tokenizer.eos_id],
                   pad_token_id=tokenizer.pad_id)
        tokenizer.save(folder, model_max_length=cfg.max_seq_len)
    write_json(folder / "generation_config.json", gen)
    write_json(folder / "genforge.json", {"model": cfg.__dict__, "run": run_config or {}, **(meta or {})})


def save_checkpoint(path: str | Path, model: GPT, tokenizer: Tokenizer | None = None,
                    run_config: dict | None = None, meta: dict | None = None) -> Path:
    """Write a complete checkpoint folder atomically and return its path."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        write_checkpoint_files(tmp, model, tokenizer, run_config, meta)
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """genforge.json of a checkpoint ({} for a plain HF folder)."""
    f = Path(path) / "genforge.json"
    if not f.exists():
        return {}
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f}: corrupt JSON ({e.msg}); the checkpoint was not written completely") from None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> GPT:
    """The model of a checkpoint folder (genforge or any HF Llama-family folder)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint folder not found")
    cfg: GPTConfig = from_hf_config(read_hf_config(path), where=str(path / "config.json"))
    meta = read_meta(path)
    if "model" in meta:  # keep fields HF has no name for (init_std, dropout)
        cfg.init_std, cfg.dropout = meta["model"].get("init_std", cfg.init_std), meta["model"].get("dropout", 0.0)
    sd = from_hf_state_dict(load_hf_weights(path), cfg)
    with torch.device("meta"):
        model = GPT(cfg)  # no memory, no init: the weights come from the file
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    # non-persistent buffers were created on the meta device: rebuild the RoPE tables
    model.rope_cos, model.rope_sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
    model = model.to(device)
    return model.eval()


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Tokenizer | None, dict]:
    """(model, tokenizer or None, genforge.json meta) from a checkpoint folder."""
    path = Path(path)
    model = load_model(path, device)
    tok = Tokenizer.load(path) if (path / "tokenizer.json").exists() else None
    if tok is not None and tok.vocab_size > model.config.vocab_size:
        raise CheckpointError(f"{path}: tokenizer has {tok.vocab_size} tokens but the model only "
                              f"{model.config.vocab_size} embeddings; tokenizer and weights do not belong together")
    return model, tok, read_meta(path)


def import_hf(src: str | Path, dst: str | Path) -> Path:
    """Turn a local HF Llama-family folder into a genforge checkpoint (weights, config, tokenizer)."""
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
        import shutil
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"):
            if (src / name).exists():
                shutil.copy(src / name, out / name)
    return out
