"""The inference engine: token ids in, token ids out (it knows nothing about text).

A `DecodeSession` is one decode in progress: batched prefill of left-padded prompts into a
preallocated KV cache, then one token per row per step. Rows of different lengths share the
cache: prompt i is padded on the left, an attention mask hides the padding and position ids give
each row its true RoPE positions, so a row decodes exactly as it would alone (tested). A session
can also take tokens from outside (`append`, e.g. a tool's output) and keep decoding without
re-running the prefix. `Engine.generate` / `Engine.stream` run a session to the end.

The model owns the math: prefill and `append` call `GPT.forward` with the `KVCache`; decode steps
call `GPT.decode_step` with a `StaticKV` view of the same cache, which runs the same blocks with
fixed shapes (every step attends over all M cache columns under a mask). With
`Engine(model, compile=True)`, torch.compile (inductor, weights frozen, C++ wrapper) turns the
side-effect-free variant of that step into one graph per batch size, and the engine writes the
returned key/value into the cache (the CPU analogue of gpt-fast's static cache + CUDA graphs).
`Engine(model, compile=True, multi_step=n)` also compiles n greedy steps into one graph (`compiled_steps`) for
requests that need no per-token logits, as vLLM's multi-step scheduling does, and cuts the n tokens at a stop.

Where the time goes (benchmarks/decode.py, 5.5 M params, batch 1, one shared CPU core): fp32
decode reads all 22 MB of weights per token. Compiled at batch 1-2, the linears and the attention
run as reductions (`gpt.project`), which inductor fuses into one C++ loop nest per step: no mm/bmm
through the dispatcher, and faster than MKL's fp32 gemv on this AMD CPU; greedy's argmax is taken
in the same graph. What is left outside the weight pass is dynamo's call path, the KV write and
the session's Python (measured shares in the benchmark). int8 weights (`compress.quantize_int8`)
read 4x fewer bytes.

Sampling settings arrive as one `SamplingParams`; anything that reshapes the scores (the
watermark, a grammar, a caller's own rule) is a `LogitsProcessor` in a list.

Shapes: B batch, P longest prompt, M cache length, V vocab, L layers, K kv heads, D head dim.
"""

from __future__ import annotations

import contextlib
import threading
import time
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from genforge.errors import ConfigError
from genforge.infer import sampling
from genforge.infer.sampling import LogitsProcessor, SamplingParams, penalize, sample_next
from genforge.model.gpt import GPT, Attention, KVCache, StaticKV
from genforge.model.peft.lora import adapter_names, use_adapter

# A row stops when stop_fn(row, tokens_so_far) is true (the text layer uses it for stop strings).
StopFn = Callable[[int, list[int]], bool]


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    emb = getattr(model, "embed_tokens", None)
    p = emb.weight if emb is not None else next(model.parameters())
    return p.device, p.dtype


def supports_static(model: nn.Module) -> bool:
    """True for genforge GPTs whose attention is the stock module (LoRA-wrapped Linears are fine)."""
    return isinstance(model, GPT) and all(isinstance(b.self_attn, Attention) for b in model.layers)


def supports_slots(model: nn.Module) -> bool:
    """True when `SlotDecoder` can serve the model: stock attention and no sliding window. (A row that joins with a
    longer prompt leaves masked gap columns in the running rows; a window counted over columns would then see
    fewer positions than the model's window.)"""
    return supports_static(model) and not any(model.config.window(i) for i in range(model.config.depth))


def compiled_step(model: GPT, tok: torch.Tensor, pos: torch.Tensor, col: torch.Tensor, k_cache: torch.Tensor,
                  v_cache: torch.Tensor, key_ok: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The function torch.compile freezes: `GPT.decode_step` on a read-only `StaticKV`.

    Returns logits (B, V), the new keys/values (L, B, K, 1, D) for the caller to write at `col`, and
    the greedy choice argmax(logits) (B,): inside the graph it is one more fused loop over logits the
    step has just written, where the caller would pay another dispatched op per token.
    """
    static = StaticKV(k_cache, v_cache, col, key_ok, pure=True)
    logits = model.decode_step(tok, pos, static)
    return logits, torch.stack(static.new_k), torch.stack(static.new_v), logits.argmax(-1)


def compiled_steps(model: GPT, tok: torch.Tensor, pos: torch.Tensor, col: torch.Tensor, k_cache: torch.Tensor,
                   v_cache: torch.Tensor, key_ok: torch.Tensor, n: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """n greedy decode steps in one function (what `Engine(multi_step=n)` compiles into one graph).

    Step j feeds tok (B, 1) at RoPE positions pos + j into cache column col + j and feeds its argmax to step j + 1,
    as vLLM's multi-step scheduling does on a GPU: one call (dynamo, guards, inductor's wrapper, the KV write,
    the session's Python) per n tokens instead of per token. The cache is only read (as in `compiled_step`); the
    keys/values of this call's earlier steps ride along as `StaticKV.prev_k`/`prev_v`.
    Returns the n greedy tokens (B, n), the last of them again (B, 1) (a fresh tensor: a slice of the first would
    have other strides, which the next call's guards would see as a new input) and the new keys/values
    (L, B, K, n, D) for columns col .. col + n - 1.
    """
    toks: list[torch.Tensor] = []
    prev_k = prev_v = None
    for j in range(n):
        static = StaticKV(k_cache, v_cache, col, key_ok, pure=True, prev_k=prev_k, prev_v=prev_v)
        tok = model.decode_step(tok, pos + j, static).argmax(-1, keepdim=True)  # (B, 1)
        toks.append(tok)
        new_k, new_v = torch.stack(static.new_k), torch.stack(static.new_v)  # (L, B, K, 1, D)
        prev_k = new_k if prev_k is None else torch.cat([prev_k, new_k], 3)
        prev_v = new_v if prev_v is None else torch.cat([prev_v, new_v], 3)
    return torch.cat(toks, 1), tok, prev_k, prev_v


def split_by_length(first: Sequence[int], second: Sequence[int] | None = None,
                    overhead: int = 64) -> list[list[int]]:
    """Row indices split into groups of similar length, for batches whose rows are padded to the longest.

    A row is `first[i]` tokens (left-padded, e.g. a prompt) plus `second[i]` tokens (right-padded, e.g. a response;
    none for a prompt batch); a group runs as wide as its longest first part plus its longest second part. Rows
    are sorted by length and cut into contiguous groups by a dynamic programme that minimises
    sum over groups of rows x width x (1 + width / 512) (attention grows with width^2) plus `overhead` per group
    (the per-call Python and dispatch of a 4-layer model at tiny: about what 64 more token columns cost).
    """
    B = len(first)
    b_len = list(second) if second is not None else [0] * B
    order = sorted(range(B), key=lambda i: (first[i] + b_len[i], first[i], i))
    best, cut = [0.0] + [float("inf")] * B, [0] * (B + 1)  # best[b]: cheapest split of order[:b]; cut: its last cut
    for b in range(1, B + 1):
        m1 = m2 = 0
        for a in range(b - 1, -1, -1):  # group order[a:b], its longest first and second parts so far
            m1, m2 = max(m1, first[order[a]]), max(m2, b_len[order[a]])
            w = m1 + m2
            c = best[a] + (b - a) * w * (1 + w / 512) + overhead
            if c < best[b]:
                best[b], cut[b] = c, a
    groups = []
    b = B
    while b > 0:
        groups.append(order[cut[b]:b])
        b = cut[b]
    return groups[::-1]


def _private(fn: Callable, name: str) -> Callable:
    """A copy of fn with its own code object: its own dynamo cache, so skipping guard evaluation (see
    `Engine._compiled_step`) can never pick a graph frozen with another engine's weights."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, name)


class Engine:
    """Holds a model (and, optionally, its compiled decode step) and generates token ids.

    compile: torch.compile the static decode step with inductor's C++ wrapper (measured on 2 shared
        CPU cores, batch 1: ~2.5x eager's tokens/s). Each (batch size, cache bucket) compiles once
        (~10-40 s on an idle CPU, minutes under load); `warmup()` does it ahead of time and reports
        the seconds. Frozen means the weights are baked in at compile time: build a new Engine
        after changing the model's weights.
    threads: torch intra-op threads to use (None leaves the process setting alone).
    static: use the static decode step (default: whenever the model supports it).
    multi_step: n > 1 (compiled only): greedy requests with nothing that needs each token's logits (no penalties,
        logits processors or log-probs) run n decode steps per compiled call (`compiled_steps`) and are cut at the
        first stop; output equals the one-step path token for token (tested). One more graph per (batch size,
        cache bucket), whose compile takes about n times a single step's. Off by default: measured at n=8
        (benchmarks/decode.py, CPU clock, load 3-7) it gains 3-12 % tokens/s at batch 1 and 3 % at batch 2 for
        2-5 minutes of compile; the rest of the gap to the weight-streaming roofline is inside the graph.
    trim_prefill: prefill a left-padded batch of prompts in groups of similar length, each group without the
        columns that are padding in all its rows (`split_by_length`); the last prompt token's logits are the only
        ones computed. The cache and logits equal the padded prefill's up to float rounding (not bit for bit).
        Measured at tiny (the alignment stages' 64-prompt batches, one ~350-token needle prompt among prompts of
        median 58): most of the prefill's rows x columns were padding. Off by default (other stages' numbers
        stay bit for bit as they were).
    Thread safety: eager generation allocates its own cache per call and is safe to run from
    several threads; compiled steps are serialised by a lock.
    """

    def __init__(self, model: nn.Module, *, compile: bool = False, threads: int | None = None,
                 static: bool | None = None, multi_step: int = 0, trim_prefill: bool = False):
        self.model = model
        self.trim_prefill = trim_prefill and supports_static(model)
        if threads:
            torch.set_num_threads(threads)
        self.static = supports_static(model) if static is None else static
        if self.static and not supports_static(model):
            raise ConfigError("engine.static=True needs a genforge GPT with stock attention; use static=False")
        self.compiled = compile and self.static
        self._lock = threading.Lock()
        self._warm: set[tuple[int, ...]] = set()  # (batch, cache length[, steps]) shapes already compiled
        self.compile_seconds = 0.0
        # several steps per call need a fixed window-free mask (a sliding window would move within the call)
        self.multi_step = multi_step if self.compiled and multi_step > 1 and supports_slots(model) else 0
        if self.compiled:
            options = {"freezing": True, "cpp_wrapper": True}
            self._step = torch.compile(_private(compiled_step, "decode_step_compiled"), dynamic=False,
                                       fullgraph=True, options=options)
            # no C++ wrapper for the n-step graph: its Python wrapper's cost is paid once per n tokens, and g++ on the
            # C++ wrapper of an n-times unrolled graph took minutes (measured: batch 2, n=4, > 7 min under load)
            self._steps = torch.compile(_private(compiled_steps, "decode_steps_compiled"), dynamic=False,
                                        fullgraph=True, options={"freezing": True})

    def _bucket(self, n: int) -> int:
        """Cache length: exact in eager mode; the next power of two (>= 64) when compiled (few graphs)."""
        limit = self.model.config.max_seq_len
        return min(limit, max(64, 1 << (n - 1).bit_length())) if self.compiled else min(n, limit)

    def _compiled_step(self, *args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Call the compiled step; once a shape is compiled, skip dynamo's guard checks (~0.4 ms a call).

        Skipping is safe here because nothing the guards check can change for a known shape:
        the weights are frozen into the graph and dtype/device are fixed per engine.
        """
        return self._call(self._step, (args[0].shape[0], args[3].shape[3]), args)  # shape (B, M)

    def _compiled_steps(self, *args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Call the compiled `compiled_steps` (args as for it, n last)."""
        return self._call(self._steps, (args[0].shape[0], args[3].shape[3], args[-1]), args)  # (B, M, n)

    def _call(self, fn: Callable, shape: tuple[int, ...], args: tuple):
        with self._lock:
            if shape in self._warm:
                with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                    return fn(self.model, *args)
            # dynamo decides while tracing whether parameters become graph constants, and it reads the global
            # inductor config for that (torch 2.13: `is_parameter_freezing`), not the options given to
            # torch.compile: without this patch the weights stayed graph inputs (64 of them, each converted
            # in Python on every call) and nothing was frozen
            with torch._inductor.config.patch(freezing=True):
                out = fn(self.model, *args)
            self._warm.add(shape)
            return out

    def warmup(self, batch_size: int = 1, prompt_len: int = 8, max_new_tokens: int = 64) -> float:
        """Run (and so compile) one tiny generation of this shape; returns the seconds it took."""
        t0 = time.perf_counter()
        was_training = self.model.training
        self.model.eval()
        try:
            session = DecodeSession(self, [[0] * prompt_len] * batch_size, SamplingParams(max_new_tokens=2),
                                    cache_len=prompt_len + max_new_tokens)
            session.step_all()
            session.step_all()  # the second step feeds the first token through the (compiled) decode step
            if self.multi_step and session.room() >= self.multi_step:
                session.step_many(self.multi_step)
        finally:
            self.model.train(was_training)
        self.compile_seconds = time.perf_counter() - t0
        return self.compile_seconds

    def session(self, prompt: list[int], params: SamplingParams | None = None, *, stop_ids: Sequence[int] = (),
                logits_processors: Sequence[LogitsProcessor] = (), max_len: int | None = None) -> DecodeSession:
        """A `DecodeSession` over one prompt, with room for `max_len` tokens in all (default: the context).

        The session runs the model as it is: put it in eval mode first (generate/stream do that themselves).
        """
        return DecodeSession(self, [prompt], params or SamplingParams(), stop_ids=stop_ids,
                             logits_processors=logits_processors,
                             cache_len=max_len or self.model.config.max_seq_len)

    def generate(self, prompts: list[list[int]], params: SamplingParams | None = None, *,
                 stop_ids: Sequence[int] = (), stop_fn: StopFn | None = None,
                 logits_processors: Sequence[LogitsProcessor] = ()
                 ) -> list[list[int]] | tuple[list[list[int]], list[list[float]]]:
        """New tokens per prompt (a token in `stop_ids` ends its row and is not included).

        params: temperature (0 = greedy), top-k/top-p, penalties (repetition over prompt + output,
        frequency/presence over the output), seed, max_new_tokens, watermark. params.logprobs returns
        (tokens, logprobs): the model's raw log-probabilities of the chosen tokens (before penalties,
        processors, temperature and filtering, as an evaluator wants them).
        stop_fn(row, tokens) -> bool stops a row early (the token that triggered it is kept).
        logits_processors run after the penalties and the ones `params` asks for (the watermark).
        """
        params = params or SamplingParams()
        rows: list[list[int]] = [[] for _ in prompts]
        lps: list[list[float]] = [[] for _ in prompts]
        for row, tok, lp in self._run(prompts, params, stop_ids, stop_fn, logits_processors):
            rows[row].append(tok)
            lps[row].append(lp)
        return (rows, lps) if params.logprobs else rows

    def stream(self, prompt: list[int], params: SamplingParams | None = None, *, stop_ids: Sequence[int] = (),
               stop_fn: StopFn | None = None, logits_processors: Sequence[LogitsProcessor] = ()) -> Iterator[int]:
        """Yield the new token ids of one prompt as they are produced."""
        for _, tok, _ in self._run([prompt], params or SamplingParams(), stop_ids, stop_fn, logits_processors):
            yield tok

    def _run(self, prompts: list[list[int]], params: SamplingParams, stop_ids: Sequence[int],
             stop_fn: StopFn | None, processors: Sequence[LogitsProcessor]) -> Iterator[tuple[int, int, float | None]]:
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
            session = DecodeSession(self, prompts, params, stop_ids=stop_ids, logits_processors=processors)
            budget = min(params.max_new_tokens, session.room())  # generation also ends at the context limit
            # n steps per call: greedy, and nothing needs a step's logits; stop ids and stop_fn are checked on
            # the returned tokens in order, so a chunk cut at the first stop equals the one-step path
            n = self.multi_step if (params.greedy and not session.processors and not params.logprobs
                                    and session.seen is None and session.counts is None) else 0
            done = [False] * len(prompts)
            out: list[list[int]] = [[] for _ in prompts]
            picked = 0
            while picked < budget and not all(done):
                if n and session.pending is not None and budget - picked >= n:
                    steps, lps = session.step_many(n), None  # (n, B) tokens
                else:
                    toks, lps = session.step_all()
                    steps = [toks]
                for toks in steps:
                    if all(done):
                        break
                    picked += 1
                    for i, t in enumerate(toks):
                        b = session.rows[i]  # the row's index in `prompts` (rows that finished may have left)
                        if done[b]:
                            continue
                        if t in session.stop_ids:
                            done[b] = True
                            continue
                        out[b].append(t)
                        yield b, t, (lps[i] if lps is not None else None)
                        if stop_fn is not None and stop_fn(b, out[b]):
                            done[b] = True
                self._drop_finished(session, done)
        finally:
            self.model.train(was_training)


    @staticmethod
    def _drop_finished(session: DecodeSession, done: list[bool]) -> None:
        """Take finished rows out of an eager static batch once an eighth of it has finished.

        Measured on the speedrun's scoring (tiny, greedy, batches of 32): a third of the row-steps went to rows
        that had already stopped, since a batch runs until its longest answer ends. A compiled step keeps every
        row (a new batch size would compile a new graph).
        """
        if not session.engine.static or session.engine.compiled:
            return
        live = [i for i, b in enumerate(session.rows) if not done[b]]
        if live and session.B - len(live) >= max(1, session.B // 8):
            session.keep(live)


class DecodeSession:
    """One decode in progress: prompts prefilled once, then tokens picked and fed one step at a time.

    Public use is one row (`Engine.session(prompt, params)`): `step()` picks and returns the next
    token, `generate(n)` up to n tokens (ending at a stop id; params.max_new_tokens is not used),
    `append(tokens)` feeds outside tokens (a tool's output) through the cached prefix without
    recomputing it. Every token picked is fed into the cache lazily, on the next `step` or
    `append`, so the last one of a generation costs no forward. `tokens` holds the whole sequence so far.

    The engine drives it with several left-padded rows (`step_all`). Penalties: `seen` covers
    prompt, appended and output tokens (repetition, as HF and vLLM do); `counts` covers the
    output only (frequency/presence, as the OpenAI API defines them on generated text).
    """

    def __init__(self, engine: Engine, prompts: list[list[int]], params: SamplingParams, *,
                 stop_ids: Sequence[int] = (), logits_processors: Sequence[LogitsProcessor] = (),
                 cache_len: int | None = None):
        model = self.model = engine.model
        self.engine, self.params = engine, params
        self.stop_ids = set(int(s) for s in stop_ids)
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ConfigError("generate: every prompt needs at least one token (e.g. the BOS id)")
        device, dtype = _device_dtype(model)
        self.device = device
        B, P = len(prompts), max(len(p) for p in prompts)
        max_ctx = model.config.max_seq_len
        if P > max_ctx:
            raise ConfigError(f"prompt of {P} tokens is longer than the model's context ({max_ctx}); shorten it")
        M = engine._bucket(max(cache_len, P) if cache_len else P + min(params.max_new_tokens, max_ctx - P))
        self.B, self.P, self.M = B, P, M
        self.generator = torch.Generator(device=device).manual_seed(params.seed) if params.seed is not None else None
        self.processors = sampling.logits_processors(params, model.config.vocab_size, logits_processors)
        self.tokens = [list(p) for p in prompts]  # every row's whole sequence (prompt, output, appended)
        self.pending: torch.Tensor | None = None  # (B, 1) tokens picked but not yet fed

        # left-pad the prompts; key_ok marks real columns: prompt tokens and every later column
        self.lengths = torch.tensor([len(p) for p in prompts], device=device)  # (B,)
        ids = torch.zeros(B, P, dtype=torch.long, device=device)
        self.key_ok = torch.ones(B, M, dtype=torch.bool, device=device)
        for b, p in enumerate(prompts):
            ids[b, P - len(p):] = torch.tensor(p, dtype=torch.long, device=device)
            self.key_ok[b, :P - len(p)] = False
        self.padded = bool((self.lengths != P).any())
        self.fed = 0  # tokens fed after the prompt (cache columns P .. P+fed-1 are filled)
        self.argmax: torch.Tensor | None = None  # (B,) argmax of `logits` when the compiled step computed it
        self.rows = list(range(B))  # each current row's index among the prompts (`keep` drops rows)
        self.full_B = B
        self.cache = KVCache(model.config, B, max_len=M, device=device, dtype=dtype)
        self.seen = self.counts = None
        with torch.inference_mode():
            self.logits = self._prefill(ids)  # (B, V)
            V = self.logits.shape[-1]
            if params.repetition_penalty != 1.0:
                self.seen = torch.zeros(B, V, dtype=torch.bool, device=device).scatter_(1, ids, self.key_ok[:, :P])
            if params.frequency_penalty != 0.0 or params.presence_penalty != 0.0:
                self.counts = torch.zeros(B, V, device=device)

    # ---------------------------------------------------------------- one row (the public API)
    def room(self) -> int:
        """Tokens that can still be picked before the cache (or the model's context) is full."""
        return self.M - self.P - self.fed - (1 if self.pending is not None else 0)

    def step(self) -> int:
        """Pick the next token of a one-row session and return it (stop ids are returned too)."""
        self._one_row("step")
        return self.step_all()[0][0]

    def generate(self, n: int) -> list[int]:
        """Up to n new tokens; a stop id ends the generation (it is fed to the cache, not returned)."""
        self._one_row("generate")
        out: list[int] = []
        for _ in range(min(n, self.room())):
            t = self.step()
            if t in self.stop_ids:
                break
            out.append(t)
        return out

    def append(self, tokens: Sequence[int]) -> None:
        """Feed outside tokens (e.g. a tool's output) after what was generated; the prefix is not recomputed.

        Appended tokens count as context for the repetition penalty, not as output for
        frequency/presence penalties.
        """
        self._one_row("append")
        new = torch.tensor([list(tokens)], dtype=torch.long, device=self.device)  # (1, T)
        if new.shape[1] == 0:
            return
        if self.P + self.fed + new.shape[1] + (self.pending is not None) > self.M:
            raise ConfigError(f"append: {new.shape[1]} more tokens do not fit the session's {self.M}-token cache; "
                              "start the session with a larger max_len")
        with torch.inference_mode():
            if self.pending is not None:
                new = torch.cat([self.pending, new], 1)
                self.pending = None
            if self.seen is not None:
                self.seen.scatter_(1, new, True)
            self.logits = self._forward(new, self.P + self.fed)
        self.tokens[0] += list(tokens)

    def _one_row(self, what: str) -> None:
        if self.B != 1:
            raise ConfigError(f"DecodeSession.{what} works on a one-prompt session (this one has {self.B} rows)")

    # ---------------------------------------------------------------- every row (what the engine drives)
    def step_all(self) -> tuple[list[int], list[float] | None]:
        """Feed the pending tokens, then pick every row's next token -> (tokens, logprobs or None)."""
        if self.room() <= 0:
            raise ConfigError(f"the session's cache is full ({self.M} tokens); start it with a larger max_len")
        with torch.inference_mode():
            if self.pending is not None:
                self._feed_one(self.pending)
            tok, lps = self._pick()
        toks = tok.tolist()
        for row, t in zip(self.tokens, toks):
            row.append(t)
        self.pending = tok[:, None]  # (B, 1)
        return toks, lps

    def step_many(self, n: int) -> list[list[int]]:
        """Feed the pending tokens, then n greedy steps in one compiled call -> the n steps' tokens (n, B).

        For the engine's multi-step path (`Engine.multi_step`): needs a compiled engine, a token pending and room
        for n more; the greedy choice is taken as is (no penalties or processors are applied).
        """
        if self.pending is None or not self.engine.compiled or n > self.room():
            raise ConfigError(f"step_many({n}) needs a compiled engine, a picked token and room for {n} more")
        cache, start = self.cache, self.P + self.fed
        with torch.inference_mode():
            pos = (self.lengths + self.fed)[:, None]  # (B, 1) RoPE position of the pending token in each row
            toks, last, k, v = self.engine._compiled_steps(self.pending, pos, torch.tensor([start], device=self.device),
                                                     cache.k, cache.v, self.key_ok, n)
            cols = torch.arange(start, start + n, device=self.device)
            cache.k.index_copy_(3, cols, k)  # (L, B, K, M, D) <- (L, B, K, n, D) at columns start .. start + n - 1
            cache.v.index_copy_(3, cols, v)
        self.fed += n
        cache.pos = self.P + self.fed
        self.pending = last  # (B, 1): the last token is picked, not fed yet
        self.logits, self.argmax = None, None  # the next step_all computes them from `pending`
        rows = toks.tolist()
        for row, new in zip(self.tokens, rows):
            row += new
        return [list(step) for step in zip(*rows)]

    def keep(self, index: Sequence[int]) -> None:
        """Keep only the current rows `index` (the engine drops finished rows); `rows` maps them to the prompts."""
        idx = torch.tensor(list(index), dtype=torch.long, device=self.device)
        # only the filled columns are copied: an eager static step reads columns < P + fed + 1 and writes the last
        W, cache = self.P + self.fed, self.cache
        for name in ("k", "v"):
            old = getattr(cache, name)  # (L, B, K, M, D)
            new = old.new_empty(old.shape[0], len(idx), *old.shape[2:])
            new[:, :, :, :W] = old[:, idx, :, :W]
            setattr(cache, name, new)
        self.key_ok, self.lengths = self.key_ok[idx], self.lengths[idx]
        self.logits = None if self.logits is None else self.logits[idx]
        self.argmax = None if self.argmax is None else self.argmax[idx]
        if self.pending is not None:
            self.pending = self.pending[idx]
        if self.seen is not None:
            self.seen = self.seen[idx]
        if self.counts is not None:
            self.counts = self.counts[idx]
        self.tokens = [self.tokens[i] for i in index]
        self.rows = [self.rows[i] for i in index]
        self.B = len(self.rows)

    def _pick(self) -> tuple[torch.Tensor, list[float] | None]:
        """Choose the next token of every row from the current logits."""
        raw = self.logits.float()  # (B, V)
        p = self.params
        logits = penalize(raw, self.seen, self.counts, *p.penalties)
        if self.processors:
            logits = self._apply_processors(logits)
        if self.argmax is not None and p.greedy and logits is raw:
            tok = self.argmax  # nothing reshaped the scores: the compiled step's argmax is the greedy choice
        elif self.B < self.full_B and not p.greedy:
            # rows have left (`keep`): sample over the full batch shape, the kept rows in their old places, so
            # every row draws the same random numbers as it would have with every row still in the batch
            where = torch.tensor(self.rows, device=self.device)
            full = logits.new_zeros(self.full_B, logits.shape[-1]).index_copy_(0, where, logits)  # (full B, V)
            tok = sample_next(full, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p,
                              generator=self.generator)[where]
        else:
            tok = sample_next(logits, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p,
                              generator=self.generator)
        lps = torch.log_softmax(raw, -1).gather(1, tok[:, None])[:, 0].tolist() if p.logprobs else None
        if self.seen is not None:
            self.seen.scatter_(1, tok[:, None], True)
        if self.counts is not None:
            self.counts.scatter_add_(1, tok[:, None], torch.ones(self.B, 1, device=self.device))
        return tok, lps

    def _apply_processors(self, logits: torch.Tensor) -> torch.Tensor:
        width = max(len(t) for t in self.tokens)
        ids = torch.tensor([[0] * (width - len(t)) + t for t in self.tokens], dtype=torch.long,
                           device=self.device)  # (B, width) right-aligned
        for proc in self.processors:
            logits = proc(ids, logits)
        return logits

    def _feed_one(self, tok: torch.Tensor) -> None:
        """Feed one token per row (every row, finished ones too: fixed shapes) through the static step."""
        engine, cache = self.engine, self.cache
        if not engine.static:
            self.logits = self._forward(tok, self.P + self.fed)
            return
        pos = (self.lengths + self.fed)[:, None]  # (B, 1) RoPE position of the fed token in each row
        col = torch.tensor([self.P + self.fed], device=self.device)  # the cache column written this step
        if engine.compiled:
            self.logits, k, v, self.argmax = engine._compiled_step(tok, pos, col, cache.k, cache.v, self.key_ok)
            cache.k.index_copy_(3, col, k)  # (L, B, K, M, D) <- (L, B, K, 1, D) at column col
            cache.v.index_copy_(3, col, v)
        else:
            # eager: attend over the columns written so far only (the rest are masked anyway; at the speedrun's
            # answer budgets a third of the columns were still empty on average)
            W = self.P + self.fed + 1
            self.argmax = None
            self.logits = self.model.decode_step(tok, pos, StaticKV(cache.k[:, :, :, :W], cache.v[:, :, :, :W], col,
                                                                    self.key_ok[:, :W]))
        self.fed += 1
        cache.pos = self.P + self.fed

    def _prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """The prompts ids (B, P) into cache columns [0, P); last logits (B, V). With `Engine.trim_prefill`, rows
        of similar length run together, each group over its own last W columns only (the columns before are
        padding in all its rows; their cache entries stay zero and masked)."""
        if not (self.engine.trim_prefill and self.padded and self.B > 1):
            return self._forward(ids, 0)
        P, lengths = self.P, self.lengths.tolist()
        logits = None
        for rows in split_by_length(lengths):
            idx = torch.tensor(rows, dtype=torch.long, device=self.device)
            W = max(lengths[i] for i in rows)
            ok = self.key_ok[idx, P - W:P]  # (n, W)
            cache = KVCache(self.model.config, len(rows), max_len=W, device=self.device, dtype=self.cache.k.dtype)
            pos = (ok.long().cumsum(-1) - 1).clamp(min=0)  # (n, W) each column's true RoPE position
            hidden = self.model(ids[idx, P - W:], cache=cache, position_ids=pos, attention_mask=ok,
                                return_hidden=True)[:, -1]  # (n, C)
            part = self.model.head(hidden)  # (n, V)
            if logits is None:
                logits = part.new_empty(self.B, part.shape[-1])
            logits[idx] = part
            self.cache.k[:, idx, :, P - W:P] = cache.k  # (L, n, K, W, D)
            self.cache.v[:, idx, :, P - W:P] = cache.v
        self.cache.pos = P
        self.argmax = None
        return logits

    def _forward(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """Run ids (B, T) through `GPT.forward` into cache columns [start, start+T); last logits (B, V)."""
        self.argmax = None
        T = ids.shape[1]
        self.cache.pos = start
        if self.padded:
            # each column's true RoPE position: the number of real (non-pad) columns before it
            pos = (self.key_ok[:, :start + T].long().cumsum(-1) - 1).clamp(min=0)[:, start:]  # (B, T)
            logits = self.model(ids, cache=self.cache, position_ids=pos, attention_mask=self.key_ok)[:, -1]
        else:
            logits = self.model(ids, cache=self.cache)[:, -1]
        if start >= self.P:
            self.fed = start - self.P + T
        return logits


def generate(model: nn.Module, prompts: list[list[int]], params: SamplingParams | None = None, *,
             stop_ids: Sequence[int] = (), stop_fn: StopFn | None = None,
             logits_processors: Sequence[LogitsProcessor] = ()):
    """`Engine(model).generate(...)`: new token ids for a batch of prompts (see `Engine.generate`)."""
    return Engine(model).generate(prompts, params, stop_ids=stop_ids, stop_fn=stop_fn,
                                  logits_processors=logits_processors)


def stream(model: nn.Module, prompt: list[int], params: SamplingParams | None = None, *,
           stop_ids: Sequence[int] = (), stop_fn: StopFn | None = None) -> Iterator[int]:
    """Yield new token ids for one prompt as they are produced (see `Engine.stream`)."""
    return Engine(model).stream(prompt, params, stop_ids=stop_ids, stop_fn=stop_fn)


# ---------------------------------------------------------------------------------------------- continuous batching
class PrefixCache:
    """Keys/values of recently prefilled prompts, reused when a new prompt starts with the same tokens.

    A prefilled prompt is stored once, (L, K, n, D) per k/v, and indexed by its prefixes at every multiple
    of `block` tokens (as vLLM's automatic prefix caching hashes fixed-size blocks), so a new prompt that
    shares its first 40 tokens with a stored one reuses 32 of them (block 16). Keys depend only on the
    tokens before them (causal attention, RoPE positions from 0), so reuse is exact. Least recently used
    entries go first once `max_tokens` tokens are stored. `tag` separates models (a LoRA adapter's keys differ).
    """

    def __init__(self, max_tokens: int = 8192, block: int = 16):
        self.max_tokens, self.block = max_tokens, max(1, block)
        self._entries: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}  # id -> (k, v, n) in LRU order
        self._index: dict[tuple, tuple[int, int]] = {}  # (tag, prefix tokens) -> (entry id, length)
        self._next = 0
        self.stored = 0
        self.hits = self.queries = self.hit_tokens = 0

    def lookup(self, tag: str | None, prompt: Sequence[int]) -> tuple[int, torch.Tensor | None, torch.Tensor | None]:
        """(n, k, v): the longest stored block prefix of `prompt` shorter than the prompt (one token is left
        to prefill, whose logits the caller needs), or (0, None, None)."""
        self.queries += 1
        for n in range((len(prompt) - 1) // self.block * self.block, 0, -self.block):
            hit = self._index.get((tag, tuple(prompt[:n])))
            if hit is not None and hit[0] in self._entries:
                k, v, size = self._entries.pop(hit[0])
                self._entries[hit[0]] = (k, v, size)  # most recently used
                self.hits += 1
                self.hit_tokens += n
                return n, k[:, :, :n], v[:, :, :n]
        return 0, None, None

    def clear(self) -> None:
        """Forget every stored prompt (the model's weights changed)."""
        self._entries, self._index, self.stored = {}, {}, 0

    def store(self, tag: str | None, prompt: Sequence[int], k: torch.Tensor, v: torch.Tensor) -> None:
        """Remember a prompt's keys/values k, v (L, K, n, D) (copied) under each of its block prefixes."""
        n = len(prompt) // self.block * self.block
        if n == 0 or n > self.max_tokens or (tag, tuple(prompt[:n])) in self._index:
            return
        while self.stored + n > self.max_tokens and self._entries:
            _, (_, _, size) = next(iter(self._entries.items()))
            self._entries.pop(next(iter(self._entries)))
            self.stored -= size
        eid, self._next = self._next, self._next + 1
        self._entries[eid] = (k[:, :, :n].clone(), v[:, :, :n].clone(), n)
        self.stored += n
        for m in range(self.block, n + 1, self.block):
            self._index[(tag, tuple(prompt[:m]))] = (eid, m)
        if len(self._index) > 8 * self.max_tokens:  # drop index entries of evicted prompts
            self._index = {key: hit for key, hit in self._index.items() if hit[0] in self._entries}


DEFAULT_SLOT_COLUMNS = 8192


@dataclass
class _Slot:
    start: int  # first cache column of the row
    pos: int  # RoPE position of the row's next fed token
    remaining: int  # tokens the row may still feed (columns it still needs)
    adapter: str | None


class SlotDecoder:
    """The engine side of continuous (iteration-level) batching, as in Orca (Yu et al. 2022) and vLLM.

    Rows join (`admit`) and leave (`release`) between decode steps. The KV cache has one slot (a cache row)
    per running row; active rows fill slots 0..A-1 (a leaving row's slot takes the last row's cache). All
    rows write their next token into the same column `col`, so one `GPT.decode_step` over a `StaticKV` view
    serves every row; a joining row's prompt is prefilled alone (reusing a `PrefixCache` hit) and placed to
    end at `col`, `key_ok` marks each row's own columns, and RoPE positions are per row, so a row decodes
    as it would alone. When the columns run out, the finished rows' columns on the left are dropped
    (`_compact`). Per-row LoRA adapters ride along as per-row adapter names (`use_adapter` with a list).

    slots: rows at most. cache_len: columns M (default 2x the context, room for rows that joined later, but at
    most DEFAULT_SLOT_COLUMNS: a long-context model would otherwise allocate gigabytes; a row needs prompt +
    max_new columns, so with M below the context the longest requests cannot run).
    Shapes: k, v (L, S, K, M, D); key_ok (S, M).
    """

    def __init__(self, model: nn.Module, slots: int = 16, *, cache_len: int | None = None,
                 prefix_cache: PrefixCache | None = None):
        if not supports_slots(model):
            raise ConfigError("continuous batching needs a genforge GPT with stock attention and no sliding window; "
                              "use static batching")
        self.model = model
        cfg = model.config.resolved()
        self.context = int(cfg.max_seq_len)
        self.S, self.M = max(1, slots), max(1, cache_len or min(2 * self.context, DEFAULT_SLOT_COLUMNS))
        device, dtype = _device_dtype(model)
        self.device = device
        shape = (cfg.depth, self.S, cfg.n_kv_head, self.M, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.key_ok = torch.zeros(self.S, self.M, dtype=torch.bool, device=device)
        self.col = 0  # the column the next step writes
        self.rows: list[_Slot] = []
        self.prefix = prefix_cache
        self._lora = bool(adapter_names(model))

    @property
    def active(self) -> int:
        return len(self.rows)

    def refresh(self) -> None:
        """Re-read which LoRA adapters the model carries (after loading or unloading one)."""
        self._lora = bool(adapter_names(self.model))

    def fits(self, prompt_len: int, max_new: int) -> bool:
        """Can a row with this prompt and output budget join now (after dropping finished columns)?"""
        if len(self.rows) >= self.S:
            return False
        shift = min((r.start for r in self.rows), default=self.col)
        col = max(self.col - shift, prompt_len)
        need = max([max_new] + [r.remaining for r in self.rows])
        return col + need <= self.M

    @torch.inference_mode()
    def admit(self, prompt: Sequence[int], max_new: int, *, adapter: str | None = None,
              all_logits: bool = False, reuse: bool = True) -> tuple[torch.Tensor, int]:
        """Prefill a new row (check `fits` first) -> (logits, cached): logits (V,) of the next token, or
        (n, V) for every prompt position when all_logits (no prefix reuse then: the cached positions have
        no logits); cached = prompt tokens taken from the prefix cache."""
        n = len(prompt)
        if not self.fits(n, max_new):
            raise ConfigError(f"no room for a {n}-token prompt + {max_new} tokens in the slot cache")
        if n > self.context:
            raise ConfigError(f"prompt of {n} tokens is longer than the model's context ({self.context})")
        cfg = self.model.config
        cache = KVCache(cfg, 1, max_len=n, device=self.device, dtype=self.k.dtype)
        p, pk, pv = (0, None, None)
        if self.prefix is not None and reuse and not all_logits:
            p, pk, pv = self.prefix.lookup(adapter, prompt)
        if p:
            cache.k[:, 0, :, :p], cache.v[:, 0, :, :p] = pk, pv
            cache.pos = p
        ids = torch.tensor([list(prompt[p:])], dtype=torch.long, device=self.device)  # (1, n - p)
        with self._adapter(adapter):
            logits = self.model(ids, cache=cache)[0]  # (n - p, V)
        if self.prefix is not None:
            self.prefix.store(adapter, prompt, cache.k[:, 0], cache.v[:, 0])
        # make room: drop columns no running row uses any more, then start the row so it ends at `col`
        if self.rows:
            self._compact()
        else:
            self.col = 0
        if self.col < n:
            self.col = n  # the other rows get unused (masked) columns
        s = len(self.rows)
        self.k[:, s, :, self.col - n:self.col] = cache.k[:, 0]
        self.v[:, s, :, self.col - n:self.col] = cache.v[:, 0]
        self.key_ok[s] = False
        self.key_ok[s, self.col - n:self.col] = True
        self.rows.append(_Slot(self.col - n, n, max_new, adapter))
        return (logits if all_logits else logits[-1]), p

    def _compact(self) -> None:
        shift = min(r.start for r in self.rows)
        if shift == 0:
            return
        A, w = len(self.rows), self.col - shift
        self.k[:, :A, :, :w] = self.k[:, :A, :, shift:self.col].clone()
        self.v[:, :A, :, :w] = self.v[:, :A, :, shift:self.col].clone()
        self.key_ok[:A, :w] = self.key_ok[:A, shift:self.col].clone()
        self.key_ok[:A, w:] = False
        for r in self.rows:
            r.start -= shift
        self.col = w

    def release(self, slot: int) -> int | None:
        """Free a row's slot; the last row moves into it. Returns the moved row's old slot (or None): the
        caller moves its own bookkeeping the same way."""
        last = len(self.rows) - 1
        if slot != last:
            self.k[:, slot] = self.k[:, last]
            self.v[:, slot] = self.v[:, last]
            self.key_ok[slot] = self.key_ok[last]
            self.rows[slot] = self.rows[last]
        self.rows.pop()
        if not self.rows:
            self.col = 0
        return last if slot != last else None

    @torch.inference_mode()
    def step(self, tokens: Sequence[int]) -> torch.Tensor:
        """Feed one token per active row (slot order) -> next-token logits (A, V)."""
        A = len(self.rows)
        if len(tokens) != A or A == 0:
            raise ConfigError(f"step: {len(tokens)} tokens for {A} active rows")
        if self.col >= self.M:
            self._compact()
        tok = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]  # (A, 1)
        pos = torch.tensor([r.pos for r in self.rows], device=self.device)[:, None]  # (A, 1)
        self.key_ok[:A, self.col] = True
        W = self.col + 1  # attend over the columns written so far only
        col = torch.tensor([self.col], device=self.device)
        static = StaticKV(self.k[:, :A, :, :W], self.v[:, :A, :, :W], col, self.key_ok[:A, :W])
        with self._adapter([r.adapter for r in self.rows]):
            logits = self.model.decode_step(tok, pos, static)  # (A, V)
        for r in self.rows:
            r.pos += 1
            r.remaining -= 1
        self.col += 1
        return logits

    def _adapter(self, name: str | None | list[str | None]) -> contextlib.AbstractContextManager:
        """Per-call LoRA selection: a name, None (the base model) or one name per row (no-op without LoRA)."""
        if not self._lora:
            return contextlib.nullcontext()
        if isinstance(name, list) and not any(name):
            name = None
        return use_adapter(self.model, name)
