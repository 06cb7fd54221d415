"""Compression trade-offs: size, quality and decode speed of int8 / bf16 / pruned variants of one model.

    .venv/bin/python benchmarks/compress.py                     # trains a small demo model first (~1 min)
    .venv/bin/python benchmarks/compress.py --checkpoint DIR --text FILE.txt [--compile]

For each variant: bytes (dense, and nonzero-only for pruned ones), perplexity on held-out text,
greedy agreement with the fp32 model (tokens generated before the first difference), and batch-1
decode tokens/s with our engine (eager; `--compile` adds the compiled step). Baseline: the fp32 model
in the same run.
"""

from __future__ import annotations

import argparse
import copy
import math
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

import genforge  # noqa: F401  (sets OMP_WAIT_POLICY)
from genforge.infer.compress import model_size_bytes, prune_magnitude, quantize_int8, sparsity, to_bf16
from genforge.infer.engine import Engine
from genforge.infer.sampling import SamplingParams
from genforge.model.gpt import GPT, GPTConfig
from genforge.tokenizer import TokenizerConfig, train_tokenizer
from genforge.train.losses import lm_loss
from genforge.train.trainer import TrainConfig, Trainer


def demo(args) -> tuple[GPT, list[int], list[list[int]]]:
    from speculative import Windows, toy_corpus  # benchmarks/speculative.py (same folder)

    docs = toy_corpus(500)
    tok = train_tokenizer(docs, TokenizerConfig(vocab_size=400))
    ids = np.array([t for d in docs for t in tok.encode(d, add_bos=True)], dtype=np.int64)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, depth=4, width=128, head_dim=32, max_seq_len=512))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        Trainer(model, TrainConfig(max_steps=args.train_steps, micro_batch=16, warmup_steps=10, lr=3e-3,
                                   eval_every=0, ckpt_every=0, log_every=10 ** 9, progress=False,
                                   threads=args.threads), lm_loss, Windows(ids, 128, 16), d).fit()
    print(f"demo model: {model.num_params() / 1e6:.2f} M params, trained {args.train_steps} steps "
          f"({time.perf_counter() - t0:.0f} s)")
    held = [tok.encode(d, add_bos=True) for d in toy_corpus(8, seed=7)]
    return model.eval(), [t for h in held for t in h], [h[:16] for h in held[:4]]


def from_checkpoint(args) -> tuple[GPT, list[int], list[list[int]]]:
    from genforge.checkpoint import load_checkpoint

    model, tok, _ = load_checkpoint(args.checkpoint)
    text = open(args.text).read()
    ids = tok.encode(text, add_bos=True)
    return model, ids, [ids[i:i + 16] for i in range(0, min(len(ids), 4 * 64), 64)]


def perplexity(model: torch.nn.Module, ids: list[int], window: int) -> float:
    nll, n = 0.0, 0
    with torch.inference_mode():
        for s in range(0, len(ids) - 1, window):
            x = torch.tensor([ids[s:s + window + 1]])
            if x.shape[1] < 2:
                break
            logits = model(x[:, :-1]).float()
            nll += F.cross_entropy(logits[0], x[0, 1:], reduction="sum").item()
            n += x.shape[1] - 1
    return math.exp(nll / max(n, 1))


def agreement(ref: list[list[int]], out: list[list[int]]) -> float:
    same = sum(next((i for i, (a, b) in enumerate(zip(r, o)) if a != b), len(r)) for r, o in zip(ref, out))
    return same / max(1, sum(map(len, ref)))


def tok_per_s(engine: Engine, prompts: list[list[int]], n: int, repeats: int) -> float:
    best = 1e9
    for _ in range(repeats):
        t = time.perf_counter()
        engine.generate(prompts[:1], SamplingParams(max_new_tokens=n))
        best = min(best, time.perf_counter() - t)
    return n / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint")
    ap.add_argument("--text", help="held-out text for perplexity (with --checkpoint)")
    ap.add_argument("--compile", action="store_true", help="also time the compiled decode step")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-steps", type=int, default=120)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, held, prompts = from_checkpoint(args) if args.checkpoint else demo(args)
    window = min(256, model.config.max_seq_len - 1)
    variants = {
        "fp32": model,
        "bf16": to_bf16(copy.deepcopy(model)),
        "int8 (blocks)": quantize_int8(copy.deepcopy(model)),
        "int8 (blocks + head)": quantize_int8(copy.deepcopy(model), include_head=True),
        "prune 30% unstructured": prune_magnitude(copy.deepcopy(model), 0.3),
        "prune 50% unstructured": prune_magnitude(copy.deepcopy(model), 0.5),
        "prune 25% heads": prune_magnitude(copy.deepcopy(model), 0.25, "heads"),
        "prune 25% neurons": prune_magnitude(copy.deepcopy(model), 0.25, "neurons"),
    }
    n = args.new_tokens
    ref = Engine(model).generate(prompts, SamplingParams(max_new_tokens=n))
    base_size, base_ppl = model_size_bytes(model), perplexity(model, held, window)
    print(f"\n{'variant':24s} {'MB':>6s} {'MB nnz':>7s} {'sparsity':>8s} {'ppl':>8s} {'greedy agree':>12s} "
          f"{'eager tok/s':>11s}" + (f" {'compiled tok/s':>14s}" if args.compile else ""))
    for name, m in variants.items():
        eng = Engine(m)
        out = eng.generate(prompts, SamplingParams(max_new_tokens=n))
        row = (f"{name:24s} {model_size_bytes(m) / 2**20:6.2f} {model_size_bytes(m, nonzero_only=True) / 2**20:7.2f} "
               f"{sparsity(m):8.2f} {perplexity(m, held, window):8.4f} {agreement(ref, out):12.0%} "
               f"{tok_per_s(eng, prompts, n, args.repeats):11.0f}")
        if args.compile:
            ce = Engine(m, compile=True)
            ce.warmup(1, len(prompts[0]), n)
            row += f" {tok_per_s(ce, prompts, n, args.repeats):14.0f}"
        print(row)
    print(f"\nbaseline fp32: {base_size / 2**20:.2f} MB, perplexity {base_ppl:.4f}")


if __name__ == "__main__":
    main()
