"""Attention's cost vs context length: time of one attention layer (scores materialised, and PyTorch's fused SDPA)
and the size of its T x T score matrix, the term that makes attention quadratic in the length.

    .venv/bin/python benchmarks/attention_cost.py [--lengths 128,256,512,1024,2048,4096] [--threads 1]

Prints, per length, milliseconds (best of 3), the ratio to the shortest length, the ratio a quadratic would
predict, and the score matrix in MiB. Also the whole GPT forward (depth 4, width 128) per length, where the
linear layers' linear cost dilutes the quadratic term at short lengths.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import genforge  # noqa: F401  (sets OMP_WAIT_POLICY before torch spins up threads)
from genforge.model.gpt import GPT, GPTConfig
from genforge.speedrun.objectives import attention_cost


def best_ms(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="128,256,512,1024,2048,4096")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lengths = [int(x) for x in args.lengths.split(",")]
    rows = attention_cost(lengths)
    model = GPT(GPTConfig(vocab_size=1024, depth=4, max_seq_len=max(lengths))).eval()
    print(f"{'length':>7} {'eager ms':>9} {'x short':>8} {'x quad':>7} {'sdpa ms':>8} {'GPT fwd ms':>10} "
          f"{'scores MiB':>10}")
    base = rows[0]
    for r in rows:
        T = r["length"]
        q, k, v = (torch.randn(1, 4, T, 32) for _ in range(3))
        sdpa = best_ms(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, is_causal=True))
        ids = torch.randint(0, 1024, (1, T))
        with torch.no_grad():
            fwd = best_ms(lambda ids=ids: model(ids))
        print(f"{T:>7} {r['ms']:>9.2f} {r['ms'] / base['ms']:>8.1f} {(T / base['length']) ** 2:>7.0f} {sdpa:>8.2f} "
              f"{fwd:>10.1f} {r['score_mib']:>10.1f}")


if __name__ == "__main__":
    main()
