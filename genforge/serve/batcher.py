"""The bridge between the asyncio server and the (blocking) engine: a bounded queue, one worker thread.

Requests become `Job`s (one row per choice). The worker thread takes the oldest waiting job and
every other waiting job that can share its batch (same sampling settings, fits the context),
runs them as one `Engine.generate` call, and streams each row's text back to its request's
asyncio queue with `loop.call_soon_threadsafe` -- the event loop never runs the model, so a long
generation never stalls other requests, `/health` or new connections.

This is static batching (a batch runs until its last row finishes; newcomers wait for the next
one), not vLLM's continuous batching: the engine's batched call is the unit of work, and on a
small CPU model the win that matters -- one forward pass for many requests instead of one each --
is already there. Rows end on their own: a per-row `stop_fn` enforces each request's max_tokens
and stop strings, and a cancelled job (client gone) stops its rows at the next token.

Sampled requests with a `seed` run alone, so the same request always gives the same text.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from genforge.infer.engine import StopFn
from genforge.infer.sampling import SamplingParams
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

    kind: str  # "delta" | "finish" | "end" | "error"
    index: int = 0
    text: str = ""
    finish_reason: str | None = None
    tokens: int = 0


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
    logits_processors: list = field(default_factory=list)  # this job's own (a tool-call grammar): it runs alone

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
                    out[-1] = Event("delta", ev.index, out[-1].text + ev.text)
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

    def __init__(self, generate_fn: GenerateFn, tokenizer: Tokenizer, *, stop_ids: Sequence[int], context_len: int,
                 max_batch: int = 16, max_queue: int = 64, batch_wait_s: float = 0.01):
        self.generate_fn, self.tokenizer = generate_fn, tokenizer
        self.stop_ids, self.context_len = list(stop_ids), context_len
        self.max_batch, self.max_queue = max(1, max_batch), max(1, max_queue)
        self.batch_wait_s = batch_wait_s
        self._last_jobs = 0  # jobs in the previous batch (> 1 means requests are arriving concurrently)
        self._waiting: list[Job] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.running = 0  # jobs in the current batch
        self.stats = {"jobs": 0, "batches": 0, "rows": 0, "tokens": 0, "cancelled": 0, "errors": 0}

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
                self.running = 0

    def _run(self, batch: list[Job]) -> None:
        """Generate one batch, streaming every row's deltas to its job."""
        rows: list[tuple[Job, int, StreamDecoder]] = [
            (job, i, StreamDecoder(self.tokenizer, job.sampling.stop))
            for job in batch for i in range(len(job.prompts))]
        prompts = [job.prompts[i] for job, i, _ in rows]
        finished = [False] * len(rows)
        s = batch[0].sampling
        max_new = max(job.max_tokens for job in batch)
        limit = min(max_new, self.context_len - max(len(p) for p in prompts))  # what the engine will allow

        def finish(r: int, reason: str) -> None:
            job, i, ts = rows[r]
            finished[r] = True
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
            job.send(Event("end"))
        log.debug("batch of %d rows (%d jobs) in %.3fs", len(rows), len(batch), time.perf_counter() - t0)
