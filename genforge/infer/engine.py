"""The inference engine: token ids in, token ids out (it knows nothing about text).

One call = batched prefill of left-padded prompts into a preallocated KV cache, then a
decode loop that feeds one token per row per step. Rows of different lengths share the cache:
prompt i is padded on the left, an attention mask hides the padding and position ids give
each row its true RoPE positions, so a row decodes exactly as it would alone (tested).

Decode has three implementations of the same maths (all tested against full recomputation):
- `model.forward` with a `KVCache` (the reference path; used for prefill and with static=False);
- `decode_step`, a static-shape step for genforge `GPT`s: it writes the new key/value into a
  fixed column of the preallocated cache (`index_copy_`) and attends over all `M` cache columns
  with a boolean mask, so every step has identical shapes (the eager default);
- `decode_step_pure`, the same step without side effects, for `Engine(model, compile=True)`:
  torch.compile (inductor, weights frozen, C++ wrapper) turns it into one graph per batch size,
  and the engine writes the returned key/value into the cache (the CPU analogue of gpt-fast's
  static cache + CUDA graphs).

Where the time goes (benchmarks/decode.py, 5.5 M params, batch 1, one shared CPU core): fp32
decode reads all 22 MB of weights per token, so memory bandwidth, not Python, bounds it once the
step is compiled; int8 weights (`compress.quantize_int8`) read 4x fewer bytes and, compiled, run
~3-5x faster than HF generate.

Shapes: B batch, P longest prompt, M cache length (P + new tokens), V vocab, L layers,
K kv heads, D head dim.
"""

from __future__ import annotations

import threading
import time
import types
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.errors import ConfigError
from genforge.infer.sampling import penalize, sample_next
from genforge.model.gpt import GPT, Attention, KVCache, apply_rope

# A row stops when stop_fn(row, tokens_so_far) is true (text.py uses it for stop strings).
StopFn = Callable[[int, list[int]], bool]


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    emb = getattr(model, "embed_tokens", None)
    p = emb.weight if emb is not None else next(model.parameters())
    return p.device, p.dtype


def supports_static(model: nn.Module) -> bool:
    """True for genforge GPTs whose attention is the stock module (LoRA-wrapped Linears are fine)."""
    return isinstance(model, GPT) and all(isinstance(b.self_attn, Attention) for b in model.layers)


def _embed(model: GPT, tok: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token embeddings (B, 1, C) and the RoPE cos/sin (B, 1, 1, D) at positions pos (B, 1)."""
    x = model.embed_tokens(tok)
    return x, model.rope_cos[pos].unsqueeze(1).to(x.dtype), model.rope_sin[pos].unsqueeze(1).to(x.dtype)


def _qkv(attn: Attention, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotated q (B, H, 1, D), rotated k and v (B, K, 1, D) of one new token's normed hidden state h (B, 1, C)."""
    B, H, K, D = h.shape[0], attn.n_head, attn.n_kv_head, attn.head_dim
    q = attn.q_proj(h).view(B, 1, H, D).transpose(1, 2)
    k = attn.k_proj(h).view(B, 1, K, D).transpose(1, 2)
    v = attn.v_proj(h).view(B, 1, K, D).transpose(1, 2)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def decode_step(model: GPT, tok: torch.Tensor, pos: torch.Tensor, col: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, key_ok: torch.Tensor) -> torch.Tensor:
    """One static-shape decode step; returns next-token logits (B, V).

    tok (B, 1) ids; pos (B, 1) RoPE positions; col (1,) the cache column to write;
    k_cache, v_cache (L, B, K, M, D) written in place; key_ok (B, M) bool, False on left padding.
    The same computation as `GPT.forward` with a KVCache, reusing the model's own submodules.
    """
    B, M = tok.shape[0], k_cache.shape[3]
    x, cos, sin = _embed(model, tok, pos)
    # keys visible to the new query: real (non-pad) columns up to and including the one written now
    mask = (key_ok & (torch.arange(M, device=tok.device) <= col))[:, None, None, :]  # (B, 1, 1, M)
    for i, block in enumerate(model.layers):
        attn = block.self_attn
        H, K, D = attn.n_head, attn.n_kv_head, attn.head_dim
        q, k, v = _qkv(attn, block.input_layernorm(x), cos, sin)  # (B, H, 1, D), (B, K, 1, D) x2
        k_cache[i].index_copy_(2, col, k)
        v_cache[i].index_copy_(2, col, v)
        # grouped-query attention without repeating the cache: the H/K query heads that share a
        # kv head become H/K "query positions" of that head (all at the same position, so one mask)
        q = q.reshape(B, K, H // K, D)  # (B, K, H/K, D)
        y = F.scaled_dot_product_attention(q, k_cache[i], v_cache[i], attn_mask=mask)  # (B, K, H/K, D)
        x = x + attn.o_proj(y.reshape(B, 1, H * D))
        x = x + block.mlp(block.post_attention_layernorm(x))
    return model.lm_head(model.norm(x))[:, -1]  # (B, V)


def decode_step_pure(model: GPT, tok: torch.Tensor, pos: torch.Tensor, col: torch.Tensor, k_cache: torch.Tensor,
                     v_cache: torch.Tensor, key_ok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`decode_step` without side effects, for torch.compile: returns (logits (B, V), new_k, new_v (L, B, K, 1, D)).

    The caller writes new_k/new_v into column `col` afterwards. A compiled graph that mutates
    slices of its inputs makes inductor clone the whole cache every step (measured: 2x slower
    than eager at batch 8); here the cache is only read, and the new key joins the softmax
    separately: softmax([q.K_cache (masked to columns < col), q.k_new]) (one extra logit).
    """
    B, M = tok.shape[0], k_cache.shape[3]
    x, cos, sin = _embed(model, tok, pos)
    old_ok = (key_ok & (torch.arange(M, device=tok.device) < col))[:, None, None, :]  # (B, 1, 1, M)
    new_k, new_v = [], []
    for i, block in enumerate(model.layers):
        attn = block.self_attn
        H, K, D = attn.n_head, attn.n_kv_head, attn.head_dim
        q, k, v = _qkv(attn, block.input_layernorm(x), cos, sin)  # (B, H, 1, D), (B, K, 1, D) x2
        q = q.reshape(B, K, H // K, D) * D ** -0.5  # (B, K, H/K, D), grouped as in decode_step
        s_old = (q @ k_cache[i].transpose(-1, -2)).masked_fill(~old_ok, float("-inf"))  # (B, K, H/K, M)
        s_new = (q * k).sum(-1, keepdim=True)  # (B, K, H/K, 1)
        w = torch.softmax(torch.cat([s_old, s_new], -1).float(), -1).to(q.dtype)  # (B, K, H/K, M+1)
        y = w[..., :M] @ v_cache[i] + w[..., M:] * v  # (B, K, H/K, D)
        x = x + attn.o_proj(y.reshape(B, 1, H * D))
        x = x + block.mlp(block.post_attention_layernorm(x))
        new_k.append(k)
        new_v.append(v)
    return model.lm_head(model.norm(x))[:, -1], torch.stack(new_k), torch.stack(new_v)


class Engine:
    """Holds a model (and, optionally, its compiled decode step) and generates token ids.

    compile: torch.compile the static decode step with inductor's weight freezing and C++ wrapper
        (measured on 2 shared CPU cores: ~1.5x faster per step than eager). Each (batch size,
        cache bucket) compiles once (~10-40 s on CPU); `warmup()` does it ahead of time and reports
        the seconds. Frozen means the weights are baked in at compile time: build a new Engine
        after changing the model's weights.
    threads: torch intra-op threads to use (None leaves the process setting alone).
    static: use the static decode step (default: whenever the model supports it).
    Thread safety: eager generation allocates its own cache per call and is safe to run from
    several threads; compiled steps are serialised by a lock.
    """

    def __init__(self, model: nn.Module, *, compile: bool = False, threads: int | None = None,
                 static: bool | None = None):
        self.model = model
        if threads:
            torch.set_num_threads(threads)
        self.static = supports_static(model) if static is None else static
        if self.static and not supports_static(model):
            raise ConfigError("engine.static=True needs a genforge GPT with stock attention; use static=False")
        self.compiled = compile and self.static
        self._lock = threading.Lock()
        self._warm: set[tuple[int, int]] = set()  # (batch, cache length) shapes already compiled
        self.compile_seconds = 0.0
        if self.compiled:
            # a private copy of the function's code object gives this engine its own dynamo cache, so
            # skipping guard evaluation below can never pick a graph frozen with another model's weights
            fn = types.FunctionType(decode_step_pure.__code__.replace(), decode_step_pure.__globals__,
                                    "decode_step_compiled")
            self._step = torch.compile(fn, dynamic=False, fullgraph=True,
                                       options={"freezing": True, "cpp_wrapper": True})

    def _bucket(self, n: int) -> int:
        """Cache length: exact in eager mode; the next power of two (>= 64) when compiled (few graphs)."""
        limit = self.model.config.max_seq_len
        return min(limit, max(64, 1 << (n - 1).bit_length())) if self.compiled else min(n, limit)

    def _compiled_step(self, *args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Call the compiled step; once a shape is compiled, skip dynamo's guard checks (~0.4 ms a call).

        Skipping is safe here because nothing the guards check can change for a known shape:
        the weights are frozen into the graph and dtype/device are fixed per engine.
        """
        shape = (args[0].shape[0], args[3].shape[3])  # (B, M)
        with self._lock:
            if shape in self._warm:
                with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                    return self._step(self.model, *args)
            out = self._step(self.model, *args)
            self._warm.add(shape)
            return out

    def warmup(self, batch_size: int = 1, prompt_len: int = 8, max_new_tokens: int = 64) -> float:
        """Run (and so compile) one tiny generation of this shape; returns the seconds it took."""
        t0 = time.perf_counter()
        self.generate([[0] * prompt_len] * batch_size, max_new_tokens=min(2, max_new_tokens),
                      _cache_len=prompt_len + max_new_tokens)
        self.compile_seconds = time.perf_counter() - t0
        return self.compile_seconds

    def generate(self, prompts: list[list[int]], **kw) -> list[list[int]] | tuple[list[list[int]], list[list[float]]]:
        """New tokens per prompt (stop token excluded); see module `generate` for the arguments."""
        logprobs = kw.get("logprobs", False)
        rows = [[] for _ in prompts]
        lps = [[] for _ in prompts]
        for row, tok, lp in self._run(prompts, **kw):
            rows[row].append(tok)
            lps[row].append(lp)
        return (rows, lps) if logprobs else rows

    def stream(self, prompt: list[int], **kw) -> Iterator[int]:
        """Yield the new token ids of one prompt as they are produced."""
        for _, tok, _ in self._run([prompt], **kw):
            yield tok

    def _run(self, prompts: list[list[int]], *, max_new_tokens: int = 64, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, stop_ids: Sequence[int] = (), seed: int | None = None,
             repetition_penalty: float = 1.0, frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
             logprobs: bool = False, watermark=None, stop_fn: StopFn | None = None,
             _cache_len: int | None = None) -> Iterator[tuple[int, int, float | None]]:
        """Yield (row, token, logprob or None) for every new token, in step order.

        Tensor work runs under inference_mode in short blocks that never span a `yield`, so a
        caller consuming the stream keeps its own grad mode. The model is in eval mode until the
        generator finishes (or is closed).
        """
        if not prompts:
            return
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                state = _DecodeState(self, prompts, max_new_tokens, seed, watermark, _cache_len,
                                     repetition_penalty, frequency_penalty, presence_penalty)
            stop_set = set(int(s) for s in stop_ids)
            done = [False] * len(prompts)
            out = [[] for _ in prompts]
            for step in range(state.max_new_tokens):
                with torch.inference_mode():
                    toks, lps = state.pick(temperature, top_k, top_p, logprobs)
                for b, t in enumerate(toks):
                    if done[b]:
                        continue
                    if t in stop_set:
                        done[b] = True
                        continue
                    out[b].append(t)
                    yield b, t, (lps[b] if lps is not None else None)
                    if stop_fn is not None and stop_fn(b, out[b]):
                        done[b] = True
                if all(done) or step == state.max_new_tokens - 1:
                    break
                with torch.inference_mode():
                    state.feed(toks, step)
        finally:
            self.model.train(was_training)


class _DecodeState:
    """The tensors of one generate call: padded prompts, KV cache, masks, penalty counts, last logits."""

    def __init__(self, engine: Engine, prompts: list[list[int]], max_new_tokens: int, seed: int | None,
                 watermark, cache_len: int | None, repetition: float, frequency: float, presence: float):
        model = self.model = engine.model
        self.engine = engine
        if any(len(p) == 0 for p in prompts):
            raise ConfigError("generate: every prompt needs at least one token (e.g. the BOS id)")
        device, dtype = _device_dtype(model)
        self.device = device
        B, P = len(prompts), max(len(p) for p in prompts)
        max_ctx = model.config.max_seq_len
        if P > max_ctx:
            raise ConfigError(f"prompt of {P} tokens is longer than the model's context ({max_ctx}); shorten it")
        self.max_new_tokens = min(max_new_tokens, max_ctx - P)  # generation also ends at the context limit
        M = engine._bucket(max(P + self.max_new_tokens, cache_len or 0))
        self.B, self.P = B, P
        self.generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
        self.processor = _watermark_processor(watermark, model)
        self.history = [list(p) for p in prompts] if self.processor is not None else None

        # left-pad the prompts; key_ok marks real columns: prompt tokens and every future decode column
        self.lengths = torch.tensor([len(p) for p in prompts], device=device)  # (B,)
        ids = torch.zeros(B, P, dtype=torch.long, device=device)
        self.key_ok = torch.ones(B, M, dtype=torch.bool, device=device)
        for b, p in enumerate(prompts):
            ids[b, P - len(p):] = torch.tensor(p, dtype=torch.long, device=device)
            self.key_ok[b, :P - len(p)] = False
        self.padded = bool((self.lengths != P).any())

        self.cache = KVCache(model.config, B, max_len=M, device=device, dtype=dtype)
        if self.padded:
            pos = (self.key_ok[:, :P].long().cumsum(-1) - 1).clamp(min=0)  # (B, P) each row's true positions
            self.logits = model(ids, cache=self.cache, position_ids=pos, attention_mask=self.key_ok)[:, -1]  # (B, V)
        else:
            self.logits = model(ids, cache=self.cache)[:, -1]
        V = self.logits.shape[-1]

        # penalties: `seen` covers prompt + output (repetition, as HF and vLLM do); `counts` covers the
        # output only (frequency/presence, as the OpenAI API defines them on generated text)
        self.penalties = (repetition, frequency, presence)
        self.seen = self.counts = None
        if repetition != 1.0:
            self.seen = torch.zeros(B, V, dtype=torch.bool, device=device).scatter_(1, ids, self.key_ok[:, :P])
        if frequency != 0.0 or presence != 0.0:
            self.counts = torch.zeros(B, V, device=device)

    def pick(self, temperature: float, top_k: int, top_p: float, logprobs: bool):
        """Choose the next token of every row from the current logits -> (tokens, logprobs or None)."""
        raw = self.logits.float()  # (B, V)
        logits = penalize(raw, self.seen, self.counts, *self.penalties)
        if self.processor is not None:
            logits = self.processor(_last_tokens(self.history, self.processor.context, self.device), logits)
        tok = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=self.generator)
        lps = torch.log_softmax(raw, -1).gather(1, tok[:, None])[:, 0].tolist() if logprobs else None
        self.tok = tok  # (B,)
        return tok.tolist(), lps

    def feed(self, toks: list[int], step: int) -> None:
        """Append the tokens just picked (every row, finished ones too: fixed shapes) and compute new logits."""
        tok = self.tok
        if self.seen is not None:
            self.seen.scatter_(1, tok[:, None], True)
        if self.counts is not None:
            self.counts.scatter_add_(1, tok[:, None], torch.ones(self.B, 1, device=self.device))
        if self.history is not None:
            for h, t in zip(self.history, toks):
                h.append(t)
        tok = tok[:, None]  # (B, 1)
        pos = (self.lengths + step)[:, None]  # (B, 1) RoPE position of the fed token in each row
        engine, cache = self.engine, self.cache
        if engine.static:
            col = torch.tensor([self.P + step], device=self.device)  # cache column written this step
            if engine.compiled:
                self.logits, k, v = engine._compiled_step(tok, pos, col, cache.k, cache.v, self.key_ok)
                cache.k.index_copy_(3, col, k)  # (L, B, K, M, D) <- (L, B, K, 1, D) at column col
                cache.v.index_copy_(3, col, v)
            else:
                self.logits = decode_step(self.model, tok, pos, col, cache.k, cache.v, self.key_ok)
            cache.pos = self.P + step + 1
        else:
            mask = self.key_ok if self.padded else None
            self.logits = self.model(tok, cache=cache, position_ids=pos if self.padded else None,
                                     attention_mask=mask)[:, -1]


def _last_tokens(history: list[list[int]], n: int, device: torch.device) -> torch.Tensor:
    """(B, n) the last n tokens of each row (left-filled with 0 when a row is shorter)."""
    rows = [([0] * n + h)[-n:] for h in history]
    return torch.tensor(rows, dtype=torch.long, device=device)


def _watermark_processor(watermark, model: nn.Module):
    """Accept a WatermarkConfig, a ready processor, or None."""
    if watermark is None:
        return None
    from genforge.infer.watermark import WatermarkConfig, WatermarkLogitsProcessor  # avoid an import cycle

    if isinstance(watermark, WatermarkConfig):
        return WatermarkLogitsProcessor(watermark, vocab_size=model.config.vocab_size)
    return watermark


def generate(model: nn.Module, prompts: list[list[int]], *, max_new_tokens: int = 64, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, stop_ids: Sequence[int] = (), seed: int | None = None,
             repetition_penalty: float = 1.0, frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
             logprobs: bool = False, watermark=None, stop_fn: StopFn | None = None):
    """Generate new token ids for a batch of prompts (lists of ids of any lengths).

    Returns one list of new tokens per prompt; a token in `stop_ids` ends its row and is not
    included. temperature 0 is greedy. Penalties: repetition (CTRL) over prompt + output,
    frequency/presence (OpenAI) over the output. seed makes sampling reproducible.
    logprobs=True returns (tokens, logprobs) where logprobs are the model's raw log-probabilities
    of the chosen tokens (before penalties, temperature and filtering, as an evaluator wants them).
    watermark: a `WatermarkConfig` (or processor) to watermark the output (Kirchenbauer et al. 2023).
    stop_fn(row, tokens) -> bool stops a row early (the token that triggered it is kept).
    """
    return Engine(model).generate(
        prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        stop_ids=stop_ids, seed=seed, repetition_penalty=repetition_penalty, frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty, logprobs=logprobs, watermark=watermark, stop_fn=stop_fn)


def stream(model: nn.Module, prompt: list[int], **kw) -> Iterator[int]:
    """Yield new token ids for one prompt as they are produced (same keywords as `generate`)."""
    return Engine(model).stream(prompt, **kw)
