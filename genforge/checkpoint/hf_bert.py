"""The Hugging Face BERT family: `MaskedLM` checkpoints that `transformers` loads as `BertForMaskedLM`, and
BERT-family folders (the packaged all-MiniLM-L6-v2, any `BertModel`/`BertForMaskedLM`) read into our `Encoder`.

Files: `config.json` (BERT fields, `architectures: ["BertForMaskedLM"]`), `model.safetensors` (HF names), the
core's `genforge.json`, and our tokenizer files when given (the [MASK] id sits in genforge.json: our byte-level
tokenizer has no [MASK] string, so the masked-LM appends one id after its vocabulary).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from genforge.checkpoint.core import register_family
from genforge.errors import CheckpointError
from genforge.io import write_json
from genforge.model.encoder import Encoder, EncoderConfig, MaskedLM
from genforge.tokenizer import Tokenizer

# ours -> HF BertForMaskedLM (regex on the parameter name; {0} the layer index)
_LAYER = {
    "attn.q_proj": "attention.self.query", "attn.k_proj": "attention.self.key", "attn.v_proj": "attention.self.value",
    "attn.o_proj": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
    "up": "intermediate.dense", "down": "output.dense", "mlp_norm": "output.LayerNorm",
}
_EMBED = {"word": "word_embeddings", "position": "position_embeddings", "token_type": "token_type_embeddings",
          "norm": "LayerNorm"}
_HEAD = {"head_dense": "cls.predictions.transform.dense", "head_norm": "cls.predictions.transform.LayerNorm"}


def to_hf_name(name: str) -> str:
    """Our parameter name (e.g. 'encoder.layers.0.attn.q_proj.weight') -> HF BertForMaskedLM's."""
    if name == "head_bias":
        return "cls.predictions.bias"
    m = re.fullmatch(r"(head_dense|head_norm)\.(weight|bias)", name)
    if m:
        return f"{_HEAD[m[1]]}.{m[2]}"
    m = re.fullmatch(r"encoder\.embed\.(\w+)\.(weight|bias)", name)
    if m:
        return f"bert.embeddings.{_EMBED[m[1]]}.{m[2]}"
    m = re.fullmatch(r"encoder\.layers\.(\d+)\.([\w.]+)\.(weight|bias)", name)
    if m and m[2] in _LAYER:
        return f"bert.encoder.layer.{m[1]}.{_LAYER[m[2]]}.{m[3]}"
    raise CheckpointError(f"no Hugging Face BERT name for parameter {name!r}")


def to_hf_config(cfg: EncoderConfig, architecture: str = "BertForMaskedLM") -> dict:
    c = cfg.resolved()
    return {
        "architectures": [architecture], "model_type": "bert", "vocab_size": c.vocab_size,
        "hidden_size": c.width, "num_hidden_layers": c.depth, "num_attention_heads": c.width // c.head_dim,
        "intermediate_size": c.mlp_hidden, "hidden_act": "gelu", "max_position_embeddings": c.max_seq_len,
        "type_vocab_size": c.type_vocab_size, "layer_norm_eps": c.norm_eps, "hidden_dropout_prob": c.dropout,
        "attention_probs_dropout_prob": c.dropout, "initializer_range": c.init_std, "pad_token_id": c.pad_id,
        "position_embedding_type": "absolute", "tie_word_embeddings": True,
    }


def from_hf_config(hf: dict, where: str = "config.json") -> EncoderConfig:
    """An EncoderConfig from a BERT config.json (absolute positions and GELU only: what our layout computes)."""
    if hf.get("model_type") not in ("bert", None):
        raise CheckpointError(f"{where}: model_type {hf.get('model_type')!r} is not BERT; only BERT-family "
                              "folders (BertModel, BertForMaskedLM, MiniLM) map onto genforge's encoder")
    if hf.get("hidden_act", "gelu") != "gelu" or hf.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"{where}: hidden_act={hf.get('hidden_act')!r}, position_embedding_type="
                              f"{hf.get('position_embedding_type')!r}; genforge's encoder computes gelu + absolute")
    width, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    return EncoderConfig(vocab_size=int(hf["vocab_size"]), depth=int(hf["num_hidden_layers"]), width=width,
                         head_dim=width // heads, mlp_hidden=int(hf["intermediate_size"]),
                         max_seq_len=int(hf.get("max_position_embeddings", 512)),
                         type_vocab_size=int(hf.get("type_vocab_size", 2)),
                         norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
                         init_std=float(hf.get("initializer_range", 0.02)), pad_id=int(hf.get("pad_token_id") or 0))


def _legacy(name: str) -> str:
    """Old BERT files name LayerNorm parameters gamma/beta."""
    return name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")


def load_bert_state(folder: Path, model: nn.Module) -> None:
    """Fill `model` (a MaskedLM, or a bare Encoder) from the folder's HF BERT weights; strict on the encoder."""
    f = folder / "model.safetensors"
    if not f.exists():
        raise CheckpointError(f"{f}: missing; a BERT folder needs model.safetensors (convert .bin files first)")
    hf = {_legacy(k): v for k, v in load_file(str(f)).items()}
    # BertModel files have no "bert." prefix; BertForMaskedLM files do
    hf = {(k if k.startswith(("bert.", "cls.")) else "bert." + k): v for k, v in hf.items()}
    prefix = "encoder." if isinstance(model, Encoder) else ""
    sd = {}
    for name, p in model.named_parameters():
        key = to_hf_name(prefix + name if prefix else name)
        if key not in hf:
            raise CheckpointError(f"{f}: tensor {key!r} is missing (needed for {name}); is this a BERT checkpoint "
                                  "with the same shape as its config.json?")
        if hf[key].shape != p.shape:
            raise CheckpointError(f"{f}: {key} has shape {tuple(hf[key].shape)}, config.json implies {tuple(p.shape)}")
        sd[name] = hf[key].float()
    model.load_state_dict(sd, strict=True)


def read_hf_config(folder: Path) -> dict:
    f = folder / "config.json"
    if not f.exists():
        raise CheckpointError(f"{f}: missing; not a Hugging Face model folder")
    return json.loads(f.read_text())


class BertFamily:
    """`MaskedLM` <-> a Hugging Face `BertForMaskedLM` folder."""

    name = "bert"

    def owns(self, model: nn.Module) -> bool:
        return isinstance(model, MaskedLM)

    def write(self, folder: Path, model: nn.Module, tokenizer: Tokenizer | None) -> None:
        assert isinstance(model, MaskedLM)
        write_json(folder / "config.json", to_hf_config(model.config))
        tensors = {to_hf_name(k): v.detach().float().contiguous() for k, v in model.named_parameters()}
        # HF ties the decoder to the word embeddings; older versions still look for the decoder's own keys
        tensors["cls.predictions.decoder.weight"] = tensors["bert.embeddings.word_embeddings.weight"].clone()
        tensors["cls.predictions.decoder.bias"] = tensors["cls.predictions.bias"].clone()
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})

    def load(self, folder: Path, meta: dict, device: str | torch.device) -> MaskedLM:
        cfg = from_hf_config(read_hf_config(folder), where=str(folder / "config.json"))
        if "model" in meta:
            cfg.dropout = meta["model"].get("dropout", cfg.dropout)
        model = MaskedLM(cfg)
        load_bert_state(folder, model)
        return model.to(device).eval()


register_family(BertFamily())


def load_bert_encoder(folder: str | Path, device: str | torch.device = "cpu") -> Encoder:
    """The encoder of a BERT-family folder (e.g. `genforge.rag.embed.minilm_model_dir()`): weights only, no head."""
    folder = Path(folder)
    model = Encoder(from_hf_config(read_hf_config(folder), where=str(folder / "config.json")))
    load_bert_state(folder, model)
    return model.to(device).eval()
