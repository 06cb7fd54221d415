"""Encoder-decoder transformer (T5 layout, Raffel et al. 2020): a bidirectional encoder reads the source, a decoder
writes the target attending to itself (causally) and to the encoder's states (cross-attention).

Read top to bottom: config -> relative position buckets -> attention (self or cross, with a decode cache) ->
blocks -> model -> decode cache.

The layout is T5's (v1.1 feed-forward), so `transformers.T5ForConditionalGeneration` loads our checkpoints with
equal logits (`genforge/checkpoint/hf_t5.py`): pre-norm RMSNorm blocks and a SwiGLU MLP (T5's "gated-silu"; the
norm and MLP are `genforge.model.gpt`'s, reused), no absolute positions but a learned bias per head and
*bucketed relative distance* added to the attention scores (computed once per stack and shared by its layers),
no 1/sqrt(D) score scaling (T5 folds it into the init), tied input/output embeddings with the decoder output
scaled by C^-0.5 before the tied head.

`decoder_causal=False` makes the decoder see the whole target (bidirectional relative buckets, no causal mask):
the conditional masked LM of mask-predict (Ghazvininejad et al. 2019), which also needs the target length,
predicted from the mean-pooled encoder states by `length_head` (`length_classes` > 0). It also adds learned absolute
position embeddings to the decoder input (`dec_pos`): at mask-predict's first step every input is [MASK], and
relative biases alone cannot tell identical inputs apart (all positions would predict the same token; measured).
That variant has no `transformers` counterpart.

Shapes: B batch, S source tokens, T target tokens, C width, H heads, D head dim, V vocab.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.errors import ConfigError
from genforge.model.gpt import MLP, RMSNorm


@dataclass
class Seq2SeqConfig:
    """Shape of an encoder-decoder. `depth` is the size dial (blocks per stack); 0-valued fields are derived."""

    vocab_size: int = 4096
    depth: int = 2  # encoder blocks
    decoder_depth: int = 0  # 0 -> depth
    width: int = 0  # C; 0 -> 32 * depth
    head_dim: int = 32
    mlp_hidden: int = 0  # SwiGLU hidden; 0 -> 8/3 * width rounded up to a multiple of 32 (as GPTConfig)
    num_buckets: int = 32  # relative-position buckets (T5)
    max_distance: int = 128  # distances beyond this share the last bucket
    max_seq_len: int = 512  # longest source or target accepted
    norm_eps: float = 1e-6
    dropout: float = 0.0
    pad_id: int = 0
    decoder_start_id: int = 0  # T5 starts decoding from the pad id
    decoder_causal: bool = True  # False: a conditional masked LM (mask-predict)
    length_classes: int = 0  # > 0: a target-length head predicting lengths 0 .. length_classes-1
    mlp_act: str = "silu"  # the reused gpt.py MLP's activation (T5 "gated-silu")
    mlp_bias: bool = False  # T5's feed-forward has no biases

    def resolved(self) -> Seq2SeqConfig:
        c = Seq2SeqConfig(**self.__dict__)
        if c.depth < 1:
            raise ConfigError(f"seq2seq.depth must be >= 1, got {c.depth}")
        c.decoder_depth = c.decoder_depth or c.depth
        c.width = c.width or 32 * c.depth
        if c.width % c.head_dim:
            raise ConfigError(f"seq2seq.width ({c.width}) must be a multiple of seq2seq.head_dim ({c.head_dim})")
        c.mlp_hidden = c.mlp_hidden or 32 * math.ceil(8 * c.width / 3 / 32)
        return c

    @property
    def n_head(self) -> int:
        return (self.width or 32 * self.depth) // self.head_dim


def relative_bucket(rel: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bucket of each relative distance rel = key_pos - query_pos (T5, Raffel et al. 2020, sec. 2.1).

    Half the buckets (per direction when bidirectional) hold exact small distances; the rest cover distances up
    to max_distance on a log scale; farther distances share the last bucket. A causal decoder only sees keys
    at or before the query, so it spends all buckets on rel <= 0.
    """
    buckets = torch.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (rel > 0).long() * num_buckets
        dist = rel.abs()
    else:
        dist = (-rel).clamp(min=0)
    exact = num_buckets // 2
    # log-spaced buckets for dist >= exact (clamped to 1 below only to keep log finite where unused)
    far = exact + (torch.log(dist.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                   * (num_buckets - exact)).long()
    far = far.clamp(max=num_buckets - 1)
    return buckets + torch.where(dist < exact, dist, far)


class Attention(nn.Module):
    """Multi-head attention without score scaling (T5): self-attention when `kv` is None, else cross-attention."""

    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.width // cfg.head_dim, cfg.head_dim
        inner = self.n_head * self.head_dim
        self.q = nn.Linear(cfg.width, inner, bias=False)
        self.k = nn.Linear(cfg.width, inner, bias=False)
        self.v = nn.Linear(cfg.width, inner, bias=False)
        self.o = nn.Linear(inner, cfg.width, bias=False)
        self.dropout = cfg.dropout

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                past: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, tuple]:
        """x (B, T, C); bias (B or 1, H, T, Tk) additive scores (position bias + -inf mask); kv: precomputed
        cross-attention keys/values (B, H, S, D); past: self-attention keys/values of earlier positions.
        Returns the output (B, T, C) and the keys/values used (for the cache)."""
        B, T, _ = x.shape
        q = self.heads(self.q(x))
        if kv is None:
            k, v = self.heads(self.k(x)), self.heads(self.v(x))
            if past is not None:
                k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)  # (B, H, t+T, D)
        else:
            k, v = kv
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=1.0,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, H, T, D)
        return self.o(y.transpose(1, 2).reshape(B, T, -1)), (k, v)

    def project_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.k(memory)), self.heads(self.v(memory))


class EncoderBlock(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.self_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.mlp = MLP(cfg)  # gate_proj/up_proj/down_proj = T5's wi_0/wi_1/wo

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.self_norm(x), bias)[0]
        return x + self.mlp(self.mlp_norm(x))


class DecoderBlock(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.self_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.cross_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.cross_attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, self_bias: torch.Tensor, cross_bias: torch.Tensor,
                cross_kv: tuple[torch.Tensor, torch.Tensor], past: tuple | None) -> tuple[torch.Tensor, tuple]:
        h, kv = self.self_attn(self.self_norm(x), self_bias, past=past)
        x = x + h
        x = x + self.cross_attn(self.cross_norm(x), cross_bias, kv=cross_kv)[0]
        return x + self.mlp(self.mlp_norm(x)), kv


class DecodeCache:
    """Per-layer self-attention keys/values of the target so far and the cross-attention keys/values of the
    source (computed once). `reorder` follows beam search's choice of parent beams."""

    def __init__(self, cross: list[tuple[torch.Tensor, torch.Tensor]], memory_ok: torch.Tensor):
        self.cross, self.memory_ok = cross, memory_ok  # memory_ok (B, S) bool
        self.self_kv: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(cross)
        self.pos = 0

    def reorder(self, index: torch.Tensor) -> None:
        self.cross = [(k[index], v[index]) for k, v in self.cross]
        self.self_kv = [None if kv is None else (kv[0][index], kv[1][index]) for kv in self.self_kv]
        self.memory_ok = self.memory_ok[index]


class Seq2Seq(nn.Module):
    """Encoder-decoder: (source ids (B, S), target-input ids (B, T)) -> next-token logits (B, T, V)."""

    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.config = cfg = cfg.resolved()
        H = cfg.width // cfg.head_dim
        self.shared = nn.Embedding(cfg.vocab_size, cfg.width)
        self.enc_rel_bias = nn.Embedding(cfg.num_buckets, H)
        self.dec_rel_bias = nn.Embedding(cfg.num_buckets, H)
        self.enc_layers = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.depth))
        self.enc_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.dec_layers = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.decoder_depth))
        self.dec_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.length_head = nn.Linear(cfg.width, cfg.length_classes) if cfg.length_classes else None
        self.dec_pos = None if cfg.decoder_causal else nn.Embedding(cfg.max_seq_len, cfg.width)
        self.drop = nn.Dropout(cfg.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """T5's init (Mesh TensorFlow): unit-variance embeddings, projections scaled by fan-in, unit norms."""
        C, H, D = self.config.width, self.config.n_head, self.config.head_dim
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p) if "norm" in name else nn.init.zeros_(p)
            elif name == "shared.weight":
                nn.init.normal_(p, 0.0, 1.0)
            elif name.endswith(".q.weight"):
                nn.init.normal_(p, 0.0, (C * D) ** -0.5)
            elif name.endswith(".o.weight"):
                nn.init.normal_(p, 0.0, (H * D) ** -0.5)
            elif name.endswith("down_proj.weight"):
                nn.init.normal_(p, 0.0, self.config.mlp_hidden ** -0.5)
            else:
                nn.init.normal_(p, 0.0, C ** -0.5)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _bias(self, table: nn.Embedding, q_pos: torch.Tensor, k_pos: torch.Tensor, bidirectional: bool
              ) -> torch.Tensor:
        """Relative position bias (1, H, Tq, Tk) for absolute query/key positions."""
        rel = k_pos[None, :] - q_pos[:, None]  # (Tq, Tk)
        b = relative_bucket(rel, bidirectional, self.config.num_buckets, self.config.max_distance)
        return table(b).permute(2, 0, 1)[None]

    def _check_len(self, n: int, what: str) -> None:
        if n > self.config.max_seq_len:
            raise ConfigError(f"{what} of {n} tokens is longer than seq2seq.max_seq_len ({self.config.max_seq_len}); "
                              "truncate it or raise the limit")

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Source ids (B, S) -> encoder states (B, S, C) (after the final norm)."""
        B, S = input_ids.shape
        self._check_len(S, "source")
        pos = torch.arange(S, device=input_ids.device)
        bias = self._bias(self.enc_rel_bias, pos, pos, True)  # (1, H, S, S)
        if attention_mask is not None:
            bias = bias + _neg_inf(attention_mask.bool())[:, None, None, :]  # padding keys hidden
        x = self.drop(self.shared(input_ids))
        for block in self.enc_layers:
            x = block(x, bias)
        return self.drop(self.enc_norm(x))

    def start_cache(self, memory: torch.Tensor, memory_mask: torch.Tensor | None = None) -> DecodeCache:
        ok = memory_mask.bool() if memory_mask is not None else torch.ones(memory.shape[:2], dtype=torch.bool,
                                                                           device=memory.device)
        return DecodeCache([blk.cross_attn.project_kv(memory) for blk in self.dec_layers], ok)

    def decode(self, decoder_input_ids: torch.Tensor, memory: torch.Tensor | None = None,
               memory_mask: torch.Tensor | None = None, cache: DecodeCache | None = None,
               decoder_mask: torch.Tensor | None = None, return_hidden: bool = False) -> torch.Tensor:
        """Logits (B, T, V) for target inputs (B, T) placed at positions [cache.pos, cache.pos + T).

        Without a cache, pass the encoder `memory` (B, S, C) (and its mask); with one, the cache holds it and is
        advanced. decoder_mask (B, T) hides padded target keys (needed by the bidirectional decoder only).
        """
        if cache is None:
            if memory is None:
                raise ConfigError("Seq2Seq.decode needs the encoder memory or a DecodeCache from start_cache()")
            cache_ = self.start_cache(memory, memory_mask)
        else:
            cache_ = cache
        B, T = decoder_input_ids.shape
        past = cache_.pos
        self._check_len(past + T, "target")
        dev = decoder_input_ids.device
        q_pos, k_pos = torch.arange(past, past + T, device=dev), torch.arange(past + T, device=dev)
        causal = self.config.decoder_causal
        self_bias = self._bias(self.dec_rel_bias, q_pos, k_pos, bidirectional=not causal)  # (1, H, T, past+T)
        if causal:
            self_bias = self_bias + _neg_inf(k_pos[None, :] <= q_pos[:, None])[None, None]
        if decoder_mask is not None:
            self_bias = self_bias + _neg_inf(decoder_mask.bool())[:, None, None, :]
        cross_bias = _neg_inf(cache_.memory_ok)[:, None, None, :]  # (B, 1, 1, S)
        x = self.shared(decoder_input_ids)
        if self.dec_pos is not None:
            x = x + self.dec_pos(q_pos)[None]
        x = self.drop(x)
        for i, block in enumerate(self.dec_layers):
            x, kv = block(x, self_bias, cross_bias, cache_.cross[i], cache_.self_kv[i])
            if cache is not None:
                cache_.self_kv[i] = kv
        if cache is not None:
            cache.pos = past + T
        x = self.drop(self.dec_norm(x))
        if return_hidden:
            return x
        return (x * self.config.width ** -0.5) @ self.shared.weight.T  # tied head, T5's output scaling

    def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None, decoder_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(decoder_input_ids, self.encode(input_ids, attention_mask), attention_mask,
                           decoder_mask=decoder_mask)

    def length_logits(self, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """Target-length logits (B, length_classes) from the mean-pooled encoder states (mask-predict)."""
        if self.length_head is None:
            raise ConfigError("this Seq2Seq has no length head; build it with length_classes > 0")
        m = memory_mask.unsqueeze(-1).to(memory.dtype)
        return self.length_head((memory * m).sum(1) / m.sum(1).clamp(min=1))


def _neg_inf(ok: torch.Tensor) -> torch.Tensor:
    """0 where ok, -inf elsewhere (an additive attention mask)."""
    return torch.zeros(ok.shape, device=ok.device).masked_fill(~ok, float("-inf"))


def shift_right(labels: torch.Tensor, start_id: int, pad_id: int, ignore: int = -100) -> torch.Tensor:
    """Teacher-forcing decoder inputs from labels (B, T): [start, y_0 .. y_{T-2}], ignored labels read as pad."""
    x = labels.roll(1, dims=1)
    x[:, 0] = start_id
    return x.masked_fill(x == ignore, pad_id)
