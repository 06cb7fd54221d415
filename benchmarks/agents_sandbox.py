"""Per-call overhead of the agent sandbox against a plain `python -c pass` subprocess.

    .venv/bin/python benchmarks/agents_sandbox.py [--calls 30]

Prints median ms per call for: the plain subprocess (reference, same interpreter), rlimits-only, and
bwrap (when this machine can start it), plus each one's ratio to the reference.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

from genforge.agents.sandbox import SandboxConfig, available_isolation, interpreter, run_python


def _median_ms(fn, calls: int) -> float:
    fn()  # warm the page cache
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=30)
    args = ap.parse_args()
    python = interpreter(SandboxConfig())
    ref = _median_ms(lambda: subprocess.run([python, "-I", "-c", "pass"], check=True), args.calls)
    print(f"plain subprocess ({python} -c pass): {ref:.1f} ms/call")
    modes = ["rlimits-only"] + (["bwrap"] if available_isolation() == "bwrap" else [])
    for mode in modes:
        cfg = SandboxConfig(isolation=mode)
        ms = _median_ms(lambda cfg=cfg: run_python("pass", cfg), args.calls)
        print(f"sandbox {mode:13s}: {ms:.1f} ms/call  ({ms / ref:.2f}x the plain subprocess, +{ms - ref:.1f} ms)")


if __name__ == "__main__":
    main()
