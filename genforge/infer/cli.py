"""Command-line entry points of the inference package (registered by `genforge.cli` as a plugin).

    genforge distill teacher=DIR shards=DIR out_dir=DIR model.depth=1 ...
    genforge watermark detect CHECKPOINT --text "..." [--gamma 0.25 --key 15485863 --context 1]
    genforge prune CHECKPOINT OUT --sparsity 0.3 [--structured heads|neurons]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register `distill`, `watermark detect` and `prune`."""
    from genforge.cli import add_config_command
    from genforge.train.distill import DistillConfig

    add_config_command(subparsers, "distill", DistillConfig, cli_distill,
                       "distil a teacher checkpoint into a smaller student (e.g. a speculative-decoding draft)")

    wm = subparsers.add_parser("watermark", help="detect the green-list watermark in text (Kirchenbauer et al. 2023)")
    wsub = wm.add_subparsers(dest="watermark_cmd", required=True)
    p = wsub.add_parser("detect", help="z-score of green tokens in a text (needs only the tokenizer and the key)")
    p.add_argument("checkpoint", help="checkpoint (or tokenizer) folder whose tokenizer wrote the text")
    p.add_argument("--text", help="text to score (default: stdin)")
    p.add_argument("--gamma", type=float, default=0.25)
    p.add_argument("--key", type=int, default=15485863)
    p.add_argument("--context", type=int, default=1)
    p.add_argument("--z-threshold", type=float, default=4.0)
    p.set_defaults(func=cli_watermark_detect)

    p = subparsers.add_parser("prune", help="magnitude-prune a checkpoint and save it (pruned weights stored as 0)")
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--sparsity", type=float, required=True, help="fraction of block weights (or heads/neurons)")
    p.add_argument("--structured", choices=["heads", "neurons"], default=None)
    p.set_defaults(func=cli_prune)


def cli_distill(cfg) -> dict:
    from genforge.train.distill import run_distill

    r = run_distill(cfg)
    extra = f"  val loss {r['val_loss']:.4f}  agreement {r['agreement']:.1%}" if "val_loss" in r else ""
    print(f"distill: student {r['student_params']:,} params (teacher {r['teacher_params']:,}), "
          f"train loss {r['train_loss']:.4f}{extra}  -> {cfg.out_dir}/checkpoint")
    return r


def cli_watermark_detect(args: argparse.Namespace) -> int:
    from genforge.infer.watermark import WatermarkConfig, detect
    from genforge.tokenizer import Tokenizer

    tok = Tokenizer.load(args.checkpoint)
    vocab = tok.vocab_size
    if (Path(args.checkpoint) / "config.json").exists():  # green lists span the model's vocabulary
        from genforge.model.hf import read_hf_config

        vocab = read_hf_config(args.checkpoint)["vocab_size"]
    text = args.text if args.text is not None else sys.stdin.read()
    cfg = WatermarkConfig(gamma=args.gamma, key=args.key, context=args.context, z_threshold=args.z_threshold)
    # re-tokenizing text may not give back the generated ids exactly (BPE merges): z is then a bit lower
    print(json.dumps(detect(tok.encode(text), vocab, cfg), indent=2))
    return 0


def cli_prune(args: argparse.Namespace) -> int:
    from genforge.checkpoint import load_checkpoint, save_checkpoint
    from genforge.infer.compress import prune_magnitude, sparsity

    model, tok, meta = load_checkpoint(args.checkpoint)
    prune_magnitude(model, args.sparsity, args.structured)
    save_checkpoint(args.out, model, tok, meta.get("run"),
                    {**{k: v for k, v in meta.items() if k != "run"}, "pruned": {
                        "sparsity": args.sparsity, "structured": args.structured, "zero_fraction": sparsity(model)}})
    print(f"pruned {args.checkpoint}: {sparsity(model):.1%} of block weights are zero -> {args.out}")
    return 0
