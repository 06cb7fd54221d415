"""`GET /metrics` in the Prometheus text format (`prometheus_client`), one registry per app.

What a load test or a dashboard needs to see a server under load: requests waiting (queue depth) and rows
running, tokens generated and their rate, time to first token (TTFT), end-to-end latency and time per output
token as histograms, and the prefix cache's queries, hits and reused tokens. Names follow vLLM's where one
exists (`..._time_to_first_token_seconds`, `..._e2e_request_latency_seconds`), prefixed `genforge_`.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

from genforge.extras import require

# seconds; TTFT on a loaded CPU ranges from milliseconds to tens of seconds
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
RATE_WINDOW_S = 10.0  # tokens/s is measured over this trailing window


class ServeMetrics:
    """The server's Prometheus metrics; the batchers call `first_token`, `tokens` and `finished`."""

    def __init__(self) -> None:
        prom = require("prometheus_client", "serve")
        self._prom = prom
        self.registry = r = prom.CollectorRegistry()
        self.requests = prom.Counter("genforge_requests", "Generation requests accepted", registry=r)
        self.prompt_tokens = prom.Counter("genforge_prompt_tokens", "Prompt tokens of accepted rows", registry=r)
        self.generation_tokens = prom.Counter("genforge_generation_tokens", "Tokens generated", registry=r)
        self.queue_depth = prom.Gauge("genforge_queue_depth", "Requests waiting for a batch slot", registry=r)
        self.running = prom.Gauge("genforge_running_rows", "Rows (choices) decoding now", registry=r)
        self.tokens_per_second = prom.Gauge("genforge_tokens_per_second",
                                            f"Tokens generated per second over the last {RATE_WINDOW_S:g} s",
                                            registry=r)
        self.ttft = prom.Histogram("genforge_time_to_first_token_seconds", "Submission to first token, per row",
                                   buckets=_LATENCY_BUCKETS, registry=r)
        self.latency = prom.Histogram("genforge_e2e_request_latency_seconds", "Submission to last token, per request",
                                      buckets=_LATENCY_BUCKETS, registry=r)
        self.tpot = prom.Histogram("genforge_time_per_output_token_seconds",
                                   "Mean time between a row's tokens after the first", buckets=_TPOT_BUCKETS,
                                   registry=r)
        self.prefix_queries = prom.Counter("genforge_prefix_cache_queries", "Prompts looked up in the prefix cache",
                                           registry=r)
        self.prefix_hits = prom.Counter("genforge_prefix_cache_hits", "Prompts that reused cached prefix keys/values",
                                        registry=r)
        self.prefix_hit_tokens = prom.Counter("genforge_prefix_cache_hit_tokens", "Prompt tokens not recomputed",
                                              registry=r)
        self._lock = threading.Lock()
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self.tokens_per_second.set_function(self._rate)

    def bind(self, batcher: Any) -> None:
        """Read queue depth and running rows from the batcher when scraped."""
        self.queue_depth.set_function(lambda: batcher.waiting)
        self.running.set_function(lambda: batcher.running_rows)

    def accepted(self, prompt_tokens: int) -> None:
        self.requests.inc()
        self.prompt_tokens.inc(prompt_tokens)

    def first_token(self, submitted: float) -> None:
        self.ttft.observe(time.monotonic() - submitted)

    def tokens(self, n: int = 1) -> None:
        self.generation_tokens.inc(n)
        now = time.monotonic()
        with self._lock:
            self._recent.append((now, n))

    def row_done(self, first: float | None, tokens: int) -> None:
        if first is not None and tokens > 1:
            self.tpot.observe((time.monotonic() - first) / (tokens - 1))

    def finished(self, submitted: float) -> None:
        self.latency.observe(time.monotonic() - submitted)

    def prefix(self, hit_tokens: int) -> None:
        self.prefix_queries.inc()
        if hit_tokens:
            self.prefix_hits.inc()
            self.prefix_hit_tokens.inc(hit_tokens)

    def _rate(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
                self._recent.popleft()
            return sum(n for _, n in self._recent) / RATE_WINDOW_S

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of a scrape."""
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST
