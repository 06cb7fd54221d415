"""Encoder-only transformer (BERT family): bidirectional attention, masked-LM, classification and tagging heads.

Read top to bottom: config -> embeddings -> attention (bidirectional, or causal on request) -> block -> encoder
-> heads (masked LM, sequence classifier, token tagger).

Why a BERT layout and not the decoder's Llama block with the causal mask removed: the lesson needs a *real*
pretrained encoder (the packaged all-MiniLM-L6-v2 is a `BertModel`) and logit parity with a `transformers`
class (`BertForMaskedLM`). Both fix the layout: learned absolute positions plus token-type embeddings,
post-norm LayerNorm residual blocks (`x = norm(x + f(x))`, Vaswani et al. 2017; Devlin et al. 2019), a GELU
MLP with biases, biased projections. What differs from `genforge.model.gpt` is the math the checkpoints fix,
not the idea: the attention is the same scaled dot product, only the mask differs (`causal=False`).

Parameter names are short and ours; `genforge/checkpoint/hf_bert.py` maps them one-to-one to HF BERT names.

Shapes: B batch, T tokens, C width, H heads, D head dim, V vocab, L labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.errors import ConfigError


@dataclass
class EncoderConfig:
    """Encoder shape. `depth` is the size dial: 0-valued fields are derived from it (as `GPTConfig`)."""

    vocab_size: int = 4096
    depth: int = 4  # number of blocks
    width: int = 0  # C; 0 -> 32 * depth
    head_dim: int = 32  # D; H = width // head_dim
    mlp_hidden: int = 0  # 0 -> 4 * width (BERT's ratio)
    max_seq_len: int = 512  # learned position table size
    type_vocab_size: int = 2  # BERT's sentence A/B embeddings (kept for checkpoint parity)
    norm_eps: float = 1e-12  # BERT's LayerNorm epsilon
    dropout: float = 0.0
    init_std: float = 0.02
    pad_id: int = 0

    def resolved(self) -> EncoderConfig:
        """A copy with every derived field filled in (what checkpoints store)."""
        c = EncoderConfig(**self.__dict__)
        if c.depth < 1:
            raise ConfigError(f"encoder.depth must be >= 1, got {c.depth}")
        c.width = c.width or 32 * c.depth
        if c.width % c.head_dim:
            raise ConfigError(f"encoder.width ({c.width}) must be a multiple of encoder.head_dim ({c.head_dim})")
        c.mlp_hidden = c.mlp_hidden or 4 * c.width
        return c

    @property
    def n_head(self) -> int:
        return (self.width or 32 * self.depth) // self.head_dim


class Embeddings(nn.Module):
    """word + position + token type, then LayerNorm: ids (B, T) -> (B, T, C)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position = nn.Embedding(cfg.max_seq_len, cfg.width)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.width)
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        T = ids.shape[1]
        if T > self.position.num_embeddings:
            raise ConfigError(f"sequence of {T} tokens is longer than the encoder's {self.position.num_embeddings} "
                              "positions; truncate the input or raise encoder.max_seq_len")
        pos = torch.arange(T, device=ids.device)[None]  # (1, T)
        types = token_type_ids if token_type_ids is not None else torch.zeros_like(ids)
        return self.drop(self.norm(self.word(ids) + self.position(pos) + self.token_type(types)))


class SelfAttention(nn.Module):
    """Multi-head self-attention that sees the whole sequence (causal=True restricts it to the past, for the test
    and the lesson that contrasts the two)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.width // cfg.head_dim, cfg.head_dim
        self.q_proj = nn.Linear(cfg.width, cfg.width)
        self.k_proj = nn.Linear(cfg.width, cfg.width)
        self.v_proj = nn.Linear(cfg.width, cfg.width)
        self.o_proj = nn.Linear(cfg.width, cfg.width)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, key_ok: torch.Tensor | None, causal: bool = False) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (p(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))  # (B, H, T, D) each
        mask = None
        if key_ok is not None:
            mask = key_ok[:, None, None, :]  # (B, 1, 1, T): padding keys hidden from every query
            if causal:
                mask = mask & torch.ones(T, T, dtype=torch.bool, device=x.device).tril()[None, None]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    """Post-norm residual block (BERT): x = norm(x + attn(x)); x = norm(x + mlp(x)), MLP = down(gelu(up(x)))."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.attn = SelfAttention(cfg)
        self.attn_norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.up = nn.Linear(cfg.width, cfg.mlp_hidden)
        self.down = nn.Linear(cfg.mlp_hidden, cfg.width)
        self.mlp_norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, key_ok: torch.Tensor | None, causal: bool = False) -> torch.Tensor:
        x = self.attn_norm(x + self.drop(self.attn(x, key_ok, causal)))
        return self.mlp_norm(x + self.drop(self.down(F.gelu(self.up(x)))))  # exact (erf) GELU, as BERT's "gelu"


class Encoder(nn.Module):
    """The trunk: ids (B, T) -> contextual hidden states (B, T, C). Every position sees every real token."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.config = cfg = cfg.resolved()
        self.embed = Embeddings(cfg)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        init_weights(self, cfg.init_std)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        """attention_mask (B, T): 1 real, 0 padding. causal=True turns this into a decoder's attention pattern."""
        x = self.embed(input_ids, token_type_ids)  # (B, T, C)
        key_ok = attention_mask.bool() if attention_mask is not None else None
        for block in self.layers:
            x = block(x, key_ok, causal)
        return x


def init_weights(module: nn.Module, std: float) -> None:
    """BERT's init: Normal(0, std) linears and embeddings, zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class MaskedLM(nn.Module):
    """Encoder + masked-LM head (dense -> GELU -> LayerNorm -> tied decoder + bias), as `BertForMaskedLM`:
    ids (B, T) -> logits (B, T, V) at every position (the loss reads only the masked ones)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.encoder = Encoder(cfg)
        self.config = cfg = self.encoder.config
        self.head_dense = nn.Linear(cfg.width, cfg.width)
        self.head_norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.head_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        init_weights(self, cfg.init_std)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, causal: bool = False,
                return_hidden: bool = False) -> torch.Tensor:
        h = self.encoder(input_ids, attention_mask, token_type_ids, causal)  # (B, T, C)
        if return_hidden:
            return h
        h = self.head_norm(F.gelu(self.head_dense(h)))
        return h @ self.encoder.embed.word.weight.T + self.head_bias  # (B, T, V), decoder tied to the input table


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens (B, T, C) -> (B, C): the sentence-transformers pooling MiniLM was trained with."""
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class _EncoderWithHead(nn.Module):
    """An encoder plus one linear `classifier` over its hidden states (the heads below differ only in forward)."""

    def __init__(self, encoder: Encoder, n_labels: int):
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        self.classifier = nn.Linear(encoder.config.width, n_labels)
        nn.init.normal_(self.classifier.weight, 0.0, encoder.config.init_std)
        nn.init.zeros_(self.classifier.bias)


class SequenceClassifier(_EncoderWithHead):
    """Encoder + mean pooling + linear: ids (B, T) -> label logits (B, L) (topic, sentiment)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        h = self.encoder(input_ids, attention_mask, token_type_ids)  # (B, T, C)
        return self.classifier(mean_pool(h, attention_mask))  # (B, L)


class TokenTagger(_EncoderWithHead):
    """Encoder + per-token linear: ids (B, T) -> tag logits (B, T, L) (entity tagging, BIO labels)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(input_ids, attention_mask))  # (B, T, L)


def encoder_params(cfg: EncoderConfig) -> int:
    """Parameter count of a MaskedLM of this shape without building it (for matched-size comparisons)."""
    c = cfg.resolved()
    C, F_ = c.width, c.mlp_hidden
    block = 4 * (C * C + C) + 2 * C * F_ + F_ + C + 4 * C
    embed = (c.vocab_size + c.max_seq_len + c.type_vocab_size) * C + 2 * C
    return embed + c.depth * block + C * C + C + 2 * C + c.vocab_size


__all__ = ["Embeddings", "Encoder", "EncoderConfig", "MaskedLM", "SequenceClassifier", "TokenTagger",
           "encoder_params", "init_weights", "mean_pool"]
