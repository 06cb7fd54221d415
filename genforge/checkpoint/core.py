"""The generic checkpoint core: any model family saved, found and resumed the same way.

A checkpoint is a folder written atomically (`genforge.io.atomic_dir`): the weights as safetensors,
`genforge.json` (family, model config, resolved run config, step, metrics), optional tokenizer files,
and, for a training run, `trainer_state.pt` (optimizer, step, RNG states, data cursor) beside them.
Which files hold the weights and config is up to the model's *family*: `hf_llama.py` writes the
Hugging Face Llama layout for `GPT`; `ModuleFamily` writes any `nn.Module` with a dataclass config
(an encoder, an encoder-decoder, an image model). `genforge.json["family"]` picks the family on load.

Resume never trusts a single file: `find_resume_state` takes the newest *complete* checkpoint
(`checkpoint/`, else `.checkpoint.old`, which a kill between the two renames of a save leaves), falls
back to the older one when a state file is missing or unreadable, and otherwise stops with a one-line
error naming the file rather than silently restarting over intact weights. Training state is loaded
with `torch.load(weights_only=True)`: it holds only tensors and plain Python values, so a crafted
`trainer_state.pt` cannot run code on resume.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn

from genforge.errors import CheckpointError
from genforge.io import atomic_dir, complete_dir, storage_error, write_json
from genforge.tokenizer import Tokenizer

META_FILE = "genforge.json"
STATE_FILE = "trainer_state.pt"
WEIGHTS_FILE = "model.safetensors"


# ------------------------------------------------------------------------------------------- families
class Family(Protocol):
    """How one kind of model is written to and read from a checkpoint folder."""

    name: str

    def owns(self, model: nn.Module) -> bool: ...

    def write(self, folder: Path, model: nn.Module, tokenizer: Tokenizer | None) -> None: ...

    def load(self, folder: Path, meta: dict, device: str | torch.device) -> nn.Module: ...


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Make a family known to save/load (later registrations of the same name replace earlier ones)."""
    FAMILIES[family.name] = family
    return family


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP (`.module`) and `torch.compile` (`._orig_mod`) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def model_config(model: nn.Module) -> Any:
    """The model's dataclass config (`model.config`), or None when it has none."""
    cfg = getattr(unwrap(model), "config", None)
    return cfg if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type) else None


def family_for_model(model: nn.Module) -> Family:
    model = unwrap(model)
    for fam in reversed(list(FAMILIES.values())):  # newest first: a subclass registered later wins
        if fam.owns(model):
            return fam
    raise CheckpointError(f"{type(model).__name__}: no checkpoint family for this model; register one with "
                          "genforge.checkpoint.register_family(ModuleFamily(name, ModelClass, ConfigClass))")


def family_of_folder(path: Path, meta: dict) -> Family:
    """The family named in genforge.json; plain Hugging Face folders (no genforge.json) are Llama-family."""
    name = meta.get("family", "gpt")
    if name not in FAMILIES:
        raise CheckpointError(f"{path / META_FILE}: family {name!r} is not registered (known: {sorted(FAMILIES)}); "
                              "import the module that registers it before loading")
    return FAMILIES[name]


@dataclasses.dataclass(frozen=True)
class ModuleFamily:
    """Any `nn.Module` built as `model_cls(config)` from a dataclass config: weights in model.safetensors,
    the config in genforge.json["model"]. Shared (tied) tensors are stored once (safetensors' save_model)."""

    name: str
    model_cls: type[nn.Module]
    config_cls: type

    def owns(self, model: nn.Module) -> bool:
        return isinstance(model, self.model_cls)

    def write(self, folder: Path, model: nn.Module, tokenizer: Tokenizer | None) -> None:
        from safetensors.torch import save_model

        save_model(model, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})

    def load(self, folder: Path, meta: dict, device: str | torch.device) -> nn.Module:
        from safetensors.torch import load_model as load_weights

        fields = {f.name for f in dataclasses.fields(self.config_cls)}
        saved = meta.get("model", {})
        model = self.model_cls(self.config_cls(**{k: v for k, v in saved.items() if k in fields}))
        f = folder / WEIGHTS_FILE
        try:
            missing, unexpected = load_weights(model, str(f), strict=False)
        except Exception as e:  # safetensors raises its own types for truncated files
            raise CheckpointError(f"{f}: cannot read weights ({e}); the file is corrupt or truncated") from None
        if missing or unexpected:
            raise CheckpointError(f"{f}: weights do not match the config: missing {sorted(missing)[:5]}, "
                                  f"unexpected {sorted(unexpected)[:5]}")
        return model.to(device).eval()


# ------------------------------------------------------------------------------------- save and load
def write_checkpoint_files(folder: Path, model: nn.Module, tokenizer: Tokenizer | None = None,
                           run_config: dict | None = None, meta: dict | None = None) -> None:
    """Write a checkpoint's files into an existing folder (not atomic by itself; see save_checkpoint)."""
    model = unwrap(model)
    fam = family_for_model(model)
    fam.write(folder, model, tokenizer)
    cfg = model_config(model)
    if tokenizer is not None:
        tokenizer.save(folder, model_max_length=getattr(cfg, "max_seq_len", 512))
    config = dataclasses.asdict(cfg) if cfg is not None else {}
    write_json(folder / META_FILE, {"family": fam.name, "model": config, "run": run_config or {}, **(meta or {})})


def save_checkpoint(path: str | Path, model: nn.Module, tokenizer: Tokenizer | None = None,
                    run_config: dict | None = None, meta: dict | None = None) -> Path:
    """Write a complete checkpoint folder atomically and return its path."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        write_checkpoint_files(tmp, model, tokenizer, run_config, meta)
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """genforge.json of a checkpoint ({} for a plain HF folder)."""
    f = Path(path) / META_FILE
    if not f.exists():
        return {}
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f}: corrupt JSON ({e.msg}); the checkpoint was not written completely") from None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model of a checkpoint folder, built by the family its genforge.json names (default: HF Llama)."""
    path = Path(path)
    if not path.is_dir():
        older = complete_dir(path)
        hint = (f"; a save was interrupted and left the previous one at {older}: rerun the training command to "
                "resume (it finds it), or load that folder") if older is not None else ""
        raise CheckpointError(f"{path}: checkpoint folder not found{hint}")
    meta = read_meta(path)
    return family_of_folder(path, meta).load(path, meta, device)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Tokenizer | None, dict]:
    """(model, tokenizer or None, genforge.json meta) from a checkpoint folder."""
    path = Path(path)
    model = load_model(path, device)
    tok = Tokenizer.load(path) if (path / "tokenizer.json").exists() else None
    n_embed = getattr(model_config(model), "vocab_size", None)
    if tok is not None and n_embed is not None and tok.vocab_size > n_embed:
        raise CheckpointError(f"{path}: tokenizer has {tok.vocab_size} tokens but the model only "
                              f"{n_embed} embeddings; tokenizer and weights do not belong together")
    return model, tok, read_meta(path)


# ------------------------------------------------------------------------------------- training state
class _RecordingWriter:
    """A file wrapper that remembers the OSError of a failed write: torch.save turns it into an opaque
    `RuntimeError: [enforce fail at inline_container.cc]`, which must still read "disk full"."""

    def __init__(self, f: Any):
        self.f, self.error = f, None

    def write(self, b: bytes) -> int:
        try:
            return self.f.write(b)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def save_training_state(folder: Path, state: dict) -> None:
    """torch.save the resume state into a checkpoint folder being written (inside `atomic_dir`)."""
    f = Path(folder) / STATE_FILE
    with open(f, "wb") as fh:
        w = _RecordingWriter(fh)
        try:
            torch.save(state, w)
        except RuntimeError:
            if w.error is not None:
                raise storage_error(w.error, f.parent) from None
            raise


def load_training_state(folder: Path, device: str | torch.device = "cpu") -> dict:
    """The resume state of a checkpoint folder; a missing or unreadable file is a one-line CheckpointError."""
    f = Path(folder) / STATE_FILE
    if not f.exists():
        raise CheckpointError(f"{f}: missing (the weights beside it cannot be resumed without it)")
    try:
        # weights_only: tensors and plain containers only; an object whose __reduce__ runs code is refused
        state = torch.load(f, map_location=device, weights_only=True)
    except Exception as e:  # truncated zip, EOF, refused globals: all mean "cannot use this file"
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise CheckpointError(f"{f}: unreadable training state ({type(e).__name__}: {reason})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{f}: not a genforge training state (no step)")
    return state


def find_resume_state(ckpt_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Path, dict] | None:
    """(folder, state) of the newest complete checkpoint whose state loads, or None when there is no checkpoint.

    Tries `ckpt_dir`, then `.<name>.old` (complete copies written by `atomic_dir`). When copies exist but no
    state loads, raises the first copy's error: restarting would overwrite weights a person may still want.
    """
    ckpt_dir = Path(ckpt_dir)
    newest = complete_dir(ckpt_dir)
    if newest is None:
        return None
    old = ckpt_dir.with_name(f".{ckpt_dir.name}.old")
    candidates = [newest] + ([old] if newest != old and old.is_dir() else [])
    errors = []
    for folder in candidates:
        try:
            return folder, load_training_state(folder, device)
        except CheckpointError as e:
            errors.append(str(e))
    raise CheckpointError(f"{errors[0]}; no earlier complete checkpoint to fall back to. Restore the file, or pass "
                          f"train.resume=false to start over (this overwrites {newest})")
