"""Load test for `genforge serve`: N concurrent streaming clients x M requests.

    python benchmarks/serve_load.py                          # tiny random model, 16 clients x 200 requests
    python benchmarks/serve_load.py --concurrency 4 --requests 50 --max-tokens 64
    python benchmarks/serve_load.py --checkpoint runs/tiny/sft/chat/checkpoint
    python benchmarks/serve_load.py --url http://127.0.0.1:8000   # an already running server

Without --url it starts the server itself (a subprocess on 127.0.0.1, a free port) on --checkpoint or,
by default, on a tiny random-weight model saved to a temp folder. Every client streams
/v1/chat/completions (SSE) and records time to first token (TTFT), total latency and the tokens of
each reply (from the final usage chunk). Reported: p50/p99 TTFT and latency, total tokens/s, and
the HTTP status counts; 5xx must be 0 (exit status 1 otherwise). As a reference measured in the
same run, one client first sends --baseline requests one after another, so the printed ratio says
what concurrency (i.e. the server's batching) buys over serving one request at a time.
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


async def one_request(client: httpx.AsyncClient, model: str, i: int, max_tokens: int, temperature: float) -> Result:
    body = {"model": model, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
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


async def run_load(url: str, model: str, concurrency: int, requests: int, max_tokens: int,
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
                results.append(await one_request(client, model, i, max_tokens, temperature))

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


def start_server(checkpoint: str, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    """`python -m genforge serve CHECKPOINT` on a free loopback port; waits for /health."""
    port = free_port()
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    cmd = [sys.executable, "-m", "genforge", "serve", checkpoint, "host=127.0.0.1", f"port={port}",
           "model_name=bench", f"max_queue={max(64, args.concurrency * 2)}",
           f"max_batch={args.max_batch}", f"batch_wait_ms={args.batch_wait_ms}",
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="an already running server (default: start one)")
    ap.add_argument("--checkpoint", help="checkpoint to serve (default: a tiny random model)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--baseline", type=int, default=20, help="sequential single-client requests as the reference "
                    "(0: skip)")
    ap.add_argument("--depth", type=int, default=4, help="tiny random model depth (width = 32 * depth)")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--batch-wait-ms", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=1, help="server torch threads")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url
        if url is None:
            ckpt = args.checkpoint or tiny_checkpoint(Path(tmp), args.depth, max_seq_len=256)
            proc, url = start_server(ckpt, args)
        try:
            model = httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]
            print(f"server {url}, model {model!r}, max_tokens {args.max_tokens}, temperature {args.temperature}")
            asyncio.run(run_load(url, model, 1, 2, args.max_tokens, args.temperature))  # warm-up
            out: dict = {}
            if args.baseline:
                out["baseline"] = summarize(f"reference: 1 client x {args.baseline}",
                                            *asyncio.run(run_load(url, model, 1, args.baseline, args.max_tokens,
                                                                  args.temperature)))
            name = f"load: {args.concurrency} clients x {args.requests}"
            cpu0 = (cpu_seconds(), cpu_seconds(proc.pid) if proc else float("nan"))
            out["load"] = summarize(name, *asyncio.run(run_load(url, model, args.concurrency, args.requests,
                                                                args.max_tokens, args.temperature)))
            out["load"]["client_cpu_s"] = cpu_seconds() - cpu0[0]
            out["load"]["server_cpu_s"] = (cpu_seconds(proc.pid) if proc else float("nan")) - cpu0[1]
            print(f"CPU during the load phase: server {out['load']['server_cpu_s']:.1f} s "
                  f"({out['load']['tokens'] / out['load']['server_cpu_s']:.0f} tokens per server CPU second), "
                  f"load generator {out['load']['client_cpu_s']:.1f} s, wall {out['load']['wall_s']:.1f} s "
                  f"({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})")
            health = httpx.get(url + "/health", timeout=10).json()
            if health.get("batches"):
                print(f"server: {health['jobs']} jobs in {health['batches']} batches "
                      f"({health['rows'] / health['batches']:.1f} rows per batch on average)")
            if args.baseline:
                ratio = out["load"]["tokens_per_s"] / out["baseline"]["tokens_per_s"]
                print(f"throughput ratio, {args.concurrency} concurrent vs 1 at a time: {ratio:.2f}x")
                out["throughput_ratio"] = ratio
            if args.json:
                Path(args.json).write_text(json.dumps(out, indent=2))
        finally:
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    n_5xx = out["load"]["n_5xx"] + out.get("baseline", {}).get("n_5xx", 0)
    if n_5xx:
        print(f"FAIL: {n_5xx} server errors (5xx)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
