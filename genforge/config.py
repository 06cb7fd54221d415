"""Typed configs: dataclasses, YAML recipes and `key=value` overrides.

A stage's config is a (possibly nested) dataclass. `load_config(Cls, yaml_path, overrides)` builds
one from defaults, then the YAML file, then `a.b=value` overrides from the command line. Unknown
keys raise a `ConfigError` that suggests the closest known key. `save_resolved` is the one way a
command writes its resolved config (`config.yaml`) beside its output; `field_help` turns a config
class into the key listing of `genforge COMMAND --help`.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from genforge.errors import ConfigError

T = TypeVar("T")


def to_dict(cfg: Any) -> dict:
    """The config as a plain dict (nested dataclasses become dicts)."""
    return dataclasses.asdict(cfg)


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Turn a YAML/CLI value into the field's declared type (str '3' -> int 3, 'true' -> True)."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        for a in args:
            try:
                return _coerce(value, a, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: cannot read {value!r} as {typ}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        (inner, *_) = typing.get_args(typ) or (Any,)
        out = [_coerce(v, inner, key) for v in value]
        return tuple(out) if origin is tuple else out
    if typ is dict or origin is dict:
        if isinstance(value, str):  # from the command line: key='{a: 1, b.c: 2}'
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping like '{{a: 1, b.c: 2}}', got {value!r}")
        return value
    if typ is Any:
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if typ in (int, float, str):
        try:
            if typ is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return typ(float(value)) if typ is int and isinstance(value, str) and "e" in value.lower() else typ(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {typ.__name__}, got {value!r}") from None
    return value


def _apply(cfg: Any, key_path: str, value: Any) -> None:
    obj = cfg
    parts = key_path.split(".")
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(obj)}
        if part not in fields:
            where = ".".join(parts[:i]) or type(obj).__name__
            close = difflib.get_close_matches(part, list(fields), n=1)
            hint = f"; did you mean '{'.'.join(parts[:i] + [close[0]])}'?" if close else ""
            raise ConfigError(f"unknown config key '{key_path}' (no field '{part}' in {where}){hint}")
        if i == len(parts) - 1:
            hints = typing.get_type_hints(type(obj))
            typ = hints[part]
            if dataclasses.is_dataclass(typ) and isinstance(value, str):  # 'sft={steps: 200}' from the command line
                value = yaml.safe_load(value)
                if not isinstance(value, dict):
                    raise ConfigError(f"{key_path}: is a section; expected a mapping like '{{key: value}}', got "
                                      f"{value!r}")
            if dataclasses.is_dataclass(typ) and isinstance(value, dict):
                for k, v in value.items():
                    _apply(cfg, f"{key_path}.{k}", v)  # the full key path, for error messages
            else:
                setattr(obj, part, _coerce(value, typ, key_path))
        else:
            obj = getattr(obj, part)
            if not dataclasses.is_dataclass(obj):
                raise ConfigError(f"config key '{key_path}': '{part}' is a value, not a section")


def validate(cfg: Any) -> Any:
    """Run every `__post_init__` check again, innermost sections first, and return `cfg`.

    `_apply` sets fields with `setattr`, which a dataclass does not check, so a recipe or `key=value` value that a
    config's own `__post_init__` would refuse (`sft.chat_steps=0`) would otherwise pass silently. The checks in
    this project only validate (or convert a mapping read back from JSON into its section), so running them
    twice is safe."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            validate(value)
    post_init = getattr(cfg, "__post_init__", None)
    if post_init is not None:
        post_init()
    return cfg


def flatten_keys(d: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}: a recipe's nested sections as the dotted keys `update` takes."""
    out = {}
    for k, v in d.items():
        out.update(flatten_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    """['a.b=1', 'c=x'] -> {'a.b': '1', 'c': 'x'}; a malformed item raises ConfigError."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value (e.g. train.max_steps=100)")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


def read_recipe(path: str | Path) -> dict:
    """A YAML recipe as a mapping (one-line errors for a missing file or bad YAML)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: recipe not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict | list | None = None) -> T:
    """Defaults, then the YAML recipe at `path`, then overrides (dict or ['k=v', ...])."""
    cfg = cls()
    if path is not None:
        for k, v in flatten_keys(read_recipe(path)).items():
            _apply(cfg, k, v)
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    for k, v in (overrides or {}).items():
        _apply(cfg, k, v)
    return validate(cfg) if path is not None or overrides else cfg


def update(cfg: T, overrides: dict | list | None) -> T:
    """Apply overrides to an existing config (in place), check it (`validate`) and return it."""
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    for k, v in (overrides or {}).items():
        _apply(cfg, k, v)
    return validate(cfg) if overrides else cfg


def save_resolved(cfg: Any, out_dir: str | Path, name: str = "config.yaml") -> dict:
    """Create out_dir and write the resolved config there as `name` (atomically); return it as a dict.

    The one way every command records the settings that produced its output (rerun it with
    `--config out_dir/config.yaml`). A command whose output is a single file passes a `name` after it.
    """
    from genforge.io import write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    resolved = to_dict(cfg)
    write_text(out / name, yaml.safe_dump(resolved, sort_keys=False))
    return resolved


def _field_comments(cls: type) -> dict[str, str]:
    """{field: its trailing '# comment'} read from the class source (base classes first, so subclasses win)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            src = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        # attribute docstrings (`x: int = 1` then `"""doc"""` on the next line), then trailing comments
        out.update(re.findall(r'^\s+(\w+)\s*:[^\n]*\n\s+"""\s*(.+?)\s*(?:"""|$)', src, flags=re.M))
        out.update(re.findall(r"^\s+(\w+)\s*:[^=\n]*=[^#\n]*#\s*(.+)$", src, flags=re.M))
    return out


def field_help(cls: type, prefix: str = "", instance: Any = None) -> list[str]:
    """One line per config key, nested sections flattened: '  a.b = default    # comment'.

    Defaults are read from an instance (`cls()`), so a section whose factory changes its defaults
    (chat's sampling.temperature = 0.7) shows the value the command really starts from.
    """
    obj = cls() if instance is None else instance
    comments = _field_comments(cls)
    hints = typing.get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(hints.get(f.name)) and dataclasses.is_dataclass(value):
            lines += field_help(type(value), f"{prefix}{f.name}.", value)
            continue
        c = comments.get(f.name, "")
        lines.append(f"  {prefix}{f.name} = {value!r}" + (f"    # {c}" if c else ""))
    return lines
