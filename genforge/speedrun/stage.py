"""The stage contract's machinery: what a stage sees (`StageContext`), its declared inputs, and its
typed outputs on disk (`stages/<name>.json`). See the package docstring for the contract itself."""

from __future__ import annotations

import dataclasses
import inspect
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genforge.errors import ConfigError
from genforge.io import RUN, relocate, write_json


@dataclass
class StageContext:
    """What every stage sees besides its own config: the run folder, the size, the seed, threads, progress."""

    run_dir: Path
    size: str = "tiny"
    seed: int = 0
    threads: int = 0  # torch threads (0 = default)
    progress: bool = True  # progress bars in the training loops

    def path(self, *parts: str) -> Path:
        """run_dir/parts..., with its parent folders created."""
        p = Path(self.run_dir).joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


def outputs_path(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / "stages" / f"{name}.json"


def write_outputs(run_dir: Path, name: str, outputs: Any) -> Path:
    """The stage's returned `Outputs` dataclass -> stages/<name>.json (atomically)."""
    if not dataclasses.is_dataclass(outputs) or isinstance(outputs, type):
        raise TypeError(f"stage '{name}' must return its Outputs dataclass, got {type(outputs).__name__}")
    path = outputs_path(run_dir, name)
    write_json(path, relocate(dataclasses.asdict(outputs), str(Path(run_dir).resolve()), RUN))
    return path


def read_outputs(run_dir: Path, name: str, cls: type) -> Any:
    """stages/<name>.json -> an instance of the stage's `Outputs` class (a missing stage or field is a ConfigError)."""
    path = outputs_path(run_dir, name)
    if not path.exists():
        raise ConfigError(f"speedrun stage needs the outputs of '{name}' ({path} does not exist); "
                          f"run it first: add '{name}' to stages=")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e}); rerun with stages={name} force=true") from None
    return from_dict(cls, relocate(data, RUN, str(Path(run_dir).resolve())), str(path))


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass `cls` from a JSON dict, checking that the fields match (nested dataclasses too)."""
    names = {f.name for f in dataclasses.fields(cls)}
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing, extra = sorted(required - set(data)), sorted(set(data) - names)
    if missing or extra:
        what = "; ".join(x for x in (missing and f"missing {', '.join(missing)}",
                                     extra and f"unexpected {', '.join(extra)}") if x)
        raise ConfigError(f"{where or cls.__qualname__}: does not match {cls.__module__}.{cls.__qualname__} "
                          f"({what}); rerun that stage with force=true")
    hints = typing.get_type_hints(cls)
    kw = {}
    for k, v in data.items():
        typ = hints[k]
        kw[k] = from_dict(typ, v, f"{where}:{k}") if dataclasses.is_dataclass(typ) and isinstance(v, dict) else v
    return cls(**kw)


def stage_inputs(run_fn: Any) -> dict[str, type]:
    """{earlier stage name: its Outputs class} from `run`'s keyword-only parameters."""
    hints = typing.get_type_hints(run_fn)
    out = {}
    for p in inspect.signature(run_fn).parameters.values():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        typ = hints.get(p.name)
        if not (isinstance(typ, type) and dataclasses.is_dataclass(typ)):
            raise TypeError(f"{run_fn.__module__}.run: input '{p.name}' must be annotated with that stage's "
                            f"Outputs class, got {typ!r}")
        out[p.name] = typ
    return out


def check_stage(module: types.ModuleType, earlier: dict[str, types.ModuleType]) -> None:
    """A lesson module follows the contract: NAME, TITLE, Config, Outputs, run(ctx, cfg, report, *, inputs)."""
    for attr in ("NAME", "TITLE", "Config", "Outputs", "run"):
        if not hasattr(module, attr):
            raise TypeError(f"{module.__name__}: a speedrun stage needs {attr}")
    for name, cls in stage_inputs(module.run).items():
        if name not in earlier:
            raise TypeError(f"{module.__name__}.run: input '{name}' is not an earlier stage "
                            f"({', '.join(earlier) or 'none'})")
        if cls is not earlier[name].Outputs:
            raise TypeError(f"{module.__name__}.run: input '{name}' must be annotated {earlier[name].__name__}.Outputs")
