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

Imported checkpoints of other families switch on a few small, commented branches (all off by
default, so genforge's own model is the plain path): RoPE scaling (linear, dynamic NTK, YaRN,
Llama 3), projection biases (Llama, Qwen2), sliding-window attention (Mistral, Gemma 2), q/k
RMSNorm (Qwen3), Gemma's (1 + w) norms, scaled embeddings and GeGLU, Gemma 2's sandwich norms and
soft-capping. Phi-3's fused projections are split at import (`genforge/model/hf.py`).

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
    # --- variants of imported families (Hugging Face names in brackets); the defaults are genforge's model ---
    n_head: int = 0  # H; 0 -> width // head_dim (Gemma and Qwen3 checkpoints have H * D != width)
    rope_scaling: dict | None = None  # HF rope_parameters: rope_type linear | dynamic | yarn | llama3 (+ factor...)
    qkv_bias: bool = False  # bias on q/k/v projections (Qwen2; Llama attention_bias)
    o_bias: bool = False  # bias on the attention output projection (Llama attention_bias)
    mlp_bias: bool = False  # bias on gate/up/down projections (Llama mlp_bias)
    sliding_window: int = 0  # W > 0: a query sees only the last W positions, itself included (Mistral, Gemma 2)
    sliding_layers: list[int] | None = None  # which layers slide when sliding_window > 0; None -> all
    qk_norm: bool = False  # RMSNorm over each head's q and k before RoPE (Qwen3)
    norm_offset: float = 0.0  # RMSNorm scales by (offset + w): Gemma stores w around 0 and uses 1 + w
    embed_scale: bool = False  # multiply token embeddings by sqrt(width) (Gemma)
    mlp_act: str = "silu"  # gate activation: silu (SwiGLU) | gelu_tanh (GeGLU, Gemma)
    sandwich_norm: bool = False  # a norm before AND after each sublayer (Gemma 2)
    attn_scale: float = 0.0  # softmax scale; 0 -> head_dim ** -0.5 (Gemma 2: query_pre_attn_scalar ** -0.5)
    attn_softcap: float = 0.0  # c > 0: attention scores s -> c * tanh(s / c) (Gemma 2)
    final_softcap: float = 0.0  # c > 0: the same on the output logits (Gemma 2)

    def resolved(self) -> GPTConfig:
        """A copy with every derived field filled in (this is what checkpoints store)."""
        c = GPTConfig(**self.__dict__)
        if c.depth < 1:
            raise ConfigError(f"model.depth must be >= 1, got {c.depth}")
        c.width = c.width or 32 * c.depth
        if not c.n_head:
            if c.width % c.head_dim:
                raise ConfigError(f"model.width ({c.width}) must be a multiple of model.head_dim ({c.head_dim})")
            c.n_head = c.width // c.head_dim
        if not c.n_kv_head:
            c.n_kv_head = c.n_head // 2 if c.n_head % 2 == 0 else c.n_head
        if c.n_head % c.n_kv_head:
            raise ConfigError(f"model.n_kv_head ({c.n_kv_head}) must divide the number of heads ({c.n_head})")
        c.mlp_hidden = c.mlp_hidden or 32 * math.ceil(8 * c.width / 3 / 32)
        if c.mlp_act not in ACTIVATIONS:
            raise ConfigError(f"model.mlp_act={c.mlp_act!r} is not known; choose one of {sorted(ACTIVATIONS)}")
        if c.sliding_layers is not None:
            c.sliding_layers = list(c.sliding_layers)
        return c

    def window(self, layer: int) -> int:
        """The sliding window of `layer` (0 = full causal attention)."""
        if not self.sliding_window or (self.sliding_layers is not None and layer not in self.sliding_layers):
            return 0
        return self.sliding_window

    def default_lr(self) -> float:
        """Peak AdamW learning rate for this width (smaller models tolerate larger steps).

        3e-3 at width 128 (measured good on the tiny world), scaled by 1/sqrt(width) beyond it.
        """
        return 3e-3 * math.sqrt(128 / (self.width or 32 * self.depth))


ACTIVATIONS = {"silu": F.silu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}


class RMSNorm(nn.Module):
    """y = x / rms(x) * g, computed in fp32 as HF Llama does (so logits match to 1e-5).

    offset=1 is Gemma's variant: y = x / rms(x) * (1 + g), the product taken in fp32 as Gemma does.
    """

    def __init__(self, dim: int, eps: float = 1e-5, offset: float = 0.0):
        super().__init__()
        self.eps, self.offset = eps, offset
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.offset:  # Gemma
            return (x * (self.offset + self.weight.float())).to(dtype)
        return self.weight * x.to(dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None = None,
                  seq_len: int = 0) -> tuple[torch.Tensor, float]:
    """RoPE inverse frequencies (D/2,) and the factor cos/sin are multiplied by, for HF's rope types.

    linear: positions / factor (Chen et al. 2023, position interpolation). dynamic: NTK-aware base
    growth once seq_len exceeds the original context (as transformers, recomputed per call; see GPT._rope).
    yarn: per-frequency blend of interpolation and extrapolation + attention temperature (Peng et al. 2023).
    llama3: low frequencies / factor, high kept, a smooth ramp between (Llama 3.1 report).
    """
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim  # (D/2,)
    inv_freq = 1.0 / theta ** exponent
    kind = (scaling or {}).get("rope_type", "default")
    if kind == "default":
        return inv_freq, 1.0
    factor = scaling.get("factor")
    orig = scaling.get("original_max_position_embeddings")
    if kind == "linear":
        return inv_freq / factor, 1.0
    if kind == "dynamic":
        if seq_len <= orig:
            return inv_freq, 1.0
        base = theta * ((factor * seq_len / orig) - (factor - 1)) ** (head_dim / (head_dim - 2))
        return 1.0 / base ** exponent, 1.0
    if kind == "llama3":
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > orig / low, inv_freq / factor, inv_freq)  # long wavelengths: interpolate
        smooth = (orig / wavelen - low) / (high - low)  # 0 at the long end of the band, 1 at the short end
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        in_band = (wavelen >= orig / high) & (wavelen <= orig / low)
        return torch.where(in_band, blended, scaled), 1.0
    if kind == "yarn":
        def mscale(s: float, m: float = 1.0) -> float:
            return 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0

        attn = scaling.get("attention_factor")
        if attn is None:
            m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
            attn = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)

        def dim_of(rotations: float) -> float:  # the dimension that turns `rotations` times over orig positions
            return head_dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(theta))

        lo, hi = dim_of(scaling.get("beta_fast") or 32), dim_of(scaling.get("beta_slow") or 1)
        if scaling.get("truncate", True):
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, head_dim - 1)
        ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - lo) / ((hi - lo) or 0.001)).clamp(0, 1)
        # ramp 0: high frequencies kept (extrapolate); ramp 1: low frequencies divided by factor (interpolate)
        return inv_freq * (1 - ramp) + inv_freq / factor * ramp, float(attn)
    raise ConfigError(f"model.rope_scaling: rope_type {kind!r} is not supported (linear, dynamic, yarn, llama3)")


def rope_tables(head_dim: int, max_len: int, theta: float, scaling: dict | None = None,
                seq_len: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables of shape (max_len, D) for rotary embeddings (Su et al. 2021, eq. 34)."""
    inv_freq, attn_factor = rope_inv_freq(head_dim, theta, scaling, seq_len)  # (D/2,)
    freqs = torch.outer(torch.arange(max_len).float(), inv_freq)  # (max_len, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (max_len, D): the "rotate half" layout
    if attn_factor != 1.0:  # YaRN scales q and k, so the logits by attn_factor ** 2
        return emb.cos() * attn_factor, emb.sin() * attn_factor
    return emb.cos(), emb.sin()


MATVEC_MAX_ROWS = 2  # compiled decode: plain Linears with at most this many rows run as a reduction (see `project`)


def project(linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """linear(x), written as a mat-vec reduction for decode-sized inputs under torch.compile.

    A batch-1 decode step is ~43 small mat-vecs. As `mm` calls each one goes through the ATen dispatcher
    (and MKL's fp32 gemv, which on this AMD CPU streams at about half the speed of a plain vectorised loop);
    written as `(x * W).sum(-1)`, inductor emits its own C++ loop that reads every weight once, fused with
    the ops around it. Measured (benchmarks/decode.py, depth 6, width 256, one core): the compiled step
    takes 1.4 ms instead of 3.0 ms. Only plain fp32 `nn.Linear`s take it (LoRA wrappers and `Int8Linear`
    have their own forward); eager and training keep `F.linear` (the product would be materialised there).
    The sums are taken in another order than `mm`'s, so logits differ by float rounding (~1e-6).
    """
    if (type(linear) is nn.Linear and torch.compiler.is_compiling() and x.shape[:-1].numel() <= MATVEC_MAX_ROWS
            and linear.weight.dtype == torch.float32):
        y = (x.unsqueeze(-2) * linear.weight).sum(-1)  # (..., 1, in) * (out, in) -> (..., out)
        return y if linear.bias is None else y + linear.bias
    return linear(x)


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

    def __init__(self, k: torch.Tensor, v: torch.Tensor, col: torch.Tensor, key_ok: torch.Tensor, pure: bool = False,
                 prev_k: torch.Tensor | None = None, prev_v: torch.Tensor | None = None):
        self.k, self.v, self.col, self.pure = k, v, col, pure
        # pure only: keys/values (L, B, K, j, D) of the j tokens fed earlier in the same compiled call (multi-step
        # decode), not in the cache yet; they sit at columns col..col+j-1 and join the softmax like the new one
        self.prev_k, self.prev_v = prev_k, prev_v
        cols = torch.arange(k.shape[3], device=k.device)
        # keys visible to the new query: real columns before col, plus col itself unless pure (added separately)
        visible = cols < col if pure else cols <= col
        self.mask = (key_ok & visible)[:, None, None, :]  # (B, 1, 1, M)
        self.new_k: list[torch.Tensor] = []
        self.new_v: list[torch.Tensor] = []
        self.windowed: dict[int, torch.Tensor] = {}

    def _mask(self, window: int) -> torch.Tensor:
        """The (B, 1, 1, M) mask, narrowed to the last `window` columns for a sliding-window layer.

        Columns and RoPE positions differ by each row's (constant) left padding, so a window over
        columns is the same window over positions."""
        if not window:
            return self.mask
        if window not in self.windowed:
            cols = torch.arange(self.k.shape[3], device=self.k.device)
            self.windowed[window] = self.mask & (cols > self.col - window)[None, None, None, :]
        return self.windowed[window]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int = 0,
               scale: float | None = None, softcap: float = 0.0) -> torch.Tensor:
        """Attention output (B, H, 1, D) of the new queries q (B, H, 1, D) with new k, v (B, K, 1, D).

        window, scale, softcap: the layer's sliding window, softmax scale and score cap (see `Attention`)."""
        B, H, _, D = q.shape
        K = k.shape[1]
        # grouped-query attention without repeating the cache: the H/K query heads that share a kv head
        # become H/K "query positions" of that head (all at the same position, so one mask serves)
        q = q.reshape(B, K, H // K, D)  # (B, K, H/K, D)
        k_cache, v_cache = self.k[layer], self.v[layer]  # (B, K, M, D)
        mask = self._mask(window)
        if not self.pure:
            k_cache.index_copy_(2, self.col, k)
            v_cache.index_copy_(2, self.col, v)
            if softcap:
                y = softcapped_attention(q, k_cache, v_cache, mask, scale, softcap)
            else:
                y = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask, scale=scale)  # (B, K, H/K, D)
        else:
            M = k_cache.shape[2]
            q = q * (scale or D ** -0.5)
            # decode-sized batches under torch.compile: reductions inductor fuses into its own loops rather than
            # two bmm calls per layer through the dispatcher (the same reason as `project`)
            loops = torch.compiler.is_compiling() and B <= MATVEC_MAX_ROWS
            if loops:
                s_old = (q.unsqueeze(-2) * k_cache.unsqueeze(-3)).sum(-1)  # (B, K, H/K, 1, D) * (B, K, 1, M, D)
            else:
                s_old = (q @ k_cache.transpose(-1, -2))  # (B, K, H/K, M)
            s_new = (q * k).sum(-1, keepdim=True)  # (B, K, H/K, 1)
            if self.prev_k is not None:  # (B, K, H/K, 1, D) * (B, K, 1, j, D) -> (B, K, H/K, j + 1)
                s_new = torch.cat([(q.unsqueeze(-2) * self.prev_k[layer].unsqueeze(-3)).sum(-1), s_new], -1)
            if softcap:
                s_old, s_new = softcap * torch.tanh(s_old / softcap), softcap * torch.tanh(s_new / softcap)
            s_old = s_old.masked_fill(~mask, float("-inf"))
            w = torch.softmax(torch.cat([s_old, s_new], -1).float(), -1).to(q.dtype)  # (B, K, H/K, M+j+1)
            if loops:
                y_old = (w[..., :M, None] * v_cache.unsqueeze(-3)).sum(-2)  # (B, K, H/K, M, 1) * (B, K, 1, M, D)
            else:
                y_old = w[..., :M] @ v_cache
            if self.prev_v is not None:  # (B, K, H/K, j, 1) * (B, K, 1, j, D) summed over j
                y_old = y_old + (w[..., M:-1, None] * self.prev_v[layer].unsqueeze(-3)).sum(-2)
            y = y_old + w[..., -1:] * v  # (B, K, H/K, D)
            self.new_k.append(k)
            self.new_v.append(v)
        return y.reshape(B, H, 1, D)


def softcapped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                         scale: float | None, softcap: float) -> torch.Tensor:
    """softmax(c * tanh(q.k * scale / c)) v, written out because SDPA cannot cap scores (Gemma 2).

    q (B, H, T, D); k, v (B, H, S, D) (kv heads already matched to q's); mask (B|1, 1, T, S) bool or None
    (None: causal when T == S > 1, else all visible)."""
    T, S = q.shape[2], k.shape[2]
    s = (q @ k.transpose(-1, -2)) * (scale or q.shape[-1] ** -0.5)  # (B, H, T, S)
    s = softcap * torch.tanh(s / softcap)
    if mask is None and T > 1:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)[None, None]
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s.float(), -1).to(q.dtype) @ v


class Attention(nn.Module):
    """Multi-head causal self-attention with grouped-query heads (K kv heads shared by H/K queries).

    The one attention of genforge: training and prefill pass a `KVCache` (or none), the engine's
    static decode step passes a `StaticKV`; both share the projections, RoPE and output below.
    """

    def __init__(self, cfg: GPTConfig, layer: int = 0):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.q_proj = nn.Linear(cfg.width, self.n_head * self.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.width, self.n_kv_head * self.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.width, self.n_kv_head * self.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, cfg.width, bias=cfg.o_bias)
        if cfg.qk_norm:  # Qwen3: normalise each head's query and key (over D) before RoPE
            self.q_norm = RMSNorm(self.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(self.head_dim, cfg.norm_eps)
        self.qk_norm = cfg.qk_norm
        self.window = cfg.window(layer)  # 0 or this layer's sliding window (the mask comes from GPT.forward)
        self.scale = cfg.attn_scale or None  # None: SDPA's head_dim ** -0.5
        self.softcap = cfg.attn_softcap
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | StaticKV | None, layer: int) -> torch.Tensor:
        B, T, _ = x.shape
        q = project(self.q_proj, x).view(B, T, self.n_head, self.head_dim)  # (B, T, H, D)
        k = project(self.k_proj, x).view(B, T, self.n_kv_head, self.head_dim)  # (B, T, K, D)
        v = project(self.v_proj, x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, T, D), (B, K, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if isinstance(cache, StaticKV):
            y = cache.attend(layer, q, k, v, self.window, self.scale, self.softcap)  # (B, H, 1, D)
        else:
            if cache is not None:
                k, v = cache.update(layer, k, v)  # (B, K, S, D)
            if self.softcap:  # Gemma 2
                rep = self.n_head // self.n_kv_head
                y = softcapped_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), mask,
                                         self.scale, self.softcap)
                y = F.dropout(y, self.dropout, self.training)
            else:
                # grouped-query: each kv head serves H/K consecutive query heads (the grouping of HF's repeat_kv);
                # enable_gqa lets SDPA broadcast instead of materialising H copies of the keys and values
                y = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                    dropout_p=self.dropout if self.training else 0.0, scale=self.scale,
                    enable_gqa=self.n_kv_head != self.n_head)  # (B, H, T, D)
        return project(self.o_proj, y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class MLP(nn.Module):
    """Gated feed-forward: down(act(gate(x)) * up(x)); SwiGLU with silu (Shazeer 2020), GeGLU with gelu (Gemma)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.width, cfg.mlp_hidden, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.width, cfg.mlp_hidden, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.mlp_hidden, cfg.width, bias=cfg.mlp_bias)
        self.act = ACTIVATIONS[cfg.mlp_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return project(self.down_proj, self.act(project(self.gate_proj, x)) * project(self.up_proj, x))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x)).

    Gemma 2 ("sandwich") also normalises each sublayer's output: x + norm(attn(norm(x))), and the same
    for the MLP. Its names follow HF Gemma 2, where post_attention_layernorm is the attention's OUTPUT norm.
    """

    def __init__(self, cfg: GPTConfig, layer: int = 0):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.width, cfg.norm_eps, cfg.norm_offset)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.width, cfg.norm_eps, cfg.norm_offset)
        self.mlp = MLP(cfg)
        self.sandwich = cfg.sandwich_norm
        if self.sandwich:
            self.pre_feedforward_layernorm = RMSNorm(cfg.width, cfg.norm_eps, cfg.norm_offset)
            self.post_feedforward_layernorm = RMSNorm(cfg.width, cfg.norm_eps, cfg.norm_offset)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | StaticKV | None, layer: int) -> torch.Tensor:
        h = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer)
        if self.sandwich:  # Gemma 2
            x = x + self.post_attention_layernorm(h)
            return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x))


class GPT(nn.Module):
    """Decoder-only transformer: token ids (B, T) -> next-token logits (B, T, V)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg = cfg.resolved()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.width)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.depth))
        self.norm = RMSNorm(cfg.width, cfg.norm_eps, cfg.norm_offset)
        self.lm_head = nn.Linear(cfg.width, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)  # (max_len, D)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.build_rope()
        self.reset_parameters()

    def build_rope(self) -> None:
        """(Re)compute the RoPE tables (after loading weights onto the meta device, for instance)."""
        c = self.config
        self.rope_cos, self.rope_sin = rope_tables(c.head_dim, c.max_seq_len, c.rope_theta, c.rope_scaling)

    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights; residual output projections scaled by 1/sqrt(2*depth) (GPT-2)."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                nn.init.constant_(p, 1.0 - self.config.norm_offset)  # scale 1 either way
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
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
        x = self._embed(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        B, T, _ = x.shape
        past = cache.pos if cache is not None else 0
        S = past + T
        if S > self.config.max_seq_len:
            raise ConfigError(f"sequence of {S} tokens is longer than the model's context "
                              f"({self.config.max_seq_len}); shorten the input or raise model.max_seq_len")
        if position_ids is None:
            position_ids = torch.arange(past, S, device=x.device).unsqueeze(0).expand(B, T)
        cos, sin = self._rope(position_ids, x.dtype)  # (B, 1, T, D) each
        masks: dict[int, torch.Tensor | None] = {0: None}  # by sliding window (0 = full causal attention)
        if attention_mask is not None or (past > 0 and T > 1):
            masks[0] = _causal_mask(past, S, attention_mask, x.device)
        for w in {b.self_attn.window for b in self.layers} - {0}:
            # a window only narrows anything once the sequence outgrows it (else the causal mask serves)
            masks[w] = _causal_mask(past, S, attention_mask, x.device, w) if S > w else masks[0]
        for i, block in enumerate(self.layers):
            x = block(x, cos, sin, masks[block.self_attn.window], cache, i)
        if cache is not None:
            cache.pos = S
        x = self.norm(x)
        return x if return_hidden else self.head(x)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (..., V) from final (normed) hidden states (..., C); Gemma 2 soft-caps them."""
        logits = project(self.lm_head, hidden)
        if self.config.final_softcap:  # Gemma 2: logits -> c * tanh(logits / c)
            logits = self.config.final_softcap * torch.tanh(logits / self.config.final_softcap)
        return logits

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(ids)  # (B, T, C)
        if self.config.embed_scale:  # Gemma: sqrt(C), rounded to the weights' dtype as HF does
            x = x * torch.tensor(self.config.width ** 0.5, dtype=x.dtype)
        return x

    def _rope(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE cos, sin (B, 1, T, D) at position_ids (B, T)."""
        scaling = self.config.rope_scaling
        if scaling and scaling.get("rope_type") == "dynamic":
            # dynamic NTK: past the original context the frequencies depend on the current length;
            # transformers recomputes them per call from the largest position, and so do we
            seq_len = int(position_ids.max()) + 1
            if seq_len > scaling["original_max_position_embeddings"]:
                c = self.config
                cos, sin = rope_tables(c.head_dim, seq_len, c.rope_theta, scaling, seq_len=seq_len)
                cos, sin = cos.to(position_ids.device), sin.to(position_ids.device)
                return cos[position_ids].unsqueeze(1).to(dtype), sin[position_ids].unsqueeze(1).to(dtype)
        return (self.rope_cos[position_ids].unsqueeze(1).to(dtype),
                self.rope_sin[position_ids].unsqueeze(1).to(dtype))

    def decode_step(self, tok: torch.Tensor, pos: torch.Tensor, static: StaticKV) -> torch.Tensor:
        """One static-shape decode step: next-token logits (B, V) for tok (B, 1) at RoPE positions pos (B, 1).

        The same blocks as `forward`, attending through `static` (see `StaticKV`): no mask building,
        no cache bookkeeping, identical shapes every step, so torch.compile can freeze it into one graph.
        """
        x = self._embed(tok)  # (B, 1, C)
        cos, sin = self._rope(pos, x.dtype)  # (B, 1, 1, D)
        for i, block in enumerate(self.layers):
            x = block(x, cos, sin, None, static, i)
        return self.head(self.norm(x))[:, -1]  # (B, V)


def _causal_mask(past: int, S: int, attention_mask: torch.Tensor | None, device: torch.device,
                 window: int = 0) -> torch.Tensor:
    """Boolean mask (B|1, 1, T, S) for the T = S - past new queries: the query at absolute position
    past+i sees keys j <= past+i (and, with a sliding window W, j > past+i-W), minus padding keys."""
    T = S - past
    q_pos = torch.arange(past, S, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(S, device=device)[None, :]  # (1, S)
    mask = k_pos <= q_pos
    if window:
        mask = mask & (k_pos > q_pos - window)
    mask = mask[None, None]  # (1, 1, T, S)
    if attention_mask is not None:
        mask = mask & attention_mask[:, None, None, :S].bool()  # hide padding keys
        # a fully padded query row would give NaN; let it see itself (its output is ignored)
        mask = mask | _diag(T, S, device)
    return mask


def _diag(T: int, S: int, device: torch.device) -> torch.Tensor:
    """(1, 1, T, S) mask with query i allowed to see key S-T+i (itself)."""
    d = torch.zeros(T, S, dtype=torch.bool, device=device)
    d[torch.arange(T), torch.arange(S - T, S)] = True
    return d[None, None]
