"""Speculative-decoding prophets side by side on a speedrun's chat model: acceptance, tokens per target call and
wall-clock speedup over plain greedy decoding, each checked greedy-identical.

    .venv/bin/python benchmarks/prophets.py [--run runs/tiny] [--prompts 24] [--new-tokens 96] [--k 4]

Prophets: the distilled draft model the engine stage wrote (`engine/draft/checkpoint`), prompt lookup / n-gram
(`NGramProphet`, with a corpus table from the world's task responses), Medusa-style heads trained here on the
target's own greedy outputs for other prompts (`HeadsProphet`), and all of them at once (`MultiProphet`).
Runs alternate with the plain decode and the best of `--repeats` is kept, because the CPU is shared.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import genforge  # noqa: F401  (sets OMP_WAIT_POLICY)
from genforge.checkpoint import load_checkpoint
from genforge.infer.engine import generate
from genforge.infer.sampling import SamplingParams
from genforge.infer.speculative import HeadsProphet, ModelProphet, MultiProphet, NGramProphet, speculative_generate
from genforge.train.prophets import train_heads
from genforge.train.trainer import TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/tiny")
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--train-prompts", type=int, default=96)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--heads-steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    target, tok, _ = load_checkpoint(run / "sft" / "chat" / "checkpoint")
    draft, _, _ = load_checkpoint(run / "engine" / "draft" / "checkpoint")
    rows = [json.loads(line) for line in (run / "world" / "tasks" / "test.jsonl").read_text().splitlines()]
    train_rows = [json.loads(line) for line in (run / "world" / "tasks" / "train.jsonl").read_text().splitlines()]
    enc = [tok.encode_chat([{"role": "user", "content": r["prompt"]}], add_generation_prompt=True)[0] for r in rows]
    prompts = [p for p in enc if len(p) + args.new_tokens < target.config.max_seq_len][:args.prompts]
    params = SamplingParams(max_new_tokens=args.new_tokens)
    stop = [tok.end_id, tok.eos_id]
    # heads: trained on the target's own greedy answers to training prompts (what Medusa-1 recommends)
    tp = [tok.encode_chat([{"role": "user", "content": r["prompt"]}], add_generation_prompt=True)[0]
          for r in train_rows[:args.train_prompts]]
    tp = [p for p in tp if len(p) + args.new_tokens < target.config.max_seq_len]
    outs = generate(target, tp, params, stop_ids=stop)
    L = 48
    seqs = [p + o for p, o in zip(tp, outs) if len(p + o) >= L]
    windows = torch.stack([torch.tensor(s[-L:]) for s in seqs])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        heads = train_heads(target, windows, TrainConfig(max_steps=args.heads_steps, micro_batch=16, lr=3e-3,
                                                         warmup_steps=20, eval_every=0, progress=False,
                                                         resume=False), d, k=args.k)
    print(f"heads trained on {len(windows)} windows in {time.perf_counter() - t0:.0f} s")
    table = NGramProphet.from_corpus([tok.encode(r["response"]) for r in train_rows], n=3)
    prophets = {
        "draft model": lambda: ModelProphet(draft),
        "n-gram / prompt lookup": lambda: table,
        "Medusa heads": lambda: HeadsProphet(target, heads),
        "all (MultiProphet)": lambda: MultiProphet([table, HeadsProphet(target, heads), ModelProphet(draft)]),
    }
    ref = generate(target, prompts, params, stop_ids=stop)
    base = float("inf")
    results: dict[str, dict] = {}
    for _ in range(args.repeats):
        t = time.perf_counter()
        for p in prompts:
            generate(target, [p], params, stop_ids=stop)
        base = min(base, time.perf_counter() - t)
        for name, make in prophets.items():
            t = time.perf_counter()
            acc = prop = calls = n = 0
            for p, r in zip(prompts, ref):
                prophet = make()
                out, st = speculative_generate(target, prophet, p, params, k=args.k, stop_ids=stop)
                if isinstance(prophet, HeadsProphet):
                    prophet.close()
                elif isinstance(prophet, MultiProphet):
                    for q in prophet.prophets:
                        if isinstance(q, HeadsProphet):
                            q.close()
                assert out == r, f"{name}: output differs from greedy"
                acc, prop = acc + st["accepted"], prop + st["proposed"]
                calls, n = calls + st["n_target_calls"], n + len(out)
            sec = time.perf_counter() - t
            best = results.get(name, {}).get("seconds", float("inf"))
            results[name] = {"acceptance": acc / max(prop, 1), "tokens_per_call": n / max(calls, 1),
                             "seconds": min(best, sec)}
    print(f"{len(prompts)} prompts, {args.new_tokens} new tokens max, k={args.k}; plain greedy {base:.2f} s (best)")
    print(f"{'prophet':<24} {'acceptance':>10} {'tok/call':>9} {'speedup':>8}   (all greedy-identical)")
    for name, r in results.items():
        print(f"{name:<24} {r['acceptance']:>10.2f} {r['tokens_per_call']:>9.2f} {base / r['seconds']:>8.2f}")


if __name__ == "__main__":
    main()
