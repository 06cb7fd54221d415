"""GGUF export (the llama.cpp / ollama file format) and read-back, via the `gguf` package (extra `gguf`).

`write_gguf` writes a `GPT` (and its tokenizer) as one .gguf file: metadata under the llama.cpp keys of its
architecture (llama, qwen2 or qwen3), tensors under llama.cpp's names (`gguf`'s own HF -> GGUF name map),
2-D weights as f32, f16 or Q8_0 (blocks of 32 int8 values sharing one f16 scale; ~8.5 bits per weight)
and 1-D tensors (norms, biases) always f32, as llama.cpp's converter does. `read_gguf` reads a file back
into HF-named, dequantised tensors, and `load_gguf` into a `GPT`, which is how the tests check an export.

One layout detail: llama.cpp's `llama` architecture rotates adjacent pairs of q/k dimensions (GPT-J style),
while HF Llama rotates halves, so llama.cpp's converter permutes the rows of q_proj and k_proj within each
head; we do the same (and undo it on reading). qwen2/qwen3 use the "neox" half rotation: no permutation.
What genforge cannot express in those architectures (sliding windows, Gemma norms, RoPE scaling, ...) is
refused with the field's name.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from genforge.errors import CheckpointError, ConfigError
from genforge.extras import require
from genforge.io import atomic_path
from genforge.model.gpt import GPT, GPTConfig
from genforge.model.hf import hf_model_type, to_hf_state_dict
from genforge.tokenizer import SPECIAL_TOKENS, Tokenizer

QUANTS = ("f32", "f16", "q8_0")
_ARCH = {"llama": "LLAMA", "qwen2": "QWEN2", "qwen3": "QWEN3"}  # our HF family -> gguf.MODEL_ARCH member
Q8_BLOCK = 32  # Q8_0 quantises rows in blocks of 32 values


def _arch(cfg: GPTConfig) -> str:
    """The HF family the GGUF architecture follows; other families are refused naming what blocks them."""
    mt = hf_model_type(cfg)
    if mt not in _ARCH:
        field = {"gemma2": "sandwich_norm", "gemma": "norm_offset", "mistral": "sliding_window"}[mt]
        raise ConfigError(f"model.{field}: a {mt} model cannot be exported as GGUF yet (supported: llama, qwen2, "
                          "qwen3); export it as a Hugging Face folder instead")
    if cfg.rope_scaling:
        raise ConfigError(f"model.rope_scaling ({cfg.rope_scaling.get('rope_type')}) is not written to GGUF yet; "
                          "export it as a Hugging Face folder instead")
    if mt == "llama" and cfg.mlp_bias:
        raise ConfigError("model.mlp_bias: llama.cpp's llama architecture has no MLP biases")
    return mt


def _rope_pairs(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of each head from HF's half layout [x_0..x_{D/2-1}, y_0..] to llama.cpp's pairs [x_0, y_0, x_1, ...]."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, 2, d // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _rope_halves(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """The inverse of `_rope_pairs`."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, d // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _heads(name: str, cfg: GPTConfig) -> int:
    """How many heads a q/k projection's rows hold (0 for every other tensor)."""
    if "self_attn.q_proj." in name:
        return cfg.n_head
    if "self_attn.k_proj." in name:
        return cfg.n_kv_head
    return 0


def _name_map(cfg: GPTConfig, mt: str) -> dict[str, str]:
    """HF tensor name -> GGUF tensor name for every tensor of the model (from gguf's own table)."""
    gguf = require("gguf", "gguf")
    tmap = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, _ARCH[mt]), cfg.depth)
    with torch.device("meta"):
        names = to_hf_state_dict(GPT(cfg))
    out = {}
    for name in names:
        new = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise CheckpointError(f"{name}: no GGUF tensor name for it in the {mt} architecture")
        out[name] = new
    return out


def write_gguf(path: str | Path, model: GPT, tokenizer: Tokenizer | None, quant: str = "f16") -> Path:
    """Write `model` (+ tokenizer) as a GGUF file at `path` (atomically: a temp file renamed at the end)."""
    gguf = require("gguf", "gguf")
    if quant not in QUANTS:
        raise ConfigError(f"quant={quant!r}: choose one of {', '.join(QUANTS)}")
    cfg = model.config
    mt = _arch(cfg)
    path = Path(path)
    names = _name_map(cfg, mt)
    arch = gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, _ARCH[mt])]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(tmp, arch)
        w.add_name(path.stem)
        w.add_context_length(cfg.max_seq_len)
        w.add_embedding_length(cfg.width)
        w.add_block_count(cfg.depth)
        w.add_feed_forward_length(cfg.mlp_hidden)
        w.add_head_count(cfg.n_head)
        w.add_head_count_kv(cfg.n_kv_head)
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_layer_norm_rms_eps(cfg.norm_eps)
        w.add_vocab_size(cfg.vocab_size)
        w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                         "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant])
        if tokenizer is not None:
            _add_tokenizer(w, tokenizer, cfg.vocab_size, gguf)
        for name, t in to_hf_state_dict(model).items():
            t = t.float()
            if mt == "llama" and _heads(name, cfg):
                t = _rope_pairs(t, _heads(name, cfg))
            data = t.cpu().numpy()
            if data.ndim == 1 or quant == "f32":
                w.add_tensor(names[name], data.astype(np.float32))
            elif quant == "f16" or data.shape[-1] % Q8_BLOCK:  # Q8_0 needs whole blocks; llama.cpp falls back too
                w.add_tensor(names[name], data.astype(np.float16))
            else:
                q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
                w.add_tensor(names[name], q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return path


def _add_tokenizer(w, tok: Tokenizer, vocab_size: int, gguf) -> None:
    """The byte-level BPE vocabulary and merges as llama.cpp's "gpt2" tokenizer, with genforge's specials,
    chat template and BOS rule (llama.cpp adds BOS to plain prompts, as genforge does)."""
    from genforge.tokenizer import CHAT_TEMPLATE

    spec = json.loads(tok.hf.to_str())
    vocab = spec["model"]["vocab"]
    tokens = [""] * vocab_size
    for piece, i in vocab.items():
        tokens[i] = piece
    for t in spec.get("added_tokens", []):
        tokens[t["id"]] = t["content"]
    types = [gguf.TokenType.CONTROL if t in SPECIAL_TOKENS else gguf.TokenType.NORMAL for t in tokens]
    for i, t in enumerate(tokens):  # rows the model has beyond the tokenizer (padding to a round vocab)
        if not t:
            tokens[i], types[i] = f"[PAD{i}]", gguf.TokenType.UNUSED
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")  # byte-level GPT-2 split; genforge also splits digits one by one
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.bos_id)
    w.add_eos_token_id(tok.eos_id)
    w.add_eot_token_id(tok.end_id)  # a chat turn ends with <|end|>
    w.add_pad_token_id(tok.pad_id)
    w.add_add_bos_token(True)
    w.add_chat_template(CHAT_TEMPLATE)


def read_gguf(path: str | Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, str]]:
    """(metadata, HF-named float32 tensors, HF name -> GGUF tensor type name) of a GGUF file written by
    `write_gguf`: names mapped back, quantised tensors dequantised, llama's q/k row permutation undone."""
    gguf = require("gguf", "gguf")
    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable GGUF file ({e})") from None
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                                                "tokenizer.ggml.token_type"):
            continue
        meta[key] = field.contents()
    arch = meta["general.architecture"]
    mt = {v.lower(): k for k, v in _ARCH.items()}.get(arch)
    if mt is None:
        raise CheckpointError(f"{path}: architecture {arch!r} is not one genforge reads (llama, qwen2, qwen3)")
    cfg = gguf_config(meta)
    back = {v: k for k, v in _name_map(cfg, mt).items()}
    tensors, types = {}, {}
    for t in reader.tensors:
        name = back.get(t.name)
        if name is None:
            raise CheckpointError(f"{path}: unexpected tensor {t.name!r}")
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dimensions innermost first
        data = gguf.quants.dequantize(t.data, t.tensor_type) if t.tensor_type.name.startswith("Q") else t.data
        x = torch.from_numpy(np.array(data, dtype=np.float32)).reshape(shape)
        if mt == "llama" and _heads(name, cfg):
            x = _rope_halves(x, _heads(name, cfg))
        tensors[name], types[name] = x, t.tensor_type.name
    return meta, tensors, types


def gguf_config(meta: dict) -> GPTConfig:
    """The GPTConfig a GGUF file's metadata describes (architectures `write_gguf` writes)."""
    a = meta["general.architecture"]
    return GPTConfig(
        vocab_size=int(meta.get(f"{a}.vocab_size") or len(meta.get("tokenizer.ggml.tokens", []))),
        depth=int(meta[f"{a}.block_count"]), width=int(meta[f"{a}.embedding_length"]),
        n_head=int(meta[f"{a}.attention.head_count"]), n_kv_head=int(meta[f"{a}.attention.head_count_kv"]),
        head_dim=int(meta[f"{a}.attention.key_length"]), mlp_hidden=int(meta[f"{a}.feed_forward_length"]),
        max_seq_len=int(meta[f"{a}.context_length"]), rope_theta=float(meta[f"{a}.rope.freq_base"]),
        norm_eps=float(meta[f"{a}.attention.layer_norm_rms_epsilon"]), tie_embeddings=False,
        qkv_bias=a == "qwen2", qk_norm=a == "qwen3",
    ).resolved()


def load_gguf(path: str | Path) -> GPT:
    """A `GPT` with the (dequantised) weights of a GGUF file written by `write_gguf`."""
    from genforge.model.hf import from_hf_state_dict

    meta, tensors, _ = read_gguf(path)
    cfg = gguf_config(meta)
    cfg.tie_embeddings = "lm_head.weight" not in tensors
    cfg.qkv_bias = any(k.endswith("q_proj.bias") for k in tensors)
    cfg.o_bias = any(k.endswith("o_proj.bias") for k in tensors)
    model = GPT(cfg)
    model.load_state_dict(from_hf_state_dict(tensors, cfg), strict=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    return model.eval()
