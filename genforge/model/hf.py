"""Hugging Face interop: config and weight-name mapping between genforge's `GPT` and the decoder families
people fine-tune: Llama (incl. Llama 3 RoPE scaling), Mistral, Qwen2/2.5, Qwen3, Gemma, Gemma 2, Phi-3.

Our module names already follow HF Llama, so most of the mapping is a prefix: genforge
`layers.0.mlp.up_proj.weight` is HF `model.layers.0.mlp.up_proj.weight`; `lm_head.weight` is the same in
both. RoPE uses the same "rotate half" layout, so no weight permutation is needed. Phi-3 fuses q/k/v and
gate/up into one matrix each: split at import (rows in q, k, v and gate, up order), and a GPT is exported
as whichever family represents it (Phi-3 as Llama, which computes the same function).

Import is table-driven and refuses rather than guesses: a config field genforge does not model raises a
one-line `CheckpointError` naming the field, so nothing imports silently wrong. Export checks itself by
reading its own config back (`to_hf_config`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from genforge.errors import CheckpointError
from genforge.io import read_json
from genforge.model.gpt import GPT, GPTConfig

HF_PREFIX = "model."

# model_type -> the HF class `architectures` names when we write that family
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM", "gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM",
                 "phi3": "Phi3ForCausalLM"}
# HF activation names -> GPTConfig.mlp_act (Gemma's legacy "gelu" means the tanh approximation: see from_hf_config)
_ACTS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh"}
_ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")
# fields that change nothing about the function the weights compute (metadata, dropout at 0, cache hints)
_BENIGN = {"architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "_name_or_path", "auto_map",
           "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range", "use_cache", "pretraining_tp",
           "id2label", "label2id", "output_attentions", "output_hidden_states", "return_dict", "cache_implementation",
           "tie_word_embeddings", "original_max_position_embeddings"}
_DROPOUTS = {"attention_dropout", "embd_pdrop", "resid_pdrop", "hidden_dropout", "mlp_dropout"}  # must be 0 at import
# fields read below (each is either honoured or refused with its name)
_READ = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
         "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_parameters",
         "rope_scaling", "partial_rotary_factor", "hidden_act", "hidden_activation", "attention_bias", "mlp_bias",
         "sliding_window", "use_sliding_window", "max_window_layers", "layer_types", "query_pre_attn_scalar",
         "attn_logit_softcapping", "final_logit_softcapping", "use_bidirectional_attention"}


def _refuse(where: str, field: str, why: str) -> CheckpointError:
    return CheckpointError(f"{where}: field {field!r} {why}")


# ------------------------------------------------------------------------------------------- config
def from_hf_config(hf: dict, where: str = "config.json") -> GPTConfig:
    """A config.json dict of a supported family -> GPTConfig; anything not modelled raises CheckpointError."""
    mt = hf.get("model_type") or "llama"
    if mt not in ARCHITECTURES:
        raise _refuse(where, "model_type", f"is {mt!r}; genforge imports {', '.join(ARCHITECTURES)}")
    for key, value in hf.items():
        if key in _DROPOUTS:
            if value:
                raise _refuse(where, key, f"is {value}; set it to 0 (genforge fine-tunes imported models without it)")
        elif key not in _BENIGN | _READ:
            raise _refuse(where, key, f"(= {str(value)[:40]}) is not supported by the {mt} importer")
    if hf.get("use_bidirectional_attention"):
        raise _refuse(where, "use_bidirectional_attention", "is true; genforge models are causal decoders")
    if hf.get("mlp_bias") and mt != "llama":
        raise _refuse(where, "mlp_bias", f"is not a {mt} field")
    act_key = "hidden_activation" if mt == "gemma2" else "hidden_act"
    act = hf.get(act_key) or "silu"
    if mt == "gemma" and act == "gelu":
        act = "gelu_pytorch_tanh"  # transformers reads Gemma's legacy "gelu" as the tanh approximation
    if act not in _ACTS:
        raise _refuse(where, act_key, f"{act!r} is not supported (silu, gelu_pytorch_tanh)")

    # RoPE: transformers >= 5 writes rope_parameters (with rope_theta inside); older files write rope_scaling
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = float(rope.pop("rope_theta", None) or hf.get("rope_theta") or 10000.0)
    kind = rope.pop("rope_type", None) or rope.pop("type", None) or "default"
    rope.pop("type", None)
    if kind not in _ROPE_TYPES:
        raise _refuse(where, "rope_parameters.rope_type", f"{kind!r} is not supported ({', '.join(_ROPE_TYPES)})")
    partial = rope.pop("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
        raise _refuse(where, "partial_rotary_factor", f"is {partial}; genforge rotates the whole head")
    try:
        n_head, width = hf["num_attention_heads"], hf["hidden_size"]
        max_pos = hf.get("max_position_embeddings", 2048)
        scaling = None
        if kind != "default":
            scaling = {"rope_type": kind, **rope}
            if kind == "dynamic":
                # transformers' dynamic NTK treats max_position_embeddings as the original context and scales
                # beyond it: keep that as the original and allow factor x as many positions
                scaling["original_max_position_embeddings"] = max_pos
                max_pos = int(max_pos * scaling["factor"])
            else:
                scaling.setdefault("original_max_position_embeddings", max_pos)
                if kind == "yarn" and scaling.get("factor") is None:
                    scaling["factor"] = max_pos / scaling["original_max_position_embeddings"]
            missing = [k for k in {"linear": ("factor",), "dynamic": ("factor",), "yarn": ("factor",),
                                   "llama3": ("factor", "low_freq_factor", "high_freq_factor")}[kind]
                       if scaling.get(k) is None]
            if missing:
                raise _refuse(where, f"rope_parameters.{missing[0]}", f"is required for rope_type {kind!r}")
        window, sliding_layers = _sliding(hf, mt, where)
        bias = bool(hf.get("attention_bias"))
        cfg = GPTConfig(
            vocab_size=hf["vocab_size"], depth=hf["num_hidden_layers"], width=width, n_head=n_head,
            head_dim=hf.get("head_dim") or width // n_head, n_kv_head=hf.get("num_key_value_heads") or n_head,
            mlp_hidden=hf["intermediate_size"], max_seq_len=max_pos, rope_theta=theta, rope_scaling=scaling,
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            tie_embeddings=bool(hf.get("tie_word_embeddings", mt in ("gemma", "gemma2"))),
            qkv_bias=bias or mt == "qwen2", o_bias=bias, mlp_bias=bool(hf.get("mlp_bias")),
            sliding_window=window, sliding_layers=sliding_layers, qk_norm=mt == "qwen3", mlp_act=_ACTS[act],
        )
        if mt in ("gemma", "gemma2"):  # (1 + w) norms, embeddings scaled by sqrt(width)
            cfg.norm_offset, cfg.embed_scale = 1.0, True
        if mt == "gemma2":
            cfg.sandwich_norm = True
            cfg.attn_scale = float(hf.get("query_pre_attn_scalar", cfg.head_dim)) ** -0.5
            cfg.attn_softcap = float(hf.get("attn_logit_softcapping") or 0.0)
            cfg.final_softcap = float(hf.get("final_logit_softcapping") or 0.0)
        else:
            for key in ("query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping"):
                if hf.get(key) is not None:
                    raise _refuse(where, key, f"is not a {mt} field")
        return cfg.resolved()
    except KeyError as e:
        raise CheckpointError(f"{where}: missing field {e.args[0]!r}") from None


def _sliding(hf: dict, mt: str, where: str) -> tuple[int, list[int] | None]:
    """(window, sliding layers or None for all) as transformers applies them for this family."""
    window = hf.get("sliding_window")
    depth = hf["num_hidden_layers"]
    if mt in ("mistral", "phi3"):  # one window for every layer (None: full attention)
        if hf.get("layer_types"):
            raise _refuse(where, "layer_types", f"is not a {mt} field (an alternating-attention variant?)")
        return int(window or 0), None
    if mt == "llama" or mt == "gemma":
        if window:
            raise _refuse(where, "sliding_window", f"is not a {mt} field")
        return 0, None
    # qwen2 / qwen3 / gemma2 give each layer a type; qwen only slides when use_sliding_window is true
    if mt in ("qwen2", "qwen3") and not hf.get("use_sliding_window"):
        window = None
    types = hf.get("layer_types")
    if types is None:
        if mt == "gemma2":
            types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(depth)]
        else:
            first = hf.get("max_window_layers", 28)
            types = ["sliding_attention" if window and i >= first else "full_attention" for i in range(depth)]
    if len(types) != depth or set(types) - {"sliding_attention", "full_attention"}:
        raise _refuse(where, "layer_types", "must give sliding_attention or full_attention for every layer")
    layers = [i for i, t in enumerate(types) if t == "sliding_attention"]
    if not window or not layers:
        return 0, None
    return int(window), None if len(layers) == depth else layers


def hf_model_type(cfg: GPTConfig) -> str:
    """The HF family a GPT is written as (the simplest one that represents its features)."""
    c = cfg.resolved()
    if c.sandwich_norm:
        return "gemma2"
    if c.norm_offset:
        return "gemma"
    if c.qk_norm:
        return "qwen3"
    if c.qkv_bias and not c.o_bias:
        return "qwen2"
    if c.sliding_window:
        return "mistral"
    return "llama"


def to_hf_config(cfg: GPTConfig, bos_id: int | None = None, eos_id: int | None = None,
                 pad_id: int | None = None) -> dict:
    """Our config as the config.json of `hf_model_type(cfg)`; raises if that family cannot express it."""
    c = cfg.resolved()
    mt = hf_model_type(c)
    rope: dict = {"rope_type": "default", "rope_theta": c.rope_theta}
    max_pos = c.max_seq_len
    if c.rope_scaling:
        rope.update(c.rope_scaling)
        if rope["rope_type"] == "dynamic":  # see from_hf_config: HF's max_position_embeddings is the original
            max_pos = rope.pop("original_max_position_embeddings")
    out = {
        "architectures": [ARCHITECTURES[mt]],
        "model_type": mt,
        "vocab_size": c.vocab_size,
        "hidden_size": c.width,
        "intermediate_size": c.mlp_hidden,
        "num_hidden_layers": c.depth,
        "num_attention_heads": c.n_head,
        "num_key_value_heads": c.n_kv_head,
        "head_dim": c.head_dim,
        "max_position_embeddings": max_pos,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,  # transformers < 5 reads this
        "rope_parameters": rope,  # transformers >= 5
        "tie_word_embeddings": c.tie_embeddings,
        "hidden_act": "gelu_pytorch_tanh" if c.mlp_act == "gelu_tanh" else c.mlp_act,
        "attention_dropout": 0.0,
        "initializer_range": c.init_std,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "torch_dtype": "float32",
        "use_cache": True,
    }
    if c.rope_scaling and c.rope_scaling.get("rope_type") != "default":
        out["rope_scaling"] = rope  # transformers < 5 reads this
    if mt in ("llama", "qwen3", "gemma", "gemma2"):
        out["attention_bias"] = c.qkv_bias
    if mt == "llama":
        out["mlp_bias"] = c.mlp_bias
    if mt == "mistral":
        out["sliding_window"] = c.sliding_window
    types = ["sliding_attention" if c.window(i) else "full_attention" for i in range(c.depth)]
    if mt in ("qwen2", "qwen3"):
        out.update(use_sliding_window=bool(c.sliding_window), sliding_window=c.sliding_window or None,
                   max_window_layers=c.depth, layer_types=types)
    if mt == "gemma2":
        out["hidden_activation"] = out.pop("hidden_act")
        out.update(sliding_window=c.sliding_window or None, layer_types=types,
                   query_pre_attn_scalar=_round(c.attn_scale ** -2 if c.attn_scale else c.head_dim),
                   attn_logit_softcapping=c.attn_softcap or None, final_logit_softcapping=c.final_softcap or None)
    back = from_hf_config(out, where=f"export as {mt}")
    for field in ("n_head", "rope_scaling", "qkv_bias", "o_bias", "mlp_bias", "sliding_window", "sliding_layers",
                  "qk_norm", "norm_offset", "embed_scale", "mlp_act", "sandwich_norm", "attn_scale", "attn_softcap",
                  "final_softcap", "max_seq_len"):
        if getattr(back, field) != getattr(c, field) and not _close(getattr(back, field), getattr(c, field)):
            raise CheckpointError(f"model.{field}={getattr(c, field)!r} cannot be written as a Hugging Face {mt} "
                                  "config; export is refused rather than written wrong")
    return out


def _round(x: float) -> float | int:
    return round(x) if abs(x - round(x)) < 1e-6 else x


def _close(a: object, b: object) -> bool:
    return isinstance(a, float) and isinstance(b, float) and abs(a - b) <= 1e-9 * max(abs(a), abs(b))


# ------------------------------------------------------------------------------------------- weights
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
    """HF-named weights -> our names (Phi-3's fused matrices split); raises CheckpointError naming the
    missing/unexpected keys and, for a shape mismatch, the tensor and both shapes."""
    cfg = cfg.resolved()
    out = {}
    for k, v in sd.items():
        if k.endswith("rotary_emb.inv_freq"):
            continue  # older HF checkpoints store the RoPE table; we recompute it
        k = k[len(HF_PREFIX):] if k.startswith(HF_PREFIX) else k
        if k.endswith("self_attn.qkv_proj.weight"):  # Phi-3: rows are q (H*D), then k (K*D), then v (K*D)
            q, kk, vv = v.split([cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim,
                                 cfg.n_kv_head * cfg.head_dim])
            p = k[: -len("qkv_proj.weight")]
            out |= {p + "q_proj.weight": q, p + "k_proj.weight": kk, p + "v_proj.weight": vv}
        elif k.endswith("mlp.gate_up_proj.weight"):  # Phi-3: gate rows, then up rows
            p = k[: -len("gate_up_proj.weight")]
            out[p + "gate_proj.weight"], out[p + "up_proj.weight"] = v.chunk(2, dim=0)
        else:
            out[k] = v
    if cfg.tie_embeddings:
        out.pop("lm_head.weight", None)
        out["lm_head.weight"] = out.get("embed_tokens.weight")
    with torch.device("meta"):
        want = {k: v.shape for k, v in GPT(cfg).state_dict().items()}
    missing, unexpected = sorted(set(want) - set(out)), sorted(set(out) - set(want))
    if missing or unexpected or out.get("lm_head.weight") is None:
        hint = ""
        if any(k.endswith(".bias") for k in unexpected):
            hint = "; the file has biases its config.json does not declare (attention_bias / mlp_bias?)"
        elif any(k.endswith(".bias") for k in missing):
            hint = "; config.json declares biases the file lacks"
        raise CheckpointError(f"weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}"
                              + hint)
    for k, shape in want.items():
        if out[k].shape != shape:
            raise CheckpointError(f"weight {k} has shape {tuple(out[k].shape)} but config.json implies {tuple(shape)}"
                                  " (check hidden_size, head_dim, num_key_value_heads, intermediate_size)")
    return out


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
