"""The Hugging Face T5 family: `Seq2Seq` checkpoints that `transformers.T5ForConditionalGeneration` loads with
equal logits (T5 v1.1 "gated-silu" feed-forward, tied embeddings with the original T5 output scaling).

A mask-predict model (`decoder_causal=False` or a length head) has no T5 counterpart: it is saved by the generic
`ModuleFamily` ("seq2seq-cmlm": our names in model.safetensors, the config in genforge.json).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from genforge.checkpoint.core import ModuleFamily, register_family
from genforge.errors import CheckpointError
from genforge.io import write_json
from genforge.model.encoder_decoder import Seq2Seq, Seq2SeqConfig
from genforge.tokenizer import Tokenizer

_ATTN = {"self_attn": "SelfAttention", "cross_attn": "EncDecAttention"}
_MLP = {"gate_proj": "wi_0", "up_proj": "wi_1", "down_proj": "wo"}
# sub-layer index of each part inside an HF block: encoder [self, ff], decoder [self, cross, ff]
_ENC_SLOT = {"self": 0, "mlp": 1}
_DEC_SLOT = {"self": 0, "cross": 1, "mlp": 2}


def to_hf_name(name: str) -> str:
    """Our Seq2Seq parameter name -> T5ForConditionalGeneration's."""
    fixed = {"shared.weight": "shared.weight", "enc_norm.weight": "encoder.final_layer_norm.weight",
             "dec_norm.weight": "decoder.final_layer_norm.weight",
             "enc_rel_bias.weight": "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
             "dec_rel_bias.weight": "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"}
    if name in fixed:
        return fixed[name]
    m = re.fullmatch(r"(enc|dec)_layers\.(\d+)\.(\w+)\.(?:(\w+)\.)?weight", name)
    if not m:
        raise CheckpointError(f"no T5 name for parameter {name!r}")
    stack, i, part, sub = m[1], m[2], m[3], m[4]
    slots = _ENC_SLOT if stack == "enc" else _DEC_SLOT
    prefix = f"{'encoder' if stack == 'enc' else 'decoder'}.block.{i}.layer"
    if part.endswith("_norm"):
        return f"{prefix}.{slots[part[:-5]]}.layer_norm.weight"
    if part in _ATTN:
        return f"{prefix}.{slots[part[:-5]]}.{_ATTN[part]}.{sub}.weight"
    if part == "mlp":
        return f"{prefix}.{slots['mlp']}.DenseReluDense.{_MLP[sub]}.weight"
    raise CheckpointError(f"no T5 name for parameter {name!r}")


def to_hf_config(cfg: Seq2SeqConfig, eos_id: int | None = None) -> dict:
    c = cfg.resolved()
    return {
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "vocab_size": c.vocab_size,
        "d_model": c.width, "d_kv": c.head_dim, "d_ff": c.mlp_hidden, "num_layers": c.depth,
        "num_decoder_layers": c.decoder_depth, "num_heads": c.width // c.head_dim,
        "relative_attention_num_buckets": c.num_buckets, "relative_attention_max_distance": c.max_distance,
        "dropout_rate": c.dropout, "layer_norm_epsilon": c.norm_eps, "feed_forward_proj": "gated-silu",
        "is_encoder_decoder": True, "tie_word_embeddings": True, "pad_token_id": c.pad_id,
        "decoder_start_token_id": c.decoder_start_id, "eos_token_id": eos_id if eos_id is not None else 1,
        "n_positions": c.max_seq_len,
    }


def from_hf_config(hf: dict, where: str) -> Seq2SeqConfig:
    if hf.get("model_type") != "t5" or hf.get("feed_forward_proj") != "gated-silu":
        raise CheckpointError(f"{where}: only T5 configs with feed_forward_proj='gated-silu' map onto genforge's "
                              f"Seq2Seq (got model_type={hf.get('model_type')!r}, "
                              f"feed_forward_proj={hf.get('feed_forward_proj')!r})")
    if hf.get("tie_word_embeddings") is False:
        raise CheckpointError(f"{where}: tie_word_embeddings=false (T5 v1.1 without output scaling) is not supported")
    return Seq2SeqConfig(vocab_size=hf["vocab_size"], depth=hf["num_layers"],
                         decoder_depth=hf.get("num_decoder_layers") or hf["num_layers"], width=hf["d_model"],
                         head_dim=hf["d_kv"], mlp_hidden=hf["d_ff"],
                         num_buckets=hf.get("relative_attention_num_buckets", 32),
                         max_distance=hf.get("relative_attention_max_distance", 128),
                         max_seq_len=hf.get("n_positions", 512), norm_eps=hf.get("layer_norm_epsilon", 1e-6),
                         pad_id=hf.get("pad_token_id", 0), decoder_start_id=hf.get("decoder_start_token_id", 0))


class T5Family:
    """Causal `Seq2Seq` without a length head <-> a Hugging Face `T5ForConditionalGeneration` folder."""

    name = "t5"

    def owns(self, model: nn.Module) -> bool:
        return isinstance(model, Seq2Seq) and model.config.decoder_causal and not model.config.length_classes

    def write(self, folder: Path, model: nn.Module, tokenizer: Tokenizer | None) -> None:
        assert isinstance(model, Seq2Seq)
        write_json(folder / "config.json", to_hf_config(model.config, tokenizer.eos_id if tokenizer else None))
        t = {to_hf_name(k): v.detach().float().contiguous() for k, v in model.named_parameters()}
        for tied in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"):
            t[tied] = t["shared.weight"].clone()  # HF ties them; older versions read them from the file
        save_file(t, str(folder / "model.safetensors"), metadata={"format": "pt"})

    def load(self, folder: Path, meta: dict, device: str | torch.device) -> Seq2Seq:
        f = folder / "config.json"
        if not f.exists():
            raise CheckpointError(f"{f}: missing; not a Hugging Face model folder")
        model = Seq2Seq(from_hf_config(json.loads(f.read_text()), str(f)))
        w = folder / "model.safetensors"
        if not w.exists():
            raise CheckpointError(f"{w}: missing")
        hf = load_file(str(w))
        sd = {}
        for name, p in model.named_parameters():
            key = to_hf_name(name)
            if key not in hf or hf[key].shape != p.shape:
                raise CheckpointError(f"{w}: tensor {key!r} missing or of the wrong shape for {tuple(p.shape)}")
            sd[name] = hf[key].float()
        model.load_state_dict(sd, strict=True)
        return model.to(device).eval()


register_family(ModuleFamily("seq2seq-cmlm", Seq2Seq, Seq2SeqConfig))
register_family(T5Family())
