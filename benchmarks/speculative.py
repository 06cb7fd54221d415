"""Speculative decoding: acceptance rate and wall-clock speedup over our plain decode.

    .venv/bin/python benchmarks/speculative.py                       # self-contained demonstration (< 3 min)
    .venv/bin/python benchmarks/speculative.py --target DIR --draft DIR [--prompts FILE.txt]

Without checkpoints it builds its own demonstration: a tokenizer and a target model (depth 8)
trained briefly on a seeded, repetitive toy corpus, then a depth-1 draft distilled from it
(`genforge.train.distill`, initialised from the target's embeddings and first layer). Then, for
each k, it times greedy (and optionally sampled) generation of `--new-tokens` tokens with the
target alone (`Engine`, eager) and with `speculative_generate`, alternating runs and keeping the
best, because the CPU is shared. Prints acceptance rate, tokens per target call and speedup.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

import numpy as np
import torch

import genforge  # noqa: F401  (sets OMP_WAIT_POLICY)
from genforge.infer.engine import Engine
from genforge.infer.sampling import SamplingParams
from genforge.infer.speculative import speculative_generate
from genforge.model.gpt import GPT, GPTConfig
from genforge.tokenizer import TokenizerConfig, train_tokenizer
from genforge.train.distill import DistillConfig, make_loss_fn, student_from_teacher
from genforge.train.losses import lm_loss
from genforge.train.trainer import TrainConfig, Trainer

NAMES = ["alice", "bob", "carol", "dave", "erin", "frank"]
PLACES = ["the park", "the market", "the river", "the school", "the tower"]
THINGS = ["a red ball", "a blue kite", "an old book", "a green apple", "a small box"]


def toy_corpus(n_docs: int, seed: int = 0) -> list[str]:
    """Short templated stories: predictable enough that a small draft can guess a big model."""
    r = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        s = []
        for _ in range(8):
            a, b = r.sample(NAMES, 2)
            s.append(f"{a} went to {r.choice(PLACES)} with {b}. {b} found {r.choice(THINGS)} there.")
        docs.append(" ".join(s))
    return docs


class Windows:
    """Trainer data source: random windows of a token array, a pure function of (step, micro)."""

    def __init__(self, ids: np.ndarray, seq_len: int, batch: int, seed: int = 0):
        self.ids, self.seq_len, self.batch, self.seed = ids, seq_len, batch, seed

    def get_batch(self, step: int, micro: int, rank: int, world: int) -> dict:
        rng = np.random.default_rng([self.seed, step, micro, rank])
        starts = rng.integers(0, len(self.ids) - self.seq_len - 1, self.batch)
        rows = torch.from_numpy(np.stack([self.ids[s:s + self.seq_len + 1] for s in starts]).astype(np.int64))
        return {"input_ids": rows[:, :-1], "labels": rows[:, 1:]}


def build_demo(args) -> tuple[GPT, GPT, list[list[int]]]:
    t0 = time.perf_counter()
    docs = toy_corpus(600)
    tok = train_tokenizer(docs, TokenizerConfig(vocab_size=400))
    ids = np.array([t for d in docs for t in tok.encode(d, add_bos=True)], dtype=np.int64)
    torch.manual_seed(0)
    target = GPT(GPTConfig(vocab_size=tok.vocab_size, depth=args.target_depth, width=args.width, head_dim=32,
                           max_seq_len=512))
    data = Windows(ids, 128, 16)
    quiet = dict(eval_every=0, ckpt_every=0, log_every=10 ** 9, progress=False, threads=args.threads)
    with tempfile.TemporaryDirectory() as d:
        Trainer(target, TrainConfig(max_steps=args.train_steps, micro_batch=16, warmup_steps=10, lr=3e-3, **quiet),
                lm_loss, data, f"{d}/target").fit()
        print(f"target: depth {args.target_depth}, {target.num_params() / 1e6:.2f} M params, trained "
              f"{args.train_steps} steps ({time.perf_counter() - t0:.0f} s)")
        t1 = time.perf_counter()
        draft = student_from_teacher(target, GPTConfig(depth=1, width=0, vocab_size=0, max_seq_len=0), "teacher")
        cfg = DistillConfig(temperature=1.0, alpha=0.9)
        Trainer(draft, TrainConfig(max_steps=args.distill_steps, micro_batch=16, warmup_steps=10, lr=3e-3, **quiet),
                make_loss_fn(target, cfg.temperature, cfg.alpha), Windows(ids, 128, 16, seed=1), f"{d}/draft").fit()
    print(f"draft:  depth 1, {draft.num_params() / 1e6:.2f} M params, distilled {args.distill_steps} steps "
          f"({time.perf_counter() - t1:.0f} s)")
    held_out = toy_corpus(4, seed=99)
    prompts = [tok.encode(d, add_bos=True)[:24] for d in held_out]
    return target.eval(), draft.eval(), prompts


def load_pair(args) -> tuple[GPT, GPT, list[list[int]]]:
    from genforge.checkpoint import load_checkpoint

    target, tok, _ = load_checkpoint(args.target)
    draft, _, _ = load_checkpoint(args.draft)
    texts = open(args.prompts).read().splitlines() if args.prompts else ["Once upon a time", "The answer is"]
    enc = (lambda s: tok.encode(s, add_bos=True)) if tok is not None else (lambda s: [1])
    return target, draft, [enc(t) for t in texts if t.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", help="target checkpoint folder")
    ap.add_argument("--draft", help="draft checkpoint folder (same tokenizer)")
    ap.add_argument("--prompts", help="text file, one prompt per line (with --target)")
    ap.add_argument("--k", default="2,4,6")
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--temperature", type=float, default=0.0, help="also time sampling at this temperature if > 0")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--target-depth", type=int, default=8)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--train-steps", type=int, default=150)
    ap.add_argument("--distill-steps", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    target, draft, prompts = load_pair(args) if args.target else build_demo(args)
    engine = Engine(target)
    n = args.new_tokens
    temps = [0.0] + ([args.temperature] if args.temperature > 0 else [])
    for temp in temps:
        print(f"\ntemperature {temp}, {len(prompts)} prompts x {n} new tokens, threads={args.threads}")
        plain_best, spec_best, stats = 1e9, {}, {}
        for _ in range(args.repeats):  # alternate contenders: the shared CPU's load drifts
            t = time.perf_counter()
            ref = [engine.generate([p], SamplingParams(max_new_tokens=n, temperature=temp, seed=i))[0]
                   for i, p in enumerate(prompts)]
            plain_best = min(plain_best, time.perf_counter() - t)
            n_plain = sum(map(len, ref))
            for k in map(int, args.k.split(",")):
                t = time.perf_counter()
                outs, runs = [], []
                for i, p in enumerate(prompts):
                    params = SamplingParams(max_new_tokens=n, temperature=temp, seed=i)
                    o, s = speculative_generate(target, draft, p, params, k=k)
                    outs.append(o)
                    runs.append(s)
                spec_best[k] = min(spec_best.get(k, 1e9), time.perf_counter() - t)
                if temp == 0.0:
                    assert outs == ref, "greedy speculative output differs from greedy decoding"
                stats[k] = (sum(s["accepted"] for s in runs) / max(1, sum(s["proposed"] for s in runs)),
                            sum(map(len, outs)) / max(1, sum(s["n_target_calls"] for s in runs)), sum(map(len, outs)))
        print(f"  plain decode (Engine)   {n_plain / plain_best:7.0f} tok/s")
        for k, dt in spec_best.items():
            acc, per_call, n_spec = stats[k]
            speedup = (n_spec / dt) / (n_plain / plain_best)
            print(f"  speculative k={k}        {n_spec / dt:7.0f} tok/s   speedup {speedup:4.2f}x"
                  f"   acceptance {acc:.2f}   tokens/target call {per_call:.2f}")


if __name__ == "__main__":
    main()
