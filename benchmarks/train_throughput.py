"""Training throughput: genforge vs a same-shape HF LlamaForCausalLM, measured in the same run.

    python benchmarks/train_throughput.py                     # depth 6, width 256, vocab 4096, batch 16x256
    python benchmarks/train_throughput.py --compile           # also torch.compile genforge (reports warm-up)
    python benchmarks/train_throughput.py --steps 5 --batch 4 --seq 128   # a quick look

Each step is forward + backward + AdamW on random tokens. Steps alternate between the models in rounds so that a
busy machine slows all alike; the ratio is tokens/s over HF eager's (fp32, transformers' default).

"genforge" trains as `genforge pretrain` does by default (`train.precision=auto`: bf16 autocast on GPUs and on CPUs
with native bf16 instructions, fp32 elsewhere; the line says which). When that is bf16, "hf_same_precision" runs HF
under the same autocast, so the table separates what precision buys from what the model code buys.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

import genforge  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
from genforge.model.gpt import GPT, GPTConfig
from genforge.model.hf import to_hf_config, to_hf_state_dict
from genforge.runtime import autocast_dtype


def build(depth: int, width: int, vocab: int, seq: int):
    torch.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=vocab, depth=depth, width=width, max_seq_len=max(seq, 256)))
    cfg = {k: v for k, v in to_hf_config(ours.config).items() if k not in ("architectures", "torch_dtype")}
    hf = LlamaForCausalLM(LlamaConfig(**cfg))
    hf.load_state_dict(to_hf_state_dict(ours), strict=False)
    hf.config._attn_implementation = "sdpa"
    return ours, hf


def step_fn(model, opt, ids, hf: bool, dtype: torch.dtype | None = None):
    def step():
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            logits = model(ids).logits if hf else model(ids)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per model")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile(genforge)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ours, hf = build(args.depth, args.width, args.vocab, args.seq)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq))
    dtype = autocast_dtype(torch.device("cpu"), "auto")  # what the Trainer uses here by default
    runs = {"hf_eager": step_fn(hf, torch.optim.AdamW(hf.parameters(), 1e-4), ids, True),
            "genforge": step_fn(ours, torch.optim.AdamW(ours.parameters(), 1e-4), ids, False, dtype)}
    if dtype is not None:
        _, hf2 = build(args.depth, args.width, args.vocab, args.seq)
        runs["hf_same_precision"] = step_fn(hf2, torch.optim.AdamW(hf2.parameters(), 1e-4), ids, True, dtype)
    if args.compile:
        ours_c, _ = build(args.depth, args.width, args.vocab, args.seq)
        compiled = torch.compile(ours_c)
        t0 = time.perf_counter()
        f = step_fn(compiled, torch.optim.AdamW(ours_c.parameters(), 1e-4), ids, False, dtype)
        f()
        f()
        print(f"torch.compile warm-up: {time.perf_counter() - t0:.1f} s (two steps)")
        runs["genforge_compiled"] = f
    for f in runs.values():  # warm-up step each
        f()
    times = {k: 0.0 for k in runs}
    cpu = {k: 0.0 for k in runs}
    for _ in range(args.steps):  # interleave so machine load hits all alike
        for k, f in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            f()
            times[k] += time.perf_counter() - t0
            cpu[k] += time.process_time() - c0
    tokens = args.batch * args.seq * args.steps
    print(f"shape: depth {args.depth}, width {args.width}, vocab {args.vocab}, batch {args.batch}x{args.seq}, "
          f"{torch.get_num_threads()} threads, {args.steps} steps; genforge precision: "
          f"{'bf16 autocast' if dtype is not None else 'fp32'}")
    base, base_cpu = tokens / times["hf_eager"], tokens / cpu["hf_eager"]
    for k, t in times.items():
        print(f"{k:18s} {tokens / t:10,.0f} tokens/s   ratio vs HF eager {tokens / t / base:5.2f}x   "
              f"(CPU time: {tokens / cpu[k]:,.0f} tokens/CPU-s, {tokens / cpu[k] / base_cpu:5.2f}x)")


if __name__ == "__main__":
    main()
