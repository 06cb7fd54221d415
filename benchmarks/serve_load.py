"""Load test for `genforge serve`: static vs continuous batching, N concurrent streaming clients, mixed lengths.

    python benchmarks/serve_load.py                          # tiny random model, 16 and 64 clients, both modes
    python benchmarks/serve_load.py --concurrency 16 --requests 100
    python benchmarks/serve_load.py --checkpoint runs/tiny/sft/chat/checkpoint
    python benchmarks/serve_load.py --url http://127.0.0.1:8000   # an already running server (its own mode)

Without --url it starts the server itself (a subprocess on 127.0.0.1, a free port) on --checkpoint or,
by default, on a tiny random-weight model saved to a temp folder -- once with `batching=static` (a batch
runs until its longest row ends; newcomers wait) and once with `batching=continuous` (rows join and leave
between decode steps), the same requests against each. Requests mix prompt lengths (a few words to ~100
tokens) and output lengths (--max-tokens cycles through several caps, e.g. 8/24/64/160: the random model
never stops early, so each reply runs to its cap), which is where static batching wastes its slots.
Every client streams /v1/chat/completions (SSE) and records time to first token (TTFT), total latency and
the tokens of each reply (from the final usage chunk). Reported per mode and concurrency: p50/p99 TTFT and
latency, total tokens/s, HTTP status counts (5xx must be 0: exit status 1 otherwise), and the ratios
continuous / static measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

PROMPTS = ["hello there", "what is one plus two?", "tell me about Alice and her red kite",
           "where does the dog run?", "count to five", "say something about the cat on the mat"]
LONG = " Alice lives in Brightwater; Bob keeps a lamp, a map and a red kite."  # repeated to lengthen prompts


def request_shape(i: int, caps: list[int]) -> tuple[str, int]:
    """Request i's prompt (short to ~100 tokens) and max_tokens (cycling through caps, out of step with prompts)."""
    prompt = PROMPTS[i % len(PROMPTS)] + LONG * ((i * 7) % 5)
    return prompt, caps[(i * 3) % len(caps)]


@dataclass
class Result:
    status: int
    ttft: float | None = None  # seconds to the first non-empty content delta
    latency: float = 0.0  # seconds to [DONE]
    tokens: int = 0


def pct(xs: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of xs."""
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * len(xs) + 0.5) - 1))]


async def one_request(client: httpx.AsyncClient, model: str, i: int, caps: list[int], temperature: float) -> Result:
    prompt, max_tokens = request_shape(i, caps)
    body = {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": temperature, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    res = Result(status=0)
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            res.status = r.status_code
            if r.status_code != 200:
                await r.aread()
                res.latency = time.perf_counter() - t0
                return res
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                ev = json.loads(data)
                if "error" in ev:
                    res.status = 500  # an in-band failure counts as a server error
                    continue
                if ev.get("usage"):
                    res.tokens = ev["usage"]["completion_tokens"]
                for c in ev.get("choices", []):
                    if c["delta"].get("content") and res.ttft is None:
                        res.ttft = time.perf_counter() - t0
    except httpx.HTTPError as e:
        print(f"request {i}: {type(e).__name__}: {e}", file=sys.stderr)
        res.status = 599
    res.latency = time.perf_counter() - t0
    return res


async def run_load(url: str, model: str, concurrency: int, requests: int, caps: list[int],
                   temperature: float) -> tuple[list[Result], float]:
    """`concurrency` clients share `requests` requests; returns the results and the wall time."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=httpx.Timeout(300.0)) as client:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(requests):
            queue.put_nowait(i)
        results: list[Result] = []

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                results.append(await one_request(client, model, i, caps, temperature))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return results, time.perf_counter() - t0


def summarize(name: str, results: list[Result], wall: float) -> dict:
    ok = [r for r in results if r.status == 200]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    lat = [r.latency for r in ok]
    tokens = sum(r.tokens for r in ok)
    s = {"requests": len(results), "ok": len(ok), "wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall,
         "requests_per_s": len(ok) / wall, "ttft_p50": pct(ttft, 50), "ttft_p99": pct(ttft, 99),
         "latency_p50": pct(lat, 50), "latency_p99": pct(lat, 99),
         "status": dict(Counter(r.status for r in results)), "n_5xx": sum(r.status >= 500 for r in results)}
    print(f"{name}: {s['ok']}/{s['requests']} ok in {wall:.1f} s | TTFT p50 {s['ttft_p50'] * 1e3:.0f} ms "
          f"p99 {s['ttft_p99'] * 1e3:.0f} ms | latency p50 {s['latency_p50'] * 1e3:.0f} ms "
          f"p99 {s['latency_p99'] * 1e3:.0f} ms | {s['tokens_per_s']:.0f} tokens/s, {s['requests_per_s']:.1f} req/s "
          f"| status {s['status']} | 5xx {s['n_5xx']}")
    return s


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (this one by default), from /proc where there is one."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: str, args: argparse.Namespace, batching: str) -> tuple[subprocess.Popen, str]:
    """`python -m genforge serve CHECKPOINT batching=...` on a free loopback port; waits for /health."""
    port = free_port()
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    cmd = [sys.executable, "-m", "genforge", "serve", checkpoint, "host=127.0.0.1", f"port={port}",
           "model_name=bench", f"max_queue={max(64, max(args.concurrency) * 2)}",
           f"max_batch={args.max_batch}", f"batch_wait_ms={args.batch_wait_ms}", f"batching={batching}",
           f"threads={args.threads}", "log_level=warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become healthy within 60 s")


def tiny_checkpoint(folder: Path, depth: int, max_seq_len: int) -> str:
    """Save a random-weight model (depth `depth`, width 32 * depth) with a tiny tokenizer."""
    from genforge.checkpoint import save_checkpoint
    from genforge.serve.testing import tiny_model_and_tokenizer

    model, tok = tiny_model_and_tokenizer(max_seq_len=max_seq_len, depth=depth, width=32 * depth)
    n = sum(p.numel() for p in model.parameters())
    print(f"tiny random model: depth {depth}, width {32 * depth}, {n / 1e6:.2f} M parameters, "
          f"vocab {tok.vocab_size}, context {max_seq_len}")
    return str(save_checkpoint(folder / "tiny", model, tok))


def load_phase(url: str, model: str, args: argparse.Namespace, label: str, proc: subprocess.Popen | None) -> dict:
    """Every --concurrency level against one server; returns {concurrency: summary}."""
    out: dict = {}
    asyncio.run(run_load(url, model, 1, 2, args.caps, args.temperature))  # warm-up
    for conc in args.concurrency:
        cpu0 = cpu_seconds(proc.pid) if proc else float("nan")
        s = summarize(f"{label:10s} {conc:3d} clients x {args.requests}",
                      *asyncio.run(run_load(url, model, conc, args.requests, args.caps, args.temperature)))
        s["server_cpu_s"] = (cpu_seconds(proc.pid) if proc else float("nan")) - cpu0
        out[conc] = s
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="an already running server (default: start one per batching mode)")
    ap.add_argument("--checkpoint", help="checkpoint to serve (default: a tiny random model)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--requests", type=int, default=192)
    ap.add_argument("--caps", type=int, nargs="+", default=[8, 24, 64, 160], help="max_tokens values cycled through")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--modes", nargs="+", default=["static", "continuous"])
    ap.add_argument("--depth", type=int, default=4, help="tiny random model depth (width = 32 * depth)")
    ap.add_argument("--max-batch", type=int, default=32, help="rows per batch (continuous: KV-cache slots)")
    ap.add_argument("--batch-wait-ms", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=1, help="server torch threads")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.url is not None:
            model = httpx.get(args.url + "/v1/models", timeout=10).json()["data"][0]["id"]
            out["server"] = load_phase(args.url, model, args, "server", None)
        else:
            ckpt = args.checkpoint or tiny_checkpoint(Path(tmp), args.depth, max_seq_len=512)
            print(f"caps {args.caps}, temperature {args.temperature}, max_batch {args.max_batch}, "
                  f"{os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f})")
            for mode in args.modes:
                proc, url = start_server(ckpt, args, mode)
                try:
                    model = httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]
                    out[mode] = load_phase(url, model, args, mode, proc)
                finally:
                    proc.terminate()
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
    if "static" in out and "continuous" in out:
        print("\ncontinuous / static (same requests, same run):")
        for conc in args.concurrency:
            a, b = out["continuous"][conc], out["static"][conc]
            ratios = {"throughput": a["tokens_per_s"] / b["tokens_per_s"], "ttft_p50": a["ttft_p50"] / b["ttft_p50"],
                      "ttft_p99": a["ttft_p99"] / b["ttft_p99"], "latency_p50": a["latency_p50"] / b["latency_p50"]}
            out.setdefault("ratios", {})[conc] = ratios
            print(f"  {conc:3d} clients: throughput {ratios['throughput']:.2f}x, TTFT p50 {ratios['ttft_p50']:.2f}x, "
                  f"TTFT p99 {ratios['ttft_p99']:.2f}x, latency p50 {ratios['latency_p50']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    n_5xx = sum(s["n_5xx"] for mode in out.values() if isinstance(mode, dict) for s in mode.values()
                if isinstance(s, dict) and "n_5xx" in s)
    if n_5xx:
        print(f"FAIL: {n_5xx} server errors (5xx)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
