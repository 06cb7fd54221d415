"""`genforge import|export|prune`: checkpoint folders in, checkpoint folders out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from genforge.config import save_resolved
from genforge.errors import ConfigError


def _need(cfg: object, keys: tuple[str, ...], example: str) -> None:
    for key in keys:
        if not getattr(cfg, key):
            raise ConfigError(f"{key} is not set: {example}")


@dataclass
class ImportConfig:
    """Turn a local Hugging Face folder (Llama, Mistral, Qwen2/3, Gemma/2, Phi-3) into a genforge checkpoint."""

    src: str = ""  # HF folder (config.json + safetensors + tokenizer.json)
    dst: str = ""  # genforge checkpoint folder to write


def import_hf(cfg: ImportConfig) -> Path:
    from genforge.checkpoint import import_hf as do_import

    _need(cfg, ("src", "dst"), "genforge import path/to/hf-folder runs/imported")
    out = do_import(cfg.src, cfg.dst)
    save_resolved(cfg, out)
    print(f"imported {cfg.src} -> {out}")
    return out


@dataclass
class ExportConfig:
    """Write a checkpoint as a clean HF folder (no training state), or as one GGUF file (llama.cpp, ollama)."""

    src: str = ""  # checkpoint folder
    dst: str = ""  # folder to write (load it with AutoModelForCausalLM.from_pretrained); gguf: a .gguf file or folder
    format: str = "hf"  # hf | gguf
    quant: str = "f16"  # gguf only: f32 | f16 | q8_0 (norms and biases stay f32)


def export(cfg: ExportConfig) -> Path:
    from genforge.checkpoint import load_checkpoint, save_checkpoint

    _need(cfg, ("src", "dst"), "genforge export runs/pt/checkpoint runs/export")
    if cfg.format not in ("hf", "gguf"):
        raise ConfigError(f"format={cfg.format!r}: choose hf (a Hugging Face folder) or gguf (one llama.cpp file)")
    model, tok, meta = load_checkpoint(cfg.src)
    if cfg.format == "gguf":
        from genforge.checkpoint.gguf_file import write_gguf
        from genforge.model.gpt import GPT

        if not isinstance(model, GPT):
            raise ConfigError(f"{cfg.src}: a {type(model).__name__} checkpoint; GGUF export writes GPT decoders")
        dst = Path(cfg.dst)  # a .gguf file, or a folder to put model.gguf in
        out = write_gguf(dst if dst.suffix == ".gguf" else dst / "model.gguf", model, tok, cfg.quant)
        print(f"exported {cfg.src} -> {out} (GGUF, {cfg.quant}: llama.cpp / ollama read it)")
        return out
    out = save_checkpoint(cfg.dst, model, tok, meta.get("run"), {k: v for k, v in meta.items() if k != "run"})
    save_resolved(cfg, out)
    print(f"exported {cfg.src} -> {out} (HF layout: load with AutoModelForCausalLM.from_pretrained)")
    return out


@dataclass
class PruneConfig:
    """Magnitude-prune a checkpoint's block weights and save it (pruned weights stored as 0)."""

    checkpoint: str = ""  # checkpoint folder to prune
    out: str = ""  # checkpoint folder to write
    sparsity: float = 0.0  # fraction of block weights (or of heads / neurons) to zero
    structured: str | None = None  # None (single weights), heads or neurons


def prune(cfg: PruneConfig) -> Path:
    from genforge.checkpoint import load_checkpoint, save_checkpoint
    from genforge.infer.compress import prune_magnitude, sparsity

    _need(cfg, ("checkpoint", "out"), "genforge prune CHECKPOINT OUT sparsity=0.3")
    if not 0.0 < cfg.sparsity < 1.0:
        raise ConfigError(f"sparsity={cfg.sparsity}: give the fraction to prune, between 0 and 1 (e.g. sparsity=0.3)")
    if cfg.structured not in (None, "heads", "neurons"):
        raise ConfigError(f"structured={cfg.structured!r}: choose heads or neurons (or leave it unset)")
    model, tok, meta = load_checkpoint(cfg.checkpoint)
    prune_magnitude(model, cfg.sparsity, cfg.structured)
    out = save_checkpoint(cfg.out, model, tok, meta.get("run"),
                          {**{k: v for k, v in meta.items() if k != "run"}, "pruned": {
                              "sparsity": cfg.sparsity, "structured": cfg.structured,
                              "zero_fraction": sparsity(model)}})
    save_resolved(cfg, out)
    print(f"pruned {cfg.checkpoint}: {sparsity(model):.1%} of block weights are zero -> {cfg.out}")
    return out
