"""`genforge <command>`: one table of commands; each parses a config and calls the command's `main(cfg)`.

Every command is configured the same way:

    genforge COMMAND [POSITIONAL ...] [--config recipe.yaml] [key=value ...]

defaults, then the YAML recipe, then `key=value` overrides (validated by `genforge.config.load_config`:
an unknown key fails with the closest match). Positional words are shorthands for the command's
leading keys (`genforge generate CKPT "prompt"` = `checkpoint=CKPT prompt="prompt"`). A list of
strings is given by repeating its key (`sampling.stop=. sampling.stop=!`) or as YAML (`stop='[a, b]'`).
Commands with a `sampling` section also take its keys bare (`temperature=0.7` = `sampling.temperature=0.7`).
`genforge COMMAND --help` lists every key with its default and a one-line description.

Nothing in the library imports this module; it imports each command lazily (so `genforge --help`
does not import torch). Anticipated failures (`GenforgeError`) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import typing
from typing import Any, NamedTuple

from genforge.errors import ConfigError, GenforgeError


class Command(NamedTuple):
    """One row of the table: where the config class and the main function live ("module:name")."""

    config: str  # "module:ConfigClass", built by load_config
    main: str  # "module:function", called as main(cfg)
    help: str  # one line for `genforge --help`
    positional: tuple[str, ...] = ()  # keys that bare words fill in order; "key..." takes all the rest (a list)
    choices: tuple[tuple[str, str], ...] = ()  # (key, "module:DICT" of {value: description}) listed by --help
    build: str = ""  # "module:function(overrides, recipe) -> config" when defaults come from more than the class


_TRAIN = "genforge.commands.train"
COMMANDS: dict[str, Command] = {
    "speedrun": Command("genforge.speedrun:SpeedrunConfig", "genforge.speedrun:main",
                        "the whole lifecycle on the tiny world -> report card", build="genforge.speedrun:resolve"),
    "data world": Command("genforge.commands.data:WorldConfig", "genforge.commands.data:world",
                          "generate the embedded tiny world (corpus, tasks, preferences, knowledge)", ("out",)),
    "data clean": Command("genforge.commands.data:CleanCommandConfig", "genforge.commands.data:clean",
                          "normalise, filter junk/harmful text and deduplicate a corpus", ("inputs...",)),
    "data pack": Command("genforge.commands.data:PackConfig", "genforge.commands.data:pack",
                         "tokenize documents into train/val token shards", ("inputs...",)),
    "tokenizer train": Command("genforge.commands.data:TokenizerTrainConfig", "genforge.commands.data:tokenizer_train",
                               "train a byte-level BPE tokenizer on .txt/.jsonl files", ("inputs...",)),
    "pretrain": Command("genforge.train.pretrain:PretrainConfig", f"{_TRAIN}:pretrain",
                        "pretrain a model on packed token shards"),
    "sft": Command("genforge.train.sft:SFTConfig", f"{_TRAIN}:sft",
                   "supervised fine-tuning: full, LoRA, prompt tuning, bottleneck adapters or selective"),
    "reward": Command("genforge.train.reward:RewardConfig", f"{_TRAIN}:reward",
                      "train a reward model (scalar head, Bradley-Terry on ranked completions)"),
    "dpo": Command("genforge.train.dpo:DPOConfig", f"{_TRAIN}:dpo",
                   "direct preference optimisation against a frozen reference"),
    "ppo": Command("genforge.train.ppo:PPOConfig", f"{_TRAIN}:ppo",
                   "PPO against a reward model or a verifiable reward (KL to a frozen reference)"),
    "grpo": Command("genforge.train.grpo:GRPOConfig", f"{_TRAIN}:grpo",
                    "GRPO: group-normalised advantages with a verifiable reward"),
    "distill": Command("genforge.train.distill:DistillConfig", f"{_TRAIN}:distill",
                       "distil a teacher checkpoint into a smaller student (e.g. a speculative-decoding draft)"),
    "eval": Command("genforge.eval.harness:EvalConfig", "genforge.eval.harness:main",
                    "evaluate a checkpoint on tasks (EM, ROUGE, BLEU, MC, needle, contamination)", ("checkpoint",),
                    (("strategy", "genforge.eval.harness:STRATEGIES"),)),
    "eval compare": Command("genforge.commands.eval:CompareConfig", "genforge.commands.eval:compare",
                            "print two eval result folders side by side (optionally with an LLM judge)", ("runs...",)),
    "generate": Command("genforge.commands.infer:GenerateConfig", "genforge.commands.infer:generate",
                        "sample text from a checkpoint (streams tokens)", ("checkpoint", "prompt...")),
    "chat": Command("genforge.commands.chat:ChatConfig", "genforge.commands.chat:main",
                    "chat with a checkpoint in the terminal (streams replies)", ("checkpoint",)),
    "agent run": Command("genforge.agents.run:AgentConfig", "genforge.agents.run:main",
                         "answer a question with tools (ReAct), a program (PAL), or play the text world (planner)",
                         ("checkpoint", "question")),
    "safety": Command("genforge.commands.safety:SafetyConfig", "genforge.commands.safety:main",
                      "the safety suite (bias, jailbreaks, injection, extraction, detection, unlearning, garak)",
                      ("run_dir",)),
    "serve": Command("genforge.commands.serve:ServeConfig", "genforge.commands.serve:main",
                     "serve a checkpoint over an OpenAI-compatible HTTP API + web chat page", ("checkpoint",)),
    "rag index": Command("genforge.rag.cli_main:IndexConfig", "genforge.rag.cli_main:main_index",
                         "documents -> chunks -> embeddings in a vector store (+ BM25)", ("input",)),
    "rag query": Command("genforge.rag.cli_main:QueryConfig", "genforge.rag.cli_main:main_query",
                         "top-k passages for a question (dense, BM25 or hybrid)", ("query",)),
    "rag eval": Command("genforge.rag.cli_main:RagEvalConfig", "genforge.rag.cli_main:main_eval",
                        "retrieval quality (hit@k, MRR, nDCG@10) per retriever", ("questions",)),
    "watermark detect": Command("genforge.commands.infer:WatermarkDetectConfig",
                                "genforge.commands.infer:watermark_detect",
                                "z-score of green-list tokens in a text (Kirchenbauer et al. 2023)", ("checkpoint",)),
    "prune": Command("genforge.commands.checkpoints:PruneConfig", "genforge.commands.checkpoints:prune",
                     "magnitude-prune a checkpoint and save it (pruned weights stored as 0)", ("checkpoint", "out")),
    "import": Command("genforge.commands.checkpoints:ImportConfig", "genforge.commands.checkpoints:import_hf",
                      "an HF folder (Llama, Mistral, Qwen2/3, Gemma/2, Phi-3) -> a checkpoint", ("src", "dst")),
    "export": Command("genforge.commands.checkpoints:ExportConfig", "genforge.commands.checkpoints:export",
                      "a checkpoint as a clean HF folder (no training state) or GGUF (format=gguf)", ("src", "dst")),
    "scaling": Command("genforge.scaling.sweep:ScalingConfig", "genforge.commands.scaling:main",
                       "sweep sizes x compute budgets, fit scaling laws, check a held-out run, emergence + calibration",
                       choices=(("size", "genforge.commands.scaling:SIZES"),),
                       build="genforge.commands.scaling:resolve"),
    "plan": Command("genforge.scaling.plan:PlanConfig", "genforge.commands.plan:main",
                    "memory by part, time per step and fit on a device for a model x method (e.g. llama-7b, lora)",
                    ("model",), (("model", "genforge.commands.plan:MODELS"),
                                 ("method", "genforge.scaling.plan:METHODS"),
                                 ("device", "genforge.commands.plan:DEVICE_HELP"))),
    "image train": Command("genforge.image.run:ImageTrainConfig", "genforge.image.run:main_train",
                           "train an image model (ddpm | vae | flow | gan | vq | ar | maskgit), then samples.png and "
                           "FID", ("family",)),
    "image sample": Command("genforge.image.run:ImageSampleConfig", "genforge.image.run:main_sample",
                            "a PNG grid of samples from an image checkpoint", ("checkpoint",)),
    "image eval": Command("genforge.image.run:ImageEvalConfig", "genforge.image.run:main_eval",
                          "FID / precision / recall of an image checkpoint, with real and noise baselines",
                          ("checkpoint",)),
}


def resolve(spec: str) -> Any:
    """'module:attr' -> the object (imports the module)."""
    module, attr = spec.split(":")
    return getattr(importlib.import_module(module), attr)


def find_command(argv: list[str]) -> tuple[str | None, list[str]]:
    """The longest table name that argv starts with ('data clean' before 'data'), and the remaining words."""
    for n in (2, 1):
        name = " ".join(argv[:n])
        if len(argv) >= n and name in COMMANDS:
            return name, argv[n:]
    return None, argv


def _field_type(cls: type, key: str) -> Any:
    """The declared type of a dotted key, or None when the key does not exist (load_config then explains)."""
    typ: Any = cls
    for part in key.split("."):
        if not dataclasses.is_dataclass(typ):
            return None
        hints = typing.get_type_hints(typ)
        if part not in hints:
            return None
        typ = hints[part]
    return typ


def _is_str_list(typ: Any) -> bool:
    return typing.get_origin(typ) in (list, tuple) and typing.get_args(typ)[:1] == (str,)


def collect_overrides(cls: type, positional: tuple[str, ...], words: list[str]) -> dict[str, Any]:
    """Bare words fill the positional keys; `key=value` words become overrides (repeated list keys append).

    A bare key that only exists in the config's `sampling` section is routed there, so it goes
    through the same validation as `sampling.KEY=...`.
    """
    sampling_type = _field_type(cls, "sampling")
    overrides: dict[str, Any] = {}
    bare: list[str] = []
    for w in words:
        if "=" not in w or w.startswith("="):
            bare.append(w)
            continue
        key, value = w.split("=", 1)
        key = key.strip()
        if (_field_type(cls, key) is None and dataclasses.is_dataclass(sampling_type)
                and _field_type(sampling_type, key) is not None):
            key = f"sampling.{key}"
        if _is_str_list(_field_type(cls, key)) and not value.lstrip().startswith("["):
            # one item per occurrence: strings may contain commas (a stop string ",", a prompt)
            overrides.setdefault(key, []).append(value)
        else:
            overrides[key] = value
    for pos in positional:
        if not bare:
            break
        if pos.endswith("..."):
            overrides[pos[:-3]] = overrides.get(pos[:-3], []) + bare
            bare = []
        else:
            overrides[pos] = bare.pop(0)
    if bare:
        raise ConfigError(f"unexpected argument {bare[0]!r}: give settings as key=value (see --help)")
    return overrides


def bool_flags(cls: type, words: list[str]) -> list[str]:
    """`--skip-bad` -> `skip_bad=true` for a top-level bool key of the config (flags people expect for switches)."""
    hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
    rest, flags = [], []
    for w in words:
        key = w[2:].replace("-", "_") if w.startswith("--") and "=" not in w else ""
        (flags.append(f"{key}=true") if key and hints.get(key) is bool else rest.append(w))
    return rest + flags


def command_parser(name: str, cmd: Command, cls: type) -> argparse.ArgumentParser:
    """The parser of one command: positional shorthands, --config, and every key in the epilog."""
    from genforge.config import field_help

    doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else cmd.help
    shorthand = " ".join(p.upper() if not p.endswith("...") else f"{p[:-3].upper()}..." for p in cmd.positional)
    epilog = "config keys (set with key=value):\n" + "\n".join(field_help(cls))
    for key, spec in cmd.choices:
        options = resolve(spec)
        width = max(len(k) for k in options) + 2
        epilog += f"\n\n{key} choices:\n" + "\n".join(f"  {k:<{width}}{v}" for k, v in options.items())
    if cmd.positional:
        keys = ", ".join(k.removesuffix("...") for k in cmd.positional)
        epilog = f"positional words set, in order: {keys}\n\n{epilog}"
    p = argparse.ArgumentParser(
        prog=f"genforge {name}", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog,
        usage=f"genforge {name} {shorthand + ' ' if shorthand else ''}[--config YAML] [key=value ...]",
        description=f"{cmd.help}\n\n{doc}" if doc != cmd.help else cmd.help)
    p.add_argument("--config", "-c", help="YAML recipe (see recipes/)")
    p.add_argument("words", nargs="*", metavar="key=value", help="config overrides (and positional shorthands)")
    return p


def top_help() -> str:
    from genforge import __version__

    width = max(len(n) for n in COMMANDS) + 2
    rows = "\n".join(f"  {n:<{width}}{c.help}" for n, c in COMMANDS.items())
    return (f"usage: genforge COMMAND [POSITIONAL ...] [--config YAML] [key=value ...]\n\n"
            f"genforge {__version__}: forge generative models end to end: data, tokenizer, pretraining, SFT, PEFT, "
            f"alignment, evaluation, inference and serving.\n\ncommands:\n{rows}\n\n"
            "`genforge COMMAND --help` lists every key with its default. Start with `genforge speedrun` "
            "(the whole lifecycle on the embedded tiny world).")


def run(argv: list[str]) -> Any:
    """Parse argv and run the command (raises GenforgeError on bad input)."""
    from genforge.config import load_config

    name, rest = find_command(argv)
    if name is None:
        groups = sorted({n.split()[0] for n in COMMANDS if " " in n})
        if argv and argv[0] in groups:
            subs = ", ".join(n.split()[1] for n in COMMANDS if n.startswith(argv[0] + " "))
            raise ConfigError(f"'genforge {argv[0]}' needs an action: {subs}")
        import difflib

        close = difflib.get_close_matches(argv[0], sorted({n.split()[0] for n in COMMANDS}), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"unknown command {argv[0]!r}; {hint}see `genforge --help`")
    cmd = COMMANDS[name]
    cls = resolve(cmd.config)
    args = command_parser(name, cmd, cls).parse_args(bool_flags(cls, rest))
    overrides = collect_overrides(cls, cmd.positional, args.words)
    cfg = resolve(cmd.build)(overrides, args.config) if cmd.build else load_config(cls, args.config, overrides)
    return resolve(cmd.main)(cfg)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(top_help())
        return 0 if argv else 1
    if argv[0] == "--version":
        from genforge import __version__

        print(f"genforge {__version__}")
        return 0
    try:
        run(argv)
    except GenforgeError as e:
        print(f"genforge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("genforge: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
