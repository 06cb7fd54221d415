"""The bridge between the asyncio server and the (blocking) engine: a bounded queue, one worker thread.

Requests become `Job`s (one row per choice), and each row's text goes back to its request's asyncio
queue with `loop.call_soon_threadsafe` -- the event loop never runs the model, so a long generation
never stalls other requests, `/health` or new connections. Two schedulers share that interface:

- `ContinuousBatcher` (the default): iteration-level scheduling (Orca, Yu et al. 2022; vLLM): rows
  join the running batch between decode steps as soon as a slot and cache columns are free, and leave
  the moment they end, so a short request that arrives while a long one decodes starts at the next
  step and finishes first. The KV cache is slot-based with prefix caching (`infer.engine.SlotDecoder`);
  every row samples with its own settings, processors (grammar), seed and LoRA adapter, and can return
  log-probabilities of its prompt (echo) and its tokens.
- `Batcher`: static batching (a batch runs until its last row finishes; newcomers wait for the next).
  It drives any `generate_fn` (tests inject gated ones; speculative decoding uses it), and is the
  baseline `benchmarks/serve_load.py` measures continuous batching against. Jobs share a batch only
  with equal sampling settings; seeded sampled requests run alone, so they always give the same text.

Rows end on their own: each request's max_tokens and stop strings are enforced per row, and a cancelled
job (client gone) stops its rows at the next token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
import torch.nn as nn

from genforge.infer.engine import PrefixCache, SlotDecoder, StopFn
from genforge.infer.sampling import SamplingParams, logits_processors, penalize, sample_next
from genforge.text import StreamDecoder
from genforge.tokenizer import Tokenizer

log = logging.getLogger("genforge.serve")


class GenerateFn(Protocol):
    """The batched generation call the worker makes: `Engine.generate`'s interface (tests inject others)."""

    def __call__(self, prompts: list[list[int]], params: SamplingParams, *, stop_ids: Sequence[int] = (),
                 stop_fn: StopFn | None = None) -> Any: ...


class QueueFull(Exception):
    """The waiting queue is at its bound; the caller should answer 429."""


class Closed(Exception):
    """The batcher is shutting down (or its worker died); the caller should answer 503."""


def batch_key(params: SamplingParams) -> tuple | None:
    """Jobs whose settings have equal keys may share a batch; None = must run alone (seeded sampling)."""
    pen = params.penalties
    if params.watermark:
        return None  # the watermark key is per request
    if params.greedy:
        return (0.0, *pen)  # greedy: top-k/top-p/seed cannot change the argmax
    if params.seed is not None:
        return None
    return (params.temperature, params.top_k, params.top_p, *pen)


@dataclass
class Event:
    """What the worker tells a request: a text delta, a finished choice, or the end of the job."""

    kind: str  # "delta" | "finish" | "end" | "error" | "prompt" (echo: the prompt's token log-probs)
    index: int = 0
    text: str = ""
    finish_reason: str | None = None
    tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)  # the tokens behind this delta (when asked)


@dataclass
class TokenLogprob:
    """A token, its log-probability under the model (None for a prompt's first token) and the `top` alternatives."""

    token: int
    logprob: float | None
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Job:
    """One request: `prompts` are its rows (choices), all generated with the same settings.

    max_tokens: the request's fitted cap (it wins over sampling.max_new_tokens); sampling.stop
    holds its stop strings.
    """

    prompts: list[list[int]]
    max_tokens: int
    sampling: SamplingParams
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    tokens: list[int] = field(default_factory=list)  # tokens generated per row (filled by the worker)
    logits_processors: list = field(default_factory=list)  # this job's own (a grammar): static batching runs it alone
    logprobs: int | None = None  # return each token's log-prob and this many top alternatives (None: off)
    echo_logprobs: bool = False  # also the log-probs of the prompt tokens (completions with echo)
    adapter: str | None = None  # the LoRA adapter its rows decode with (None: the base model)
    submitted: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = [0] * len(self.prompts)

    def bind(self) -> None:
        """Attach to the running event loop (call from async code before submitting)."""
        self.loop = asyncio.get_running_loop()
        self.events = asyncio.Queue()

    def cancel(self) -> None:
        """Stop generating for this job (client disconnected); harmless once finished."""
        self.cancelled.set()

    def send(self, event: Event) -> None:
        """Thread-safe: queue an event for the request's coroutine."""
        if self.loop is None or self.events is None:
            return
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancel()

    async def stream(self) -> AsyncIterator[list[Event]]:
        """Lists of events until the job ends (an "error" event is raised as RuntimeError).

        Each list holds every event that arrived meanwhile, with consecutive deltas of one choice
        merged: a consumer that falls behind (a slow client, a busy loop) catches up in one write
        instead of one per token, while a keeping-up consumer still sees every token on its own.
        """
        assert self.events is not None, "bind() the job before submitting it"
        while True:
            got = [await self.events.get()]
            while not self.events.empty():
                got.append(self.events.get_nowait())
            out: list[Event] = []
            for ev in got:
                if ev.kind == "end":
                    if out:
                        yield out
                    return
                if ev.kind == "error":
                    raise RuntimeError(ev.text)
                if ev.kind == "delta" and out and out[-1].kind == "delta" and out[-1].index == ev.index:
                    out[-1] = Event("delta", ev.index, out[-1].text + ev.text, logprobs=out[-1].logprobs + ev.logprobs)
                else:
                    out.append(ev)
            yield out


class Batcher:
    """A bounded queue of jobs served by one worker thread that batches compatible jobs.

    max_queue (>= 1) bounds the jobs *waiting* (the running batch is not counted); submit() raises
    QueueFull beyond it. max_batch bounds the rows of one batch. context_len is the model's
    window: jobs share a batch only if the longest prompt + the largest max_tokens fit it
    (the engine sizes one cache for the whole batch). batch_wait_s: after a batch of several jobs,
    wait up to this long for more requests before starting the next batch (throughput under load;
    a lone client never waits).
    """

    def __init__(self, generate_fn: GenerateFn | None, tokenizer: Tokenizer, *, stop_ids: Sequence[int],
                 context_len: int, max_batch: int = 16, max_queue: int = 64, batch_wait_s: float = 0.01,
                 metrics: Any = None):
        self.generate_fn, self.tokenizer, self.metrics = generate_fn, tokenizer, metrics
        self.stop_ids, self.context_len = list(stop_ids), context_len
        self.max_batch, self.max_queue = max(1, max_batch), max(1, max_queue)
        self.batch_wait_s = batch_wait_s
        self._last_jobs = 0  # jobs in the previous batch (> 1 means requests are arriving concurrently)
        self._waiting: list[Job] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.running = 0  # jobs in the current batch
        self.running_rows = 0  # rows decoding now
        self.stats = {"jobs": 0, "batches": 0, "rows": 0, "tokens": 0, "cancelled": 0, "errors": 0}
        if metrics is not None:
            metrics.bind(self)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is None:
            self._closed = False
            self._thread = threading.Thread(target=self._worker, name="genforge-serve-worker", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Refuse new jobs, cancel waiting and running ones, and join the worker."""
        with self._cond:
            self._closed = True
            waiting, self._waiting = self._waiting, []
            self._cond.notify_all()
        for job in waiting:
            job.cancel()
            job.send(Event("error", text="server is shutting down"))
            job.done.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def capacity(self) -> int:
        """Tokens (prompt + max_tokens) one row may need at most."""
        return self.context_len

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._closed

    def submit(self, job: Job) -> None:
        """Queue a job; raises QueueFull or Closed."""
        with self._cond:
            if self._closed or self._thread is None or not self._thread.is_alive():
                raise Closed("the generation worker is not running")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting (max_queue={self.max_queue})")
            self._waiting.append(job)
            self._cond.notify()

    # ------------------------------------------------------------------ worker
    def _take_batch(self) -> list[Job]:
        """Block until jobs wait; take the oldest and every later one that can join its batch ([] = closed)."""
        with self._cond:
            while not self._closed:
                self._waiting = [j for j in self._waiting if not self._drop_if_cancelled(j)]
                if self._waiting:
                    break
                self._cond.wait()
            if self._closed:
                return []
            if self.batch_wait_s > 0 and self._last_jobs > 1:
                # under concurrent load, clients whose replies just ended are about to send their next
                # request: a few milliseconds of patience turns many small batches into one large one
                deadline = time.monotonic() + self.batch_wait_s
                while len(self._waiting) < self.max_batch and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if self._closed:
                    return []
                self._waiting = [j for j in self._waiting if not self._drop_if_cancelled(j)]
                if not self._waiting:
                    self._last_jobs = 0
                    return self._take_batch()  # all gave up while we waited: block as usual (RLock)
            head = self._waiting.pop(0)
            batch, key = [head], None if head.logits_processors else batch_key(head.sampling)
            rows = len(head.prompts)
            longest = max(len(p) for p in head.prompts)
            most = head.max_tokens
            if key is not None:
                for job in list(self._waiting):
                    j_longest, j_most = max(longest, *(len(p) for p in job.prompts)), max(most, job.max_tokens)
                    if (not job.logits_processors and batch_key(job.sampling) == key
                            and rows + len(job.prompts) <= self.max_batch
                            and j_longest + j_most <= self.context_len):
                        batch.append(job)
                        self._waiting.remove(job)
                        rows, longest, most = rows + len(job.prompts), j_longest, j_most
            self.running = self._last_jobs = len(batch)
            return batch

    def _drop_if_cancelled(self, job: Job) -> bool:
        if job.cancelled.is_set():
            self.stats["cancelled"] += 1
            job.send(Event("end"))
            job.done.set()
            return True
        return False

    def _worker(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                return
            try:
                self._run(batch)
            except Exception as e:  # a bug or an engine error: fail this batch, keep serving
                log.exception("generation failed")
                self.stats["errors"] += 1
                for job in batch:
                    job.send(Event("error", text=f"generation failed: {type(e).__name__}: {e}"))
            finally:
                for job in batch:
                    job.done.set()
                self.running = self.running_rows = 0

    def _run(self, batch: list[Job]) -> None:
        """Generate one batch, streaming every row's deltas to its job."""
        rows: list[tuple[Job, int, StreamDecoder]] = [
            (job, i, StreamDecoder(self.tokenizer, job.sampling.stop))
            for job in batch for i in range(len(job.prompts))]
        prompts = [job.prompts[i] for job, i, _ in rows]
        finished = [False] * len(rows)
        first: list[float | None] = [None] * len(rows)
        self.running_rows = len(rows)
        s = batch[0].sampling
        max_new = max(job.max_tokens for job in batch)
        limit = min(max_new, self.context_len - max(len(p) for p in prompts))  # what the engine will allow

        def finish(r: int, reason: str) -> None:
            job, i, ts = rows[r]
            finished[r] = True
            if self.metrics is not None:
                self.metrics.row_done(first[r], job.tokens[i])
            rest = ts.flush()
            if rest:
                job.send(Event("delta", i, rest))
            job.send(Event("finish", i, finish_reason=reason, tokens=job.tokens[i]))

        def on_token(r: int, tokens: list[int]) -> bool:
            """Called by the engine after each new token of row r; True ends the row."""
            job, i, ts = rows[r]
            if finished[r]:
                return True
            if job.cancelled.is_set():
                finished[r] = True
                return True
            job.tokens[i] = len(tokens)
            self.stats["tokens"] += 1
            if self.metrics is not None:
                if first[r] is None:
                    first[r] = time.monotonic()
                    self.metrics.first_token(job.submitted)
                self.metrics.tokens()
            delta = ts.push(tokens[-1])
            if delta:
                job.send(Event("delta", i, delta))
            if ts.stopped:
                finish(r, "stop")
            elif len(tokens) >= job.max_tokens:
                finish(r, "length")
            return finished[r]

        self.stats["batches"] += 1
        self.stats["rows"] += len(rows)
        self.stats["jobs"] += len(batch)
        t0 = time.perf_counter()
        # rows share one SamplingParams (batch_key); each row's own cap and stop strings are enforced by on_token
        # a job with its own processors runs alone (see _take_batch); the keyword is passed only then, so
        # generate functions without it (tests, speculative decoding) keep working for everything else
        extra = {"logits_processors": batch[0].logits_processors} if batch[0].logits_processors else {}
        self.generate_fn(prompts, replace(s, max_new_tokens=max_new, stop=[]), stop_ids=self.stop_ids,
                         stop_fn=on_token, **extra)
        # rows the engine ended itself: a stop token, or (defensively) the context limit
        for r, (job, i, _) in enumerate(rows):
            if not finished[r]:
                finish(r, "length" if job.tokens[i] >= limit else "stop")
        for job in batch:
            if job.cancelled.is_set():
                self.stats["cancelled"] += 1
            if self.metrics is not None:  # before "end": a client that got its reply finds it counted
                self.metrics.finished(job.submitted)
            job.send(Event("end"))
        log.debug("batch of %d rows (%d jobs) in %.3fs", len(rows), len(batch), time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------- continuous batching
@dataclass
class _Row:
    """One choice decoding in the continuous batch (its slot is its index in `ContinuousBatcher._rows`)."""

    job: Job
    index: int  # choice index within the job
    prompt: list[int]
    decoder: StreamDecoder
    processors: list
    generator: torch.Generator | None
    seen: torch.Tensor | None = None  # (V,) bool: prompt + output tokens (repetition penalty)
    counts: torch.Tensor | None = None  # (V,) output token counts (frequency / presence penalties)
    out: list[int] = field(default_factory=list)
    first: float | None = None  # when its first token came
    pending_lps: list[TokenLogprob] = field(default_factory=list)  # log-probs of tokens whose text is held back


class ContinuousBatcher(Batcher):
    """Iteration-level scheduling over a `SlotDecoder` (see the module docstring).

    Between two decode steps the worker admits waiting rows (oldest first, while a slot and cache columns
    are free; a row that does not fit waits, and so does everything behind it, so long prompts are not
    starved), prefills each alone (reusing a prefix-cache hit), and drops rows that ended. max_batch is the
    number of slots. prefix_cache_tokens: tokens of prompt keys/values kept for reuse (0: off).
    """

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, *, stop_ids: Sequence[int], context_len: int,
                 max_batch: int = 16, max_queue: int = 64, metrics: Any = None, prefix_cache_tokens: int = 8192,
                 cache_len: int | None = None):
        super().__init__(None, tokenizer, stop_ids=stop_ids, context_len=context_len, max_batch=max_batch,
                         max_queue=max_queue, batch_wait_s=0.0, metrics=metrics)
        self.model = model
        self.prefix = PrefixCache(prefix_cache_tokens) if prefix_cache_tokens > 0 else None
        self._cache_len = cache_len
        self.decoder = self._new_decoder()
        self._rows: list[_Row] = []
        self._queued: list[tuple[Job, int]] = []  # rows of taken jobs not admitted yet (job, choice index)
        self._left: dict[int, int] = {}  # id(job) -> rows not finished
        self._jobs: dict[int, Job] = {}
        self._outbox: list[tuple[Job, Event]] = []
        self.model_lock = threading.Lock()  # held while the worker runs the model; adapters change it between steps
        self.stats["steps"] = 0
        self.stats["prefix_hits"] = 0
        self.stats["prefix_hit_tokens"] = 0

    def _new_decoder(self) -> SlotDecoder:
        return SlotDecoder(self.model, self.max_batch, cache_len=self._cache_len, prefix_cache=self.prefix)

    @property
    def running_rows(self) -> int:  # type: ignore[override]
        return len(self._rows)

    @property
    def capacity(self) -> int:
        """Tokens (prompt + max_tokens) one row may need at most: the slot cache's columns."""
        return self.decoder.M

    @property
    def waiting(self) -> int:
        """Requests not started yet: still queued, or taken but with no row admitted (no free slot or columns)."""
        started = {id(r.job) for r in list(self._rows)}
        return len(self._waiting) + len({id(j) for j, _ in list(self._queued) if id(j) not in started})

    @running_rows.setter
    def running_rows(self, value: int) -> None:  # the base class resets it; the row list is the truth here
        pass

    # ------------------------------------------------------------------ worker
    def _worker(self) -> None:
        self.model.eval()
        while True:
            with self._cond:
                while not self._closed and not self._waiting and not self._rows and not self._queued:
                    self._cond.wait()
                if self._closed:
                    self._fail_all("server is shutting down")
                    return
                self._waiting = [j for j in self._waiting if not self._drop_if_cancelled(j)]
                # take every waiting job's rows into the admission queue (FIFO); `waiting` counts jobs not yet started
                while self._waiting and len(self._queued) < self.max_batch:
                    job = self._waiting.pop(0)
                    self._jobs[id(job)] = job
                    self._left[id(job)] = len(job.prompts)
                    self.stats["jobs"] += 1
                    self._queued += [(job, i) for i in range(len(job.prompts))]
            try:
                with self.model_lock:
                    self._admit()
                    if self._rows:
                        self._step()
                self._flush()
            except Exception as e:  # a bug or an engine error: fail the running rows, keep serving
                log.exception("generation failed")
                self.stats["errors"] += 1
                self._fail_all(f"generation failed: {type(e).__name__}: {e}")
            self.running = len({id(r.job) for r in self._rows})

    def _send(self, job: Job, event: Event) -> None:
        """Queue an event for the end of this step (see `_flush`)."""
        self._outbox.append((job, event))

    def _flush(self) -> None:
        """Hand the step's events to the event loop(s) in one wake-up each: waking a loop costs a socket write
        (~0.5-1 ms on a loaded machine), which per token would cost as much as the decode step itself."""
        if not self._outbox:
            return
        by_loop: dict[Any, list[tuple[Job, Event]]] = {}
        for job, ev in self._outbox:
            if job.loop is not None and job.events is not None:
                by_loop.setdefault(job.loop, []).append((job, ev))
        self._outbox = []
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the event loop is closed: nobody is listening any more
                for job, _ in items:
                    job.cancel()

    def with_model(self, fn: Any, drain: str | None = None) -> Any:
        """Run fn(model) between decode steps (it may change the model's modules: load a LoRA adapter).

        drain: an adapter name; wait until no queued or running row uses it first (unloading it).
        """
        while drain is not None and (any(r.job.adapter == drain for r in self._rows)
                                     or any(j.adapter == drain for j, _ in self._queued)
                                     or any(j.adapter == drain for j in self._waiting)):
            time.sleep(0.01)
        with self.model_lock:
            out = fn(self.model)
            self.decoder.refresh()
            if self.prefix is not None:
                self.prefix.clear()  # keys computed with an adapter that may be gone or replaced
            return out

    def _fail_all(self, message: str) -> None:
        jobs = {id(r.job): r.job for r in self._rows} | {id(j): j for j, _ in self._queued}
        self._flush()
        for job in jobs.values():
            job.send(Event("error", text=message))
            job.done.set()
        self._rows, self._queued, self._left, self._jobs = [], [], {}, {}
        self.decoder = self._new_decoder()

    def _admit(self) -> None:
        """Prefill queued rows while they fit; each gets its first token right away."""
        while self._queued:
            job, i = self._queued[0]
            if job.cancelled.is_set():
                self._queued.pop(0)
                self._row_gone(job)
                continue
            prompt = job.prompts[i]
            if not self.decoder.fits(len(prompt), max(job.max_tokens, 1)):
                if not self._rows:  # it would not fit even alone: fail it rather than wait forever
                    self._queued = [(j, k) for j, k in self._queued if j is not job]
                    too_long = f"prompt + max_tokens exceed the KV cache ({self.decoder.M} tokens)"
                    self._send(job, Event("error", text=too_long))
                    self._left.pop(id(job), None)
                    job.done.set()
                    continue
                return
            self._queued.pop(0)
            logits, cached = self.decoder.admit(prompt, max(job.max_tokens, 1), adapter=job.adapter,
                                                all_logits=job.echo_logprobs)
            if self.prefix is not None and not job.echo_logprobs:
                self.stats["prefix_hits"] += bool(cached)
                self.stats["prefix_hit_tokens"] += cached
                if self.metrics is not None:
                    self.metrics.prefix(cached)
            self.stats["rows"] += 1
            row = self._new_row(job, i, prompt)
            self._rows.append(row)
            if job.echo_logprobs:
                self._send(job, Event("prompt", i, logprobs=_prompt_logprobs(logits, prompt, job.logprobs or 0)))
                logits = logits[-1]
            if job.max_tokens <= 0:  # scoring only (echo with max_tokens 0)
                self._finish(len(self._rows) - 1, "length")
                continue
            self._take(len(self._rows) - 1, logits)

    def _new_row(self, job: Job, i: int, prompt: list[int]) -> _Row:
        p = job.sampling
        V = int(self.model.config.vocab_size)
        seed = None if p.seed is None else p.seed + i  # choice i of a seeded request: its own reproducible stream
        gen = torch.Generator(device=self.decoder.device).manual_seed(seed) if seed is not None else None
        # a processor with state per row (a grammar's matcher) gives each choice its own copy
        own = [proc.fork() if hasattr(proc, "fork") else proc for proc in job.logits_processors]
        row = _Row(job, i, prompt, StreamDecoder(self.tokenizer, p.stop), logits_processors(p, V, own), gen)
        if p.repetition_penalty != 1.0:
            row.seen = torch.zeros(V, dtype=torch.bool, device=self.decoder.device)
            row.seen[torch.tensor(prompt, device=self.decoder.device)] = True
        if p.frequency_penalty != 0.0 or p.presence_penalty != 0.0:
            row.counts = torch.zeros(V, device=self.decoder.device)
        return row

    def _step(self) -> None:
        """One decode step for every running row, then each picks its next token."""
        if any(r.job.cancelled.is_set() for r in self._rows):
            for s in reversed(range(len(self._rows))):
                if self._rows[s].job.cancelled.is_set():
                    self._finish(s, None)
            if not self._rows:
                return
        logits = self.decoder.step([r.out[-1] for r in self._rows])  # (A, V)
        self.stats["steps"] += 1
        self.stats["batches"] += 1
        for s in reversed(range(len(self._rows))):  # reversed: a finished row's slot takes the last row
            self._take(s, logits[s])

    @torch.inference_mode()
    def _take(self, s: int, logits: torch.Tensor) -> None:
        """Row s picks its next token from logits (V,), sends it on, and ends if it should."""
        row = self._rows[s]
        job, p = row.job, row.job.sampling
        raw = logits.float()[None]  # (1, V)
        x = penalize(raw, None if row.seen is None else row.seen[None], None if row.counts is None else
                     row.counts[None], *p.penalties)
        if row.processors:
            ids = torch.tensor([row.prompt + row.out], dtype=torch.long, device=raw.device)  # (1, L)
            for proc in row.processors:
                x = proc(ids, x)
        tok = int(sample_next(x, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, generator=row.generator))
        if row.seen is not None:
            row.seen[tok] = True
        if row.counts is not None:
            row.counts[tok] += 1
        if tok in self.stop_ids:
            self._finish(s, "stop")
            return
        if job.cancelled.is_set():
            self._finish(s, None)
            return
        row.out.append(tok)
        job.tokens[row.index] = len(row.out)
        self.stats["tokens"] += 1
        if self.metrics is not None:
            if row.first is None:
                row.first = time.monotonic()
                self.metrics.first_token(job.submitted)
            self.metrics.tokens()
        elif row.first is None:
            row.first = time.monotonic()
        if job.logprobs is not None:
            row.pending_lps.append(_token_logprob(raw[0], tok, job.logprobs))
        delta = row.decoder.push(tok)
        if delta:
            self._send(job, Event("delta", row.index, delta, logprobs=row.pending_lps))
            row.pending_lps = []
        if row.decoder.stopped:
            self._finish(s, "stop")
        elif len(row.out) >= job.max_tokens or len(row.prompt) + len(row.out) >= self.context_len:
            self._finish(s, "length")

    def _finish(self, s: int, reason: str | None) -> None:
        """End row s (reason None: cancelled, nothing more is sent) and free its slot."""
        row = self._rows[s]
        job = row.job
        if reason is not None:
            rest = row.decoder.flush()
            if rest or row.pending_lps:
                self._send(job, Event("delta", row.index, rest, logprobs=row.pending_lps))
            self._send(job, Event("finish", row.index, finish_reason=reason, tokens=len(row.out)))
        if self.metrics is not None:
            self.metrics.row_done(row.first, len(row.out))
        moved = self.decoder.release(s)
        if moved is not None:
            self._rows[s] = self._rows[moved]
        self._rows.pop()
        self._row_gone(job)

    def _row_gone(self, job: Job) -> None:
        key = id(job)
        self._left[key] -= 1
        if self._left[key] > 0:
            return
        del self._left[key]
        self._jobs.pop(key, None)
        if job.cancelled.is_set():
            self.stats["cancelled"] += 1
        if self.metrics is not None:  # before "end": a client that got its reply finds it counted
            self.metrics.finished(job.submitted)
        self._send(job, Event("end"))
        job.done.set()


def _deliver(items: list[tuple[Job, Event]]) -> None:
    """On the event loop: put each event into its job's queue."""
    for job, ev in items:
        job.events.put_nowait(ev)


def _top(logp: torch.Tensor, k: int) -> list[tuple[int, float]]:
    if k <= 0:
        return []
    vals, idx = torch.topk(logp, min(k, logp.shape[-1]))
    return list(zip(idx.tolist(), vals.tolist()))


def _token_logprob(raw: torch.Tensor, tok: int, k: int) -> TokenLogprob:
    """The model's own log-probability of `tok` from raw logits (V,) (before penalties, processors and
    temperature, as an evaluator wants it) and the k most likely tokens."""
    logp = torch.log_softmax(raw.float(), -1)
    return TokenLogprob(tok, float(logp[tok]), _top(logp, k))


def _prompt_logprobs(logits: torch.Tensor, prompt: list[int], k: int) -> list[TokenLogprob]:
    """Log-probs of every prompt token given the ones before it, from the prefill's logits (n, V); the first
    token has none (nothing conditions it)."""
    logp = torch.log_softmax(logits.float(), -1)  # (n, V): row t predicts token t + 1
    out = [TokenLogprob(prompt[0], None, [])]
    target = torch.tensor(prompt[1:], dtype=torch.long, device=logp.device)
    if len(prompt) > 1:
        chosen = logp[:-1].gather(1, target[:, None])[:, 0].tolist()
        tops = torch.topk(logp[:-1], min(k, logp.shape[-1])) if k > 0 else None
        for t in range(1, len(prompt)):
            top = list(zip(tops.indices[t - 1].tolist(), tops.values[t - 1].tolist())) if tops is not None else []
            out.append(TokenLogprob(prompt[t], chosen[t - 1], top))
    return out
