"""`genforge <command>`: a thin layer that parses a config and calls the stage's `main(cfg)`.

Config commands take an optional `--config recipe.yaml` and any number of `key=value` overrides
(`genforge pretrain model.depth=6 train.max_steps=2000`); `--help` lists every key with its default.
Anticipated failures (`GenforgeError`) print one line and exit 2; anything else keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import re
import sys
import typing
from collections.abc import Callable
from pathlib import Path

from genforge.errors import ConfigError, GenforgeError

# Subcommands other modules register: each names "module:add_cli", a function add_cli(subparsers)
# that adds its parser(s) and sets `func` on them. Modules that are missing are skipped.
PLUGINS = [
    "genforge.train.sft:add_cli",
    "genforge.chat:add_cli",
    "genforge.eval.harness:add_cli",
    "genforge.train.reward:add_cli",
    "genforge.train.dpo:add_cli",
    "genforge.train.ppo:add_cli",
    "genforge.train.grpo:add_cli",
    "genforge.serve.app:add_cli",
    "genforge.infer.cli:add_cli",
]


def field_help(cls: type, prefix: str = "") -> list[str]:
    """One line per config key: 'key = default  # comment' (comments read from the dataclass source)."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        src = ""
    comments = dict(re.findall(r"^\s+(\w+)\s*:[^=\n]*=[^#\n]*#\s*(.+)$", src, flags=re.M))
    hints = typing.get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        typ = hints.get(f.name)
        if dataclasses.is_dataclass(typ):
            lines += field_help(typ, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        c = comments.get(f.name, "")
        lines.append(f"  {prefix}{f.name} = {default!r}" + (f"    # {c}" if c else ""))
    return lines


def add_config_command(sub, name: str, cls: type, run: Callable, help: str, positional: list[str] | None = None):
    """Register `genforge NAME [--config YAML] [key=value ...]` that builds `cls` and calls run(cfg)."""
    doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else help
    p = sub.add_parser(name, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="config keys (set with key=value):\n" + "\n".join(field_help(cls)))
    for pos in positional or []:
        p.add_argument(pos, help=f"sets the config key '{pos}'")
    p.add_argument("--config", "-c", help="YAML recipe (see recipes/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")

    def handler(args):
        from genforge.config import load_config, parse_overrides

        ov = parse_overrides(args.overrides)
        for pos in positional or []:
            ov[pos] = getattr(args, pos)
        return run(load_config(cls, args.config, ov))

    p.set_defaults(func=handler)
    return p


def add_stage_command(sub, name: str, cls: type, main_fn: Callable, help: str):
    """A config command for a training stage: runs main_fn(cfg), prints its metrics and the checkpoint path."""

    def run(cfg):
        import json

        result = main_fn(cfg)
        print(json.dumps(result, indent=2, default=str))
        print(f"-> {Path(cfg.out_dir) / 'checkpoint'}")

    return add_config_command(sub, name, cls, run, help)


# ------------------------------------------------------------------ built-in commands
def _speedrun(cfg):
    from genforge.speedrun import main

    return main(cfg)


def _pretrain(cfg):
    from genforge.train.pretrain import main

    res = main(cfg)
    print(f"val loss {res.get('val_loss', float('nan')):.4f}  ppl {res.get('val_ppl', float('nan')):.2f}  "
          f"bpb {res.get('val_bpb', float('nan')):.3f}  {res['tokens_per_s']:,.0f} tokens/s  -> "
          f"{Path(cfg.out_dir) / 'checkpoint'}")


def _tokenizer_train(args):
    from genforge.data.readers import iter_documents
    from genforge.tokenizer import TokenizerConfig, train_tokenizer

    tok = train_tokenizer((d.text for d in iter_documents(args.inputs)),
                          TokenizerConfig(vocab_size=args.vocab_size, split_digits=not args.no_split_digits))
    tok.save(args.out)
    print(f"trained a {tok.vocab_size}-token byte-level BPE tokenizer -> {args.out}/tokenizer.json")


def _data_world(args):
    from genforge.world import generate_world

    summary = generate_world(args.out, seed=args.seed, size=args.size)
    print(f"tiny world ({args.size}, seed {args.seed}) -> {args.out}")
    for k, v in summary.items():
        if not isinstance(v, (dict, list)):
            print(f"  {k}: {v}")


def _data_clean(args):
    from genforge.data.pipeline import CleanConfig, clean_corpus

    report = clean_corpus(args.inputs, args.out, CleanConfig())
    print(report.summary() if hasattr(report, "summary") else report)


def _data_pack(args):
    from genforge.data.readers import iter_documents
    from genforge.data.shards import pack_shards
    from genforge.tokenizer import Tokenizer

    tok = Tokenizer.load(args.tokenizer)
    m = pack_shards((d.text for d in iter_documents(args.inputs)), tok, args.out, val_fraction=args.val_fraction)
    s = m["splits"]
    print(f"packed {s['train']['n_tokens']:,} train / {s['val']['n_tokens']:,} val tokens ({m['dtype']}) -> {args.out}")


def _import(args):
    from genforge.checkpoint import import_hf

    out = import_hf(args.src, args.dst)
    print(f"imported {args.src} -> {out}")


def _export(args):
    from genforge.checkpoint import load_checkpoint, save_checkpoint

    model, tok, meta = load_checkpoint(args.src)
    out = save_checkpoint(args.dst, model, tok, meta.get("run"), {k: v for k, v in meta.items() if k != "run"})
    print(f"exported {args.src} -> {out} (HF layout: load with AutoModelForCausalLM.from_pretrained)")


def _generate(args):
    from genforge.checkpoint import load_checkpoint, load_model
    from genforge.errors import CheckpointError
    from genforge.infer.sampling import SamplingParams
    from genforge.text import detokenize, render_prompt, stop_ids_for, stream_text

    model, tok, _ = load_checkpoint(args.checkpoint)
    if tok is None:
        raise CheckpointError(f"{args.checkpoint}: no tokenizer.json beside the weights; cannot turn text into ids")
    if args.adapter:
        from genforge.model.peft import load_adapter

        model = load_adapter(model, args.adapter)
    if args.quantize == "int8":
        from genforge.infer.compress import quantize_int8

        model = quantize_int8(model)
    elif args.quantize == "bf16":
        from genforge.infer.compress import to_bf16

        model = to_bf16(model)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed, stop=list(args.stop or ()), watermark=args.watermark,
                            watermark_key=args.watermark_key)
    draft = load_model(args.draft) if args.draft else None
    prompts = args.prompt or [sys.stdin.read()]
    for prompt in prompts:
        print(f"### {prompt.strip()}" if len(prompts) > 1 or not args.prompt else prompt, end="" if
              len(prompts) == 1 and args.prompt else "\n", flush=True)
        if draft is not None:  # speculative decoding: the draft proposes, the target verifies
            from genforge.infer.speculative import speculative_generate

            if args.watermark:
                raise ConfigError("--watermark and --draft cannot be combined (the verifier samples the target)")
            ids, stats = speculative_generate(model, draft, render_prompt(tok, prompt, chat=args.chat), params,
                                              k=args.draft_k, stop_ids=stop_ids_for(tok, args.chat))
            print(detokenize(tok, ids, params.stop))
            print(f"[speculative: acceptance {stats['acceptance_rate']:.2f}, "
                  f"{stats['tokens_per_target_call']:.2f} tokens per target call]", file=sys.stderr)
            continue
        for delta in stream_text(model, tok, prompt, params, chat=args.chat):
            print(delta, end="", flush=True)
        print()


def build_parser() -> argparse.ArgumentParser:
    from genforge import __version__
    from genforge.speedrun import SpeedrunConfig
    from genforge.train.pretrain import PretrainConfig

    parser = argparse.ArgumentParser(
        prog="genforge", description="Forge generative models end to end: data, tokenizer, pretraining, SFT, PEFT, "
        "alignment, evaluation, inference and serving.",
        epilog="Start with `genforge speedrun` (the whole lifecycle on the embedded tiny world).")
    parser.add_argument("--version", action="version", version=f"genforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    add_config_command(sub, "speedrun", SpeedrunConfig, _speedrun,
                       "the whole lifecycle on the tiny world -> report card")
    add_config_command(sub, "pretrain", PretrainConfig, _pretrain, "pretrain a model on packed token shards")

    data = sub.add_parser("data", help="make the tiny world, clean corpora, pack token shards")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = dsub.add_parser("world", help="generate the embedded tiny world (corpus, tasks, preferences, knowledge)")
    p.add_argument("out")
    p.add_argument("--size", default="tiny", choices=["smoke", "tiny", "small"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_data_world)
    p = dsub.add_parser("clean", help="normalise, filter junk/harmful text and deduplicate a corpus")
    p.add_argument("inputs", nargs="+", help=".txt / .jsonl / .parquet files or folders")
    p.add_argument("--out", required=True, help="cleaned .jsonl to write")
    p.set_defaults(func=_data_clean)
    p = dsub.add_parser("pack", help="tokenize documents into train/val token shards")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--tokenizer", required=True, help="folder with tokenizer.json")
    p.add_argument("--out", required=True)
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.set_defaults(func=_data_pack)

    tok = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer")
    tsub = tok.add_subparsers(dest="tok_command", metavar="ACTION", required=True)
    p = tsub.add_parser("train", help="train on .txt/.jsonl files")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--no-split-digits", action="store_true", help="let BPE merge digits")
    p.set_defaults(func=_tokenizer_train)

    p = sub.add_parser("generate", help="sample text from a checkpoint (streams tokens)")
    p.add_argument("checkpoint", help="checkpoint folder")
    p.add_argument("--prompt", "-p", action="append", help="prompt text (repeatable; default: read stdin)")
    p.add_argument("--max-new-tokens", "-n", type=int, default=64)
    p.add_argument("--temperature", "-t", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user turn of the chat template")
    p.add_argument("--adapter", help="PEFT adapter folder (LoRA / prompt tuning / bottleneck) to apply")
    p.add_argument("--draft", help="draft checkpoint for speculative decoding (same tokenizer)")
    p.add_argument("--draft-k", type=int, default=4, help="tokens the draft proposes per target call")
    p.add_argument("--watermark", action="store_true", help="bias sampling toward a keyed green list (detectable)")
    p.add_argument("--watermark-key", type=int, default=15485863)
    p.add_argument("--quantize", choices=["int8", "bf16"], help="weight-only int8 or bf16 weights")
    p.set_defaults(func=_generate)

    p = sub.add_parser("import", help="turn a local Hugging Face Llama-family folder into a genforge checkpoint")
    p.add_argument("src")
    p.add_argument("dst")
    p.set_defaults(func=_import)
    p = sub.add_parser("export", help="write a checkpoint as a clean HF folder (no training state)")
    p.add_argument("src")
    p.add_argument("dst")
    p.set_defaults(func=_export)

    for spec in PLUGINS:
        module, fn = spec.split(":")
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("genforge"):
                continue  # that stage is not in this build
            raise
        getattr(mod, fn)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        args.func(args)
    except GenforgeError as e:
        print(f"genforge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("genforge: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
