"""`genforge data world|clean|pack` and `genforge tokenizer train`: configs and mains."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from genforge.config import save_resolved
from genforge.data.pipeline import CleanConfig
from genforge.errors import ConfigError
from genforge.tokenizer import TokenizerConfig


def _need(value: str | list, key: str, example: str) -> None:
    if not value:
        raise ConfigError(f"{key} is not set: {example}")


@dataclass
class WorldConfig:
    """Generate the tiny world: corpus (with planted junk), tasks, preferences, knowledge, needles."""

    out: str = ""  # folder to write the world into
    size: str = "tiny"  # smoke | tiny | small
    seed: int = 0  # the world's seed (same seed, same world)


def world(cfg: WorldConfig) -> dict:
    from genforge.world import generate_world

    _need(cfg.out, "out", "genforge data world runs/w size=tiny")
    if cfg.size not in ("smoke", "tiny", "small"):
        raise ConfigError(f"size={cfg.size!r}: choose smoke, tiny or small")
    summary = generate_world(cfg.out, seed=cfg.seed, size=cfg.size)
    save_resolved(cfg, cfg.out)
    print(f"tiny world ({cfg.size}, seed {cfg.seed}) -> {cfg.out}")
    for k, v in summary.items():
        if not isinstance(v, (dict, list)):
            print(f"  {k}: {v}")
    return summary


@dataclass
class CleanCommandConfig:
    """Clean a corpus: normalise, filter junk/harmful/low-quality text, deduplicate (exact + MinHash)."""

    inputs: list[str] = field(default_factory=list)  # .txt / .jsonl / .parquet files or folders
    out: str = ""  # cleaned .jsonl to write (clean_report.json, data_report.md, <stem>.removed.jsonl go beside it)
    skip_bad: bool = False  # skip malformed lines, counted in the report (`--skip-bad`; same as clean.skip_bad=true)
    workers: int = 0  # processes for the filters and MinHash (0: clean.workers)
    engine: str = "local"  # local (the resumable one-machine pipeline) | datatrove (filters as datatrove steps)
    tasks: int = 2  # engine=datatrove: tasks the input files are sharded over (out is then a folder)
    clean: CleanConfig = field(default_factory=CleanConfig)


def clean(cfg: CleanCommandConfig) -> dict:
    from genforge.data.pipeline import clean_corpus

    _need(cfg.inputs, "inputs", "genforge data clean corpus.jsonl out=clean.jsonl")
    _need(cfg.out, "out", "genforge data clean corpus.jsonl out=clean.jsonl")
    if cfg.skip_bad:
        cfg.clean.skip_bad = True
    if cfg.workers:
        cfg.clean.workers = cfg.workers
    if cfg.engine == "datatrove":
        return _clean_datatrove(cfg)
    if cfg.engine != "local":
        raise ConfigError(f"engine={cfg.engine!r}: choose local or datatrove")
    report = clean_corpus(cfg.inputs, cfg.out, cfg.clean)
    out = Path(cfg.out)
    save_resolved(cfg, out.parent, name=f"{out.name.split('.')[0]}.config.yaml")
    summary = report.summary()
    mb = report.bytes_in / 1e6
    print(f"kept {report.docs_kept:,} of {report.docs_in:,} documents ({report.bytes_kept / 1e6:.2f} of {mb:.2f} MB) "
          f"in {report.seconds:.1f} s ({mb / max(report.seconds, 1e-9):.2f} MB/s) -> {cfg.out}")
    print(f"removed: {', '.join(f'{k} {v:,}' for k, v in report.removed.items()) or 'nothing'}")
    if report.bad_lines:
        print(f"skipped {report.bad_lines:,} malformed line(s); first: {report.bad_samples[0]['error']}")
    print(f"report: {report.data_report_path}")
    return summary


def _clean_datatrove(cfg: CleanCommandConfig) -> dict:
    from genforge.data.distributed import clean_with_datatrove

    if len(cfg.inputs) != 1:
        raise ConfigError("engine=datatrove takes one input (a .jsonl file or a folder of them)")
    kept = clean_with_datatrove(cfg.inputs[0], cfg.out, cfg.clean, tasks=cfg.tasks,
                                workers=cfg.workers or cfg.clean.workers)
    save_resolved(cfg, cfg.out)
    print(f"datatrove: kept documents in {kept}/, removed in {Path(cfg.out) / 'removed'}/, stats in "
          f"{Path(cfg.out) / 'logs'}/ (dedup is not part of this engine run; see genforge.data.distributed)")
    return {"kept": str(kept)}


@dataclass
class PackConfig:
    """Tokenize documents into train/val token shards (memmap files + manifest.json)."""

    inputs: list[str] = field(default_factory=list)  # .txt / .jsonl / .parquet files or folders
    tokenizer: str = ""  # folder with tokenizer.json
    out: str = ""  # shard folder to write
    val_fraction: float = 0.05  # share of documents held out for validation
    text_field: str = "text"  # JSONL/parquet field holding the document text


def pack(cfg: PackConfig) -> dict:
    from genforge.data.readers import iter_documents
    from genforge.data.shards import pack_shards
    from genforge.tokenizer import Tokenizer

    example = "genforge data pack clean.jsonl tokenizer=runs/tok out=runs/shards"
    for key in ("inputs", "tokenizer", "out"):
        _need(getattr(cfg, key), key, example)
    tok = Tokenizer.load(cfg.tokenizer)
    m = pack_shards((d.text for d in iter_documents(cfg.inputs, text_field=cfg.text_field)), tok, cfg.out,
                    val_fraction=cfg.val_fraction)
    save_resolved(cfg, cfg.out)
    s = m["splits"]
    print(f"packed {s['train']['n_tokens']:,} train / {s['val']['n_tokens']:,} val tokens ({m['dtype']}) -> {cfg.out}")
    return m


@dataclass
class TokenizerTrainConfig:
    """Train a byte-level BPE tokenizer (with genforge's special tokens and chat template)."""

    inputs: list[str] = field(default_factory=list)  # .txt / .jsonl / .parquet files or folders
    out: str = ""  # folder to write tokenizer.json (+ tokenizer_config.json) into
    text_field: str = "text"  # JSONL/parquet field holding the document text
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


def tokenizer_train(cfg: TokenizerTrainConfig) -> str:
    from genforge.data.readers import iter_documents
    from genforge.tokenizer import train_tokenizer

    example = "genforge tokenizer train clean.jsonl out=runs/tok tokenizer.vocab_size=1024"
    _need(cfg.inputs, "inputs", example)
    _need(cfg.out, "out", example)
    tok = train_tokenizer((d.text for d in iter_documents(cfg.inputs, text_field=cfg.text_field)), cfg.tokenizer)
    tok.save(cfg.out)
    save_resolved(cfg, cfg.out)
    print(f"trained a {tok.vocab_size}-token byte-level BPE tokenizer -> {cfg.out}/tokenizer.json")
    return cfg.out
