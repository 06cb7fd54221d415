"""A tool registry: typed Python functions an agent can call with JSON arguments.

A tool is a plain function with type hints and a docstring. Its signature becomes a JSON schema in
OpenAI's function-calling shape (`{"type": "function", "function": {"name", "description",
"parameters"}}`), so the same registry can back the server's `tools` field. Calls arrive as JSON text;
arguments are validated against the signature (missing, extra, wrong type) and every failure is one
line the agent reads as its observation, never an exception. Results are text.

Built-in tools: `calculator` (arithmetic by walking the AST: no eval), `search` (the world's facts and
post-cutoff knowledge base), `date_add` / `date_diff` (calendar arithmetic), `python` (the sandbox).
"""

from __future__ import annotations

import ast
import datetime as dt
import difflib
import inspect
import json
import math
import operator
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from genforge.errors import ConfigError

_JSON_TYPES: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _schema_of(hint: Any, where: str) -> dict:
    """JSON schema of one parameter's type hint (str, int, float, bool, list[X], X | None)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return _schema_of(args[0], where)
    if origin is list:
        (item,) = typing.get_args(hint) or (str,)
        return {"type": "array", "items": _schema_of(item, where)}
    if origin is typing.Literal:
        vals = list(typing.get_args(hint))
        return {"type": _JSON_TYPES[type(vals[0])], "enum": vals}
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    raise ConfigError(f"tool {where}: unsupported type {hint!r}; use str, int, float, bool, list[...] or Literal")


def _check(value: Any, schema: dict) -> bool:
    t = schema["type"]
    if "enum" in schema and value not in schema["enum"]:
        return False
    if t == "string":
        return isinstance(value, str)
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t == "boolean":
        return isinstance(value, bool)
    if t == "array":
        return isinstance(value, list) and all(_check(v, schema["items"]) for v in value)
    return False


def _type_name(value: Any) -> str:
    return {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object",
            type(None): "null"}.get(type(value), type(value).__name__)


@dataclass
class Tool:
    name: str
    fn: Callable[..., Any]
    description: str
    parameters: dict  # JSON schema of the arguments object

    @classmethod
    def from_function(cls, fn: Callable[..., Any], name: str | None = None, description: str | None = None) -> Tool:
        name = name or fn.__name__
        hints = typing.get_type_hints(fn)
        props, required = {}, []
        for p in inspect.signature(fn).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise ConfigError(f"tool {name}: *args/**kwargs cannot be described by a schema")
            if p.name not in hints:
                raise ConfigError(f"tool {name}: parameter {p.name!r} needs a type hint")
            props[p.name] = _schema_of(hints[p.name], f"{name}.{p.name}")
            if p.default is p.empty:
                required.append(p.name)
        desc = description or (inspect.getdoc(fn) or name).split("\n\n")[0].replace("\n", " ")
        params = {"type": "object", "properties": props, "required": required, "additionalProperties": False}
        return cls(name, fn, desc, params)

    def schema(self) -> dict:
        """OpenAI function-calling shape."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}

    def validate(self, args: Any) -> str | None:
        """None when `args` fits the schema, else a one-line reason."""
        if not isinstance(args, dict):
            return f"{self.name}: arguments must be a JSON object, got {_type_name(args)}"
        props = self.parameters["properties"]
        # a misspelt name first: "unexpected 'expr' (did you mean 'expression'?)" says more than "missing"
        extra = [k for k in args if k not in props]
        if extra:
            near = difflib.get_close_matches(extra[0], list(props), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else f"; it takes {', '.join(props) or 'no arguments'}"
            return f"{self.name}: unexpected argument {extra[0]!r}{hint}"
        missing = [k for k in self.parameters["required"] if k not in args]
        if missing:
            return f"{self.name}: missing argument {', '.join(repr(k) for k in missing)}"
        for k, v in args.items():
            if not _check(v, props[k]):
                want = props[k].get("enum") or props[k]["type"]
                return f"{self.name}: argument {k!r} must be {want}, got {_type_name(v)} {json.dumps(v)[:40]}"
        return None


@dataclass
class ToolResult:
    text: str  # what the agent observes (the result, or "error: ...")
    ok: bool

    def __str__(self) -> str:
        return self.text


class ToolRegistry:
    """Named tools; `call(name, json_text)` validates, runs and returns text, never raising for bad calls."""

    def __init__(self, tools: list[Tool] | None = None):
        self.tools: dict[str, Tool] = {}
        for t in tools or []:
            self.tools[t.name] = t

    def register(self, fn: Callable[..., Any] | None = None, *, name: str | None = None,
                 description: str | None = None):
        """Add a function as a tool; usable as `@registry.register` or `registry.register(fn, name=...)`."""
        def add(f: Callable[..., Any]) -> Callable[..., Any]:
            tool = Tool.from_function(f, name, description)
            self.tools[tool.name] = tool
            return f
        return add(fn) if fn is not None else add

    def __contains__(self, name: str) -> bool:
        return name in self.tools

    def names(self) -> list[str]:
        return list(self.tools)

    def schemas(self) -> list[dict]:
        return [t.schema() for t in self.tools.values()]

    def describe(self) -> str:
        """One line per tool for a prompt: `name(arg: type, ...): description`."""
        lines = []
        for t in self.tools.values():
            args = ", ".join(f"{k}: {v['type']}" for k, v in t.parameters["properties"].items())
            lines.append(f"{t.name}({args}): {t.description}")
        return "\n".join(lines)

    def parse_args(self, name: str, arguments: str | dict) -> tuple[Tool | None, dict | None, str | None]:
        """(tool, args, None) when the call is well-formed, else (tool or None, None, one-line error)."""
        if name not in self.tools:
            near = difflib.get_close_matches(name, self.names(), n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"tools: {', '.join(self.names())}"
            return None, None, f"unknown tool {name!r}; {hint}"
        tool = self.tools[name]
        if isinstance(arguments, str):
            try:
                args = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as e:
                return tool, None, f"{name}: arguments are not valid JSON ({e.msg} at char {e.pos})"
        else:
            args = arguments
        err = tool.validate(args)
        return (tool, None, err) if err else (tool, args, None)

    def call(self, name: str, arguments: str | dict) -> ToolResult:
        tool, args, err = self.parse_args(name, arguments)
        if err:
            return ToolResult(f"error: {err}", False)
        try:
            out = tool.fn(**args)
        except Exception as e:  # a tool's own failure is an observation for the agent, not a crash
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            return ToolResult(f"error: {name}: {msg}", False)
        return ToolResult(out if isinstance(out, str) else json.dumps(out), True)


# ---- calculator ------------------------------------------------------------------------------------

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNOPS = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCS = {"sqrt": math.sqrt, "abs": abs, "round": round, "min": min, "max": max, "floor": math.floor,
          "ceil": math.ceil}
_MAX_POW = 1000  # 9**9**9 would freeze the process: bound exponents and operand sizes
_MAX_DIGITS = 400


def _eval(node: ast.AST) -> float | int:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(b) > _MAX_POW:
            raise ValueError(f"exponent {b} is too large (max {_MAX_POW})")
        out = _BINOPS[type(node.op)](a, b)
        if isinstance(out, int) and out.bit_length() > _MAX_DIGITS * 3.33:
            raise ValueError("result too large")
        return out
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNOPS:
        return _UNOPS[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS and not node.keywords:
        return _FUNCS[node.func.id](*[_eval(a) for a in node.args])
    raise ValueError(f"unsupported expression: {ast.unparse(node)[:40]}")


def format_number(x: float | int) -> str:
    """Integers without a decimal point; other floats to 6 significant digits."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return str(x) if isinstance(x, int) else f"{x:.6g}"


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression (+ - * / // % **, parentheses, sqrt abs round min max floor ceil)."""
    expr = expression.replace("×", "*").replace("÷", "/").replace("^", "**").strip()
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        raise ValueError(f"cannot parse {expression!r}") from e
    try:
        return format_number(_eval(tree))
    except ZeroDivisionError as e:
        raise ValueError("division by zero") from e


# ---- dates -----------------------------------------------------------------------------------------

_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]


def parse_date(text: str) -> dt.date:
    """'March 5, 2021' or '2021-03-05' -> date."""
    text = text.strip()
    m = re.fullmatch(r"(\d{4})-(\d{1,2})-(\d{1,2})", text)
    if m:
        return dt.date(int(m[1]), int(m[2]), int(m[3]))
    m = re.fullmatch(r"([A-Za-z]+)\s+(\d{1,2}),?\s+(\d{4})", text)
    if m and m[1].capitalize() in _MONTHS:
        return dt.date(int(m[3]), _MONTHS.index(m[1].capitalize()) + 1, int(m[2]))
    raise ValueError(f"cannot read date {text!r}; write 'March 5, 2021' or '2021-03-05'")


def format_date(d: dt.date) -> str:
    return f"{_MONTHS[d.month - 1]} {d.day}, {d.year}"


def date_add(date: str, days: int) -> str:
    """The date `days` days after `date` (negative: before), written like 'March 5, 2021'."""
    return format_date(parse_date(date) + dt.timedelta(days=days))


def date_diff(start: str, end: str) -> str:
    """Number of days from `start` to `end`."""
    return str((parse_date(end) - parse_date(start)).days)


# ---- the registry an agent gets by default ---------------------------------------------------------

def default_registry(kb: Any = None, sandbox_cfg: Any = None,
                     include: tuple[str, ...] = ("calculator", "search", "date_add", "date_diff", "python"),
                     ) -> ToolRegistry:
    """calculator, search (needs `kb`, a `genforge.agents.knowledge.KnowledgeBase`), dates and python."""
    reg = ToolRegistry()
    if "calculator" in include:
        reg.register(calculator)
    if "search" in include and kb is not None:
        def search(query: str, k: int = 3) -> str:
            """Search the world's facts; returns the best-matching facts, one per line."""
            hits = kb.search(query, k=k)
            return "\n".join(hits) if hits else "no results"
        reg.register(search)
    if "date_add" in include:
        reg.register(date_add)
    if "date_diff" in include:
        reg.register(date_diff)
    if "python" in include:
        from genforge.agents.sandbox import run_python

        def python(code: str) -> str:
            """Run Python code in a sandbox (no files, no network); returns what it prints."""
            r = run_python(code, sandbox_cfg)
            return r.as_observation() if r.ok else r.as_observation() + f" [isolation: {r.isolation}]"
        reg.register(python)
    return reg
