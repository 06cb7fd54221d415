"""Hugging Face interop: config and weight-name mapping between genforge and `LlamaForCausalLM`.

Our module names already follow HF Llama, so the mapping is a prefix: genforge `layers.0.mlp.up_proj.weight`
is HF `model.layers.0.mlp.up_proj.weight`; `lm_head.weight` is the same in both. RoPE uses the same
"rotate half" layout, so no weight permutation is needed.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genforge.errors import CheckpointError
from genforge.io import read_json
from genforge.model.gpt import GPT, GPTConfig

HF_PREFIX = "model."


def to_hf_config(cfg: GPTConfig, bos_id: int | None = None, eos_id: int | None = None,
                 pad_id: int | None = None) -> dict:
    """Our config as a `LlamaConfig` dict (config.json)."""
    c = cfg.resolved()
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.width,
        "intermediate_size": c.mlp_hidden,
        "num_hidden_layers": c.depth,
        "num_attention_heads": c.width // c.head_dim,
        "num_key_value_heads": c.n_kv_head,
        "head_dim": c.head_dim,
        "max_position_embeddings": c.max_seq_len,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,  # transformers < 5 reads this
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},  # transformers >= 5
        "tie_word_embeddings": c.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": c.init_std,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "torch_dtype": "float32",
        "use_cache": True,
    }


def from_hf_config(hf: dict, where: str = "config.json") -> GPTConfig:
    """A `LlamaConfig` dict -> GPTConfig; features we do not implement raise a clear error."""
    if hf.get("model_type") not in ("llama", "mistral", "qwen2", None):
        raise CheckpointError(f"{where}: model_type {hf.get('model_type')!r} is not Llama-family; "
                              "genforge imports Llama-style decoder-only models")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise CheckpointError(f"{where}: {key}=true is not supported (genforge projections have no bias)")
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{where}: hidden_act {hf.get('hidden_act')!r} is not supported (only silu/SwiGLU)")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise CheckpointError(f"{where}: rope scaling {rope.get('rope_type')!r} is not supported (only default RoPE)")
    try:
        n_head = hf["num_attention_heads"]
        width = hf["hidden_size"]
        return GPTConfig(
            vocab_size=hf["vocab_size"], depth=hf["num_hidden_layers"], width=width,
            head_dim=hf.get("head_dim") or width // n_head, n_kv_head=hf.get("num_key_value_heads") or n_head,
            mlp_hidden=hf["intermediate_size"], max_seq_len=hf.get("max_position_embeddings", 2048),
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            norm_eps=hf.get("rms_norm_eps", 1e-6), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        ).resolved()
    except KeyError as e:
        raise CheckpointError(f"{where}: missing field {e.args[0]!r}") from None


def to_hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Weights under HF names (tied head omitted, as HF saves it), contiguous, ready for safetensors."""
    sd = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight":
            if model.config.tie_embeddings:
                continue
            sd[k] = v.detach().contiguous()
        else:
            sd[HF_PREFIX + k] = v.detach().contiguous()
    return sd


def from_hf_state_dict(sd: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """HF-named weights -> our names; raises CheckpointError listing missing/unexpected keys."""
    out = {}
    for k, v in sd.items():
        if k.endswith("rotary_emb.inv_freq"):
            continue  # older HF checkpoints store the RoPE table; we recompute it
        out[k[len(HF_PREFIX):] if k.startswith(HF_PREFIX) else k] = v
    if cfg.tie_embeddings:
        out.pop("lm_head.weight", None)
        out["lm_head.weight"] = out.get("embed_tokens.weight")
    expected = _expected_keys(cfg)
    missing, unexpected = sorted(expected - set(out)), sorted(set(out) - expected)
    if missing or unexpected or out.get("lm_head.weight") is None:
        raise CheckpointError(f"weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return out


def _expected_keys(cfg: GPTConfig) -> set[str]:
    keys = {"embed_tokens.weight", "norm.weight", "lm_head.weight"}
    for i in range(cfg.depth):
        p = f"layers.{i}."
        keys |= {p + n + ".weight" for n in (
            "input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
            "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    return keys


def read_hf_config(folder: str | Path) -> dict:
    """config.json of a folder, with clear errors."""
    return read_json(Path(folder) / "config.json", f"{folder}: no config.json here; is this a checkpoint folder?",
                     CheckpointError)


def load_hf_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """All weights of an HF folder: model.safetensors, sharded safetensors, or pytorch_model.bin."""
    from safetensors.torch import load_file

    folder = Path(folder)
    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        files = sorted(folder.glob("pytorch_model*.bin"))
        if not files:
            raise CheckpointError(f"{folder}: no model.safetensors or pytorch_model.bin; the checkpoint is incomplete")
    sd = {}
    for f in files:
        try:
            sd.update(load_file(str(f)) if f.suffix == ".safetensors"
                      else torch.load(f, map_location="cpu", weights_only=True))
        except Exception as e:  # safetensors raises its own error types on truncated files
            raise CheckpointError(f"{f}: cannot read weights ({e}); the file is corrupt or truncated") from None
    return sd
