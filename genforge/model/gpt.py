"""The genforge transformer: a decoder-only, Llama-style language model in one file.

Read top to bottom: config -> RMSNorm -> RoPE -> KV caches -> attention (grouped-query) -> SwiGLU MLP
-> block -> model. The model owns its decode step too: `GPT.forward` with a `KVCache` (training,
prefill) and `GPT.decode_step` with a `StaticKV` (one token per row, fixed shapes, what the
inference engine compiles) run the same blocks; only how attention reads the cache differs.

Module and parameter names follow Hugging Face's `LlamaForCausalLM` (q_proj, gate_proj,
input_layernorm, ...) so that checkpoints map one-to-one (see `genforge/model/hf.py`) and PEFT
target names mean the same thing in both worlds.

References: RMSNorm (Zhang & Sennrich 2019), RoPE (Su et al. 2021, the "rotate half" layout
that HF Llama uses), SwiGLU (Shazeer 2020), grouped-query attention (Ainslie et al. 2023).

Shapes: B batch, T new tokens, S = cached + new tokens, C width, H query heads, K kv heads,
D head dim, V vocab.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.errors import ConfigError


@dataclass
class GPTConfig:
    """Model shape. `depth` is the one size dial: 0-valued fields are derived from it."""

    vocab_size: int = 4096
    depth: int = 4  # number of transformer blocks
    width: int = 0  # residual width C; 0 -> 32 * depth (depth 4 -> 128, as measured in DESIGN.md)
    head_dim: int = 32  # D; H = width // head_dim
    n_kv_head: int = 0  # K; 0 -> H // 2 when H is even (grouped-query), else H
    mlp_hidden: int = 0  # SwiGLU hidden; 0 -> 8/3 * width rounded up to a multiple of 32
    max_seq_len: int = 512  # longest context the RoPE tables and KV cache allow
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True  # share the input embedding and output head (saves V*C params)
    dropout: float = 0.0
    init_std: float = 0.02

    def resolved(self) -> GPTConfig:
        """A copy with every derived field filled in (this is what checkpoints store)."""
        c = GPTConfig(**self.__dict__)
        if c.depth < 1:
            raise ConfigError(f"model.depth must be >= 1, got {c.depth}")
        c.width = c.width or 32 * c.depth
        if c.width % c.head_dim:
            raise ConfigError(f"model.width ({c.width}) must be a multiple of model.head_dim ({c.head_dim})")
        n_head = c.width // c.head_dim
        if not c.n_kv_head:
            c.n_kv_head = n_head // 2 if n_head % 2 == 0 else n_head
        if n_head % c.n_kv_head:
            raise ConfigError(f"model.n_kv_head ({c.n_kv_head}) must divide the number of heads ({n_head})")
        c.mlp_hidden = c.mlp_hidden or 32 * math.ceil(8 * c.width / 3 / 32)
        return c

    @property
    def n_head(self) -> int:
        return (self.width or 32 * self.depth) // self.head_dim

    def default_lr(self) -> float:
        """Peak AdamW learning rate for this width (smaller models tolerate larger steps).

        3e-3 at width 128 (measured good on the tiny world), scaled by 1/sqrt(width) beyond it.
        """
        return 3e-3 * math.sqrt(128 / (self.width or 32 * self.depth))


class RMSNorm(nn.Module):
    """y = x / rms(x) * g, computed in fp32 as HF Llama does (so logits match to 1e-5)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables of shape (max_len, D) for rotary embeddings (Su et al. 2021, eq. 34)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))  # (D/2,)
    freqs = torch.outer(torch.arange(max_len).float(), inv_freq)  # (max_len, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (max_len, D): the "rotate half" layout
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, heads, T, D) by position; cos/sin are (B, 1, T, D)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos + rotated * sin


class KVCache:
    """A preallocated key/value cache for all layers.

    k, v: (L, B, K, max_len, D). `pos` counts the positions already written; the model advances
    it after each forward. Preallocation keeps decode free of reallocation and lets a compiled
    decode step see fixed shapes.
    """

    def __init__(self, cfg: GPTConfig, batch_size: int, max_len: int | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        cfg = cfg.resolved()
        self.max_len = max_len or cfg.max_seq_len
        shape = (cfg.depth, batch_size, cfg.n_kv_head, self.max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, K, T, D) at [pos, pos+T) and return all keys/values so far (B, K, S, D)."""
        t = k.shape[2]
        if self.pos + t > self.max_len:
            raise ConfigError(f"KV cache is full: {self.pos} + {t} tokens exceed its {self.max_len} positions; "
                              "raise model.max_seq_len or generate fewer tokens")
        self.k[layer, :, :, self.pos:self.pos + t] = k
        self.v[layer, :, :, self.pos:self.pos + t] = v
        return self.k[layer, :, :, :self.pos + t], self.v[layer, :, :, :self.pos + t]

    def crop(self, pos: int) -> None:
        """Forget everything from `pos` on (used by speculative decoding to drop rejected tokens)."""
        self.pos = min(self.pos, pos)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep only batch rows `index` (used when some sequences finish early)."""
        self.k = self.k[:, index]
        self.v = self.v[:, index]


class StaticKV:
    """A static decode step's view of a preallocated cache: one new token per row, fixed shapes.

    k, v: (L, B, K, M, D) the cache (e.g. a `KVCache`'s tensors); col (1,) the column the new token
    goes to; key_ok (B, M) bool, False on left padding. Every step attends over all M columns
    with a mask, so its shapes never change and torch.compile sees one graph per (B, M).

    pure=False writes the new key/value into column `col` in place (the eager step). pure=True
    only reads the cache and collects the new keys/values in `new_k`/`new_v` for the caller to
    write: a compiled graph that mutates slices of its inputs makes inductor clone the whole cache
    every step (measured: 2x slower than eager at batch 8). The new key then joins the softmax
    separately: softmax([q.K_cache (masked to columns < col), q.k_new]) (one extra logit).
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor, col: torch.Tensor, key_ok: torch.Tensor, pure: bool = False):
        self.k, self.v, self.col, self.pure = k, v, col, pure
        cols = torch.arange(k.shape[3], device=k.device)
        # keys visible to the new query: real columns before col, plus col itself unless pure (added separately)
        visible = cols < col if pure else cols <= col
        self.mask = (key_ok & visible)[:, None, None, :]  # (B, 1, 1, M)
        self.new_k: list[torch.Tensor] = []
        self.new_v: list[torch.Tensor] = []

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention output (B, H, 1, D) of the new queries q (B, H, 1, D) with new k, v (B, K, 1, D)."""
        B, H, _, D = q.shape
        K = k.shape[1]
        # grouped-query attention without repeating the cache: the H/K query heads that share a kv head
        # become H/K "query positions" of that head (all at the same position, so one mask serves)
        q = q.reshape(B, K, H // K, D)  # (B, K, H/K, D)
        k_cache, v_cache = self.k[layer], self.v[layer]  # (B, K, M, D)
        if not self.pure:
            k_cache.index_copy_(2, self.col, k)
            v_cache.index_copy_(2, self.col, v)
            y = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=self.mask)  # (B, K, H/K, D)
        else:
            M = k_cache.shape[2]
            q = q * D ** -0.5
            s_old = (q @ k_cache.transpose(-1, -2)).masked_fill(~self.mask, float("-inf"))  # (B, K, H/K, M)
            s_new = (q * k).sum(-1, keepdim=True)  # (B, K, H/K, 1)
            w = torch.softmax(torch.cat([s_old, s_new], -1).float(), -1).to(q.dtype)  # (B, K, H/K, M+1)
            y = w[..., :M] @ v_cache + w[..., M:] * v  # (B, K, H/K, D)
            self.new_k.append(k)
            self.new_v.append(v)
        return y.reshape(B, H, 1, D)


class Attention(nn.Module):
    """Multi-head causal self-attention with grouped-query heads (K kv heads shared by H/K queries).

    The one attention of genforge: training and prefill pass a `KVCache` (or none), the engine's
    static decode step passes a `StaticKV`; both share the projections, RoPE and output below.
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.width // cfg.head_dim, cfg.n_kv_head, cfg.head_dim
        self.q_proj = nn.Linear(cfg.width, self.n_head * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.width, self.n_kv_head * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.width, self.n_kv_head * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, cfg.width, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | StaticKV | None, layer: int) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if isinstance(cache, StaticKV):
            y = cache.attend(layer, q, k, v)  # (B, H, 1, D)
        else:
            if cache is not None:
                k, v = cache.update(layer, k, v)  # (B, K, S, D)
            # grouped-query: each kv head serves H/K consecutive query heads (the grouping of HF's repeat_kv);
            # enable_gqa lets SDPA broadcast instead of materialising H copies of the keys and values
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                dropout_p=self.dropout if self.training else 0.0,
                enable_gqa=self.n_kv_head != self.n_head)  # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x)) (Shazeer 2020)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.width, cfg.mlp_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.width, cfg.mlp_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_hidden, cfg.width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.width, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.width, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | StaticKV | None, layer: int) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class GPT(nn.Module):
    """Decoder-only transformer: token ids (B, T) -> next-token logits (B, T, V)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg = cfg.resolved()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.width)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.width, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # (max_len, D)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights; residual output projections scaled by 1/sqrt(2*depth) (GPT-2)."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.depth))
            else:
                nn.init.normal_(p, 0.0, std)

    def num_params(self, trainable_only: bool = False) -> int:
        """Parameter count (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def forward(self, input_ids: torch.Tensor | None = None, *, cache: KVCache | None = None,
                position_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, return_hidden: bool = False) -> torch.Tensor:
        """Logits (B, T, V) for ids (B, T), or the final hidden states (B, T, C) if return_hidden.

        cache: a KVCache; the T tokens are placed at positions [cache.pos, cache.pos+T).
        position_ids: (B, T) RoPE positions (default: consecutive from the cache position).
        attention_mask: (B, S) with 1 for real tokens and 0 for padding, over all S cached+new
            positions; needed for left-padded batches.
        inputs_embeds: (B, T, C) used instead of looking up ids (prompt tuning prepends here).
        """
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        B, T, _ = x.shape
        past = cache.pos if cache is not None else 0
        S = past + T
        if S > self.config.max_seq_len:
            raise ConfigError(f"sequence of {S} tokens is longer than the model's context "
                              f"({self.config.max_seq_len}); shorten the input or raise model.max_seq_len")
        if position_ids is None:
            position_ids = torch.arange(past, S, device=x.device).unsqueeze(0).expand(B, T)
        cos, sin = self._rope(position_ids, x.dtype)  # (B, 1, T, D) each
        mask = None
        if attention_mask is not None or (past > 0 and T > 1):
            # explicit boolean mask (B, 1, T, S): query at absolute position past+i sees keys j <= past+i
            q_pos = torch.arange(past, S, device=x.device)
            mask = (torch.arange(S, device=x.device)[None, :] <= q_pos[:, None])[None, None]  # (1, 1, T, S)
            if attention_mask is not None:
                mask = mask & attention_mask[:, None, None, :S].bool()  # hide padding keys
                # a fully padded query row would give NaN; let it see itself (its output is ignored)
                mask = mask | _diag(T, S, x.device)
        for i, block in enumerate(self.layers):
            x = block(x, cos, sin, mask, cache, i)
        if cache is not None:
            cache.pos = S
        x = self.norm(x)
        return x if return_hidden else self.lm_head(x)

    def _rope(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE cos, sin (B, 1, T, D) at position_ids (B, T)."""
        return (self.rope_cos[position_ids].unsqueeze(1).to(dtype),
                self.rope_sin[position_ids].unsqueeze(1).to(dtype))

    def decode_step(self, tok: torch.Tensor, pos: torch.Tensor, static: StaticKV) -> torch.Tensor:
        """One static-shape decode step: next-token logits (B, V) for tok (B, 1) at RoPE positions pos (B, 1).

        The same blocks as `forward`, attending through `static` (see `StaticKV`): no mask building,
        no cache bookkeeping, identical shapes every step, so torch.compile can freeze it into one graph.
        """
        x = self.embed_tokens(tok)  # (B, 1, C)
        cos, sin = self._rope(pos, x.dtype)  # (B, 1, 1, D)
        for i, block in enumerate(self.layers):
            x = block(x, cos, sin, None, static, i)
        return self.lm_head(self.norm(x))[:, -1]  # (B, V)


def _diag(T: int, S: int, device: torch.device) -> torch.Tensor:
    """(1, 1, T, S) mask with query i allowed to see key S-T+i (itself)."""
    d = torch.zeros(T, S, dtype=torch.bool, device=device)
    d[torch.arange(T), torch.arange(S - T, S)] = True
    return d[None, None]
