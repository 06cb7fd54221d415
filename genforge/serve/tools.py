"""Function calling for `/v1/chat/completions`: OpenAI's `tools`, `tool_choice`, `tool_calls` and `tool` messages.

The model writes a call as text, `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (the chat template's
shape, see `genforge.tokenizer`); the server turns a well-formed call into OpenAI's `tool_calls` and answers
`finish_reason: "tool_calls"`. What each `tool_choice` does:

- `"none"`: the tools are not shown to the model; it answers in text.
- `"auto"` (the default when tools are given): the model decides; once it writes `<tool_call>` the rest of the
  call is constrained (below), so a call it starts always parses. Text without a call is the message content.
- `"required"` / `{"type": "function", "function": {"name": ...}}`: the reply *is* a call (to any tool / to that
  one), constrained from its first token.

Constrained decoding (as in Outlines, Willard & Louf 2023, at a much smaller scale): the call's grammar is a
regular expression built from the tools' JSON schemas (`call_regex`), and `ToolCallConstraint`, a logits processor,
lets through only tokens that keep the text a prefix of some match (`regex`'s partial matching), and the
end-of-turn token only once the call is complete. So even a random ~1M-parameter model emits a parseable call
that fits the schema. The regex covers the JSON-schema subset function signatures use (object with properties,
string / integer / number / boolean / null, enum / const, arrays of those); it writes the required properties
in the schema's order, in `json.dumps`'s spacing. Keywords it cannot express (pattern, minimum, oneOf...) are
still checked afterwards: every call is validated with `jsonschema` before it is returned, and a call that fails
is returned as plain content instead (never as a broken `tool_calls`). A request with tools carries its own
processor, so it runs as a batch of its own (see `serve.batcher`).

Requests are checked before they reach the model: a `tool_choice` without tools or naming an unknown function,
duplicate names, a `parameters` that is not a JSON schema, a `tool` message answering no earlier call, and an
assistant `tool_calls[].function.arguments` that is not JSON or does not fit its tool's schema are all 400s
naming the field.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from genforge.extras import require
from genforge.serve.schemas import APIError, ChatRequest
from genforge.tokenizer import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, Tokenizer

MAX_STRING = 200  # characters of one string value in a constrained call (at most; see `constraint`)
MAX_ITEMS = 16  # items of one array value
_INT = r"-?(?:0|[1-9][0-9]{0,15})"
_NUMBER = _INT + r"(?:\.[0-9]{1,10})?"


def _string(n: int) -> str:
    """A JSON string of at most n characters (escapes count as one)."""
    return r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]){0,' + str(n) + '}"'


def _scalar(n: int) -> str:
    return f"(?:{_string(n)}|{_NUMBER}|true|false|null)"


# ---------------------------------------------------------------------------------------------- the grammar
def value_regex(schema: dict[str, Any], depth: int = 0, max_string: int = MAX_STRING) -> str:
    """A regex for the JSON text of one value of `schema` (the subset described in the module docstring)."""
    if depth > 6:  # deeper schemas: any scalar (jsonschema still validates the result)
        return _scalar(max_string)
    if "const" in schema:
        return re.escape(json.dumps(schema["const"], ensure_ascii=False))
    if "enum" in schema:
        return "(?:" + "|".join(re.escape(json.dumps(v, ensure_ascii=False)) for v in schema["enum"]) + ")"
    t = schema.get("type")
    if isinstance(t, list):
        return "(?:" + "|".join(value_regex({**schema, "type": x}, depth, max_string) for x in t) + ")"
    if t == "string":
        return _string(max_string)
    if t == "integer":
        return _INT
    if t == "number":
        return _NUMBER
    if t == "boolean":
        return "(?:true|false)"
    if t == "null":
        return "null"
    if t == "array":
        item = value_regex(schema.get("items") or {}, depth + 1, max_string)
        return rf"\[(?:{item}(?:, {item}){{0,{MAX_ITEMS - 1}}})?\]"
    if t == "object" or "properties" in schema:
        return object_regex(schema, depth + 1, max_string)
    return _scalar(max_string)


def object_regex(schema: dict[str, Any], depth: int = 0, max_string: int = MAX_STRING) -> str:
    """`{"a": A, "b": B}` with the required properties in the schema's order (none required: `{}`)."""
    props = schema.get("properties") or {}
    parts = [re.escape(json.dumps(k)) + ": " + value_regex(props.get(k, {}), depth, max_string)
             for k in schema.get("required", [])]
    return r"\{" + ", ".join(parts) + r"\}"


def call_regex(tools: Sequence[dict[str, Any]], max_string: int = MAX_STRING) -> str:
    """The text of one call to any of `tools` (OpenAI tool objects):
    `<tool_call>{"name": .., "arguments": ..}</tool_call>`."""
    alts = []
    for t in tools:
        f = t["function"]
        params = f.get("parameters") or {"type": "object", "properties": {}}
        head = re.escape(f'{TOOL_CALL_OPEN}{{"name": "{f["name"]}", "arguments": ')
        alts.append(head + object_regex(params, 0, max_string)
                    + re.escape("}" + TOOL_CALL_CLOSE))
    return "(?:" + "|".join(alts) + ")"


class ToolCallConstraint:
    """Logits processor: only tokens that keep the reply's call a prefix of `call_regex(tools)` (see module doc).

    forced=True constrains from the first token; otherwise only from where the reply writes `<tool_call>`.
    prompt_len: the prompt's length (every row of the job shares it), so the reply is input_ids[:, prompt_len:].
    keep: how many allowed tokens to find per step, best first (1 for greedy decoding: the argmax among the
    allowed tokens; more when sampling, which then samples among the `keep` best allowed tokens).
    """

    def __init__(self, tokenizer: Tokenizer, tools: Sequence[dict[str, Any]], prompt_len: int, *, forced: bool,
                 stop_ids: Sequence[int], keep: int = 1, max_string: int = MAX_STRING):
        regex = require("regex", "serve")
        self.rx = regex.compile(call_regex(tools, max_string))
        self.tok, self.prompt_len, self.forced = tokenizer, prompt_len, forced
        self.stop_ids, self.keep = set(stop_ids), max(1, keep)
        # a token's text; special tokens and partial UTF-8 bytes never extend a call
        pieces = [None if i in tokenizer.special_ids else tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
        self.pieces = [p if p and "\ufffd" not in p else None for p in pieces]

    def _allowed(self, call: str, order: list[int]) -> list[int]:
        done = self.rx.fullmatch(call) is not None
        ok: list[int] = []
        for i in order:
            if i in self.stop_ids:
                good = done
            else:
                piece = self.pieces[i] if i < len(self.pieces) else None
                good = piece is not None and not done and self.rx.fullmatch(call + piece, partial=True) is not None
            if good:
                ok.append(i)
                if len(ok) >= self.keep:
                    break
        return ok or sorted(self.stop_ids)  # nothing fits (cannot happen for a valid grammar): end the turn

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        out = scores.clone()
        for b in range(scores.shape[0]):
            text = self.tok.decode(input_ids[b, self.prompt_len:].tolist())
            start = 0 if self.forced else text.find(TOOL_CALL_OPEN)
            if start < 0:
                continue  # auto: no call started, the model writes freely
            order = torch.argsort(scores[b], descending=True).tolist()
            allowed = self._allowed(text[start:], order)
            row = torch.full_like(scores[b], float("-inf"))
            row[allowed] = scores[b, allowed]
            out[b] = row
        return out


# ---------------------------------------------------------------------------------------------- requests
@dataclass
class ToolPlan:
    """What a request's tools mean for this generation."""

    tools: list[dict[str, Any]]  # the tools shown to the model ([] when none or tool_choice "none")
    callable: list[dict[str, Any]]  # the tools a call may name (one when tool_choice names it)
    forced: bool  # the reply must be a call

    @property
    def active(self) -> bool:
        return bool(self.tools)


def _schema_errors(schema: dict[str, Any], value: Any) -> str | None:
    jsonschema = require("jsonschema", "serve")
    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(value))
    if err is None:
        return None
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
    return f"arguments{where}: {err.message}"


def plan_tools(req: ChatRequest) -> ToolPlan:
    """Check the request's tools, tool_choice and tool messages (400 naming the field) and say how to generate."""
    jsonschema = require("jsonschema", "serve")
    tools = [t.model_dump(exclude_none=True) for t in req.tools or []]
    names = [t["function"]["name"] for t in tools]
    choice = req.tool_choice
    if choice is not None and not tools:
        raise APIError(400, "tool_choice is only allowed when tools are specified", param="tool_choice",
                       code="invalid_value")
    dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if dup:
        raise APIError(400, f"tools: the function name {dup!r} appears twice; names must be unique", param="tools",
                       code="invalid_value")
    for i, t in enumerate(tools):
        params = t["function"].get("parameters")
        if params is None:
            continue
        try:
            jsonschema.Draft202012Validator.check_schema(params)
        except jsonschema.SchemaError as e:
            raise APIError(400, f"tools[{i}].function.parameters is not a valid JSON schema: {e.message}",
                           param=f"tools[{i}].function.parameters", code="invalid_value") from None
        if params.get("type", "object") != "object":
            raise APIError(400, f"tools[{i}].function.parameters must describe an object (\"type\": \"object\")",
                           param=f"tools[{i}].function.parameters", code="invalid_value")
    _check_messages(req, {n: t["function"].get("parameters") for n, t in zip(names, tools)})
    if not tools or choice == "none":
        return ToolPlan([], [], False)
    if choice is None or choice == "auto":
        return ToolPlan(tools, tools, False)
    if choice == "required":
        return ToolPlan(tools, tools, True)
    name = choice.function.name
    if name not in names:
        raise APIError(400, f"tool_choice names the function {name!r}, which is not in tools ({', '.join(names)})",
                       param="tool_choice", code="invalid_value")
    return ToolPlan(tools, [tools[names.index(name)]], True)


def _check_messages(req: ChatRequest, schemas: dict[str, dict | None]) -> None:
    call_ids: set[str] = set()
    for i, m in enumerate(req.messages):
        if m.role == "tool":
            if not m.tool_call_id:
                raise APIError(400, f"messages[{i}]: a 'tool' message needs tool_call_id (the id of the call it "
                               "answers)", param=f"messages[{i}].tool_call_id", code="missing_required_parameter")
            if m.tool_call_id not in call_ids:
                raise APIError(400, f"messages[{i}]: tool_call_id {m.tool_call_id!r} answers no tool call of an "
                               "earlier assistant message", param=f"messages[{i}].tool_call_id", code="invalid_value")
        elif m.tool_call_id is not None:
            raise APIError(400, f"messages[{i}]: tool_call_id belongs to 'tool' messages only",
                           param=f"messages[{i}].tool_call_id", code="invalid_value")
        if m.tool_calls and m.role != "assistant":
            raise APIError(400, f"messages[{i}]: only assistant messages carry tool_calls",
                           param=f"messages[{i}].tool_calls", code="invalid_value")
        if m.content is None and not (m.role == "assistant" and m.tool_calls):
            raise APIError(400, f"messages[{i}]: content may be null only in an assistant message with tool_calls",
                           param=f"messages[{i}].content", code="invalid_value")
        for j, call in enumerate(m.tool_calls or []):
            where = f"messages[{i}].tool_calls[{j}].function.arguments"
            try:
                args = json.loads(call.function.arguments)
            except json.JSONDecodeError as e:
                raise APIError(400, f"{where} is not valid JSON ({e.msg} at char {e.pos})", param=where,
                               code="invalid_value") from None
            if not isinstance(args, dict):
                raise APIError(400, f"{where} must be a JSON object", param=where, code="invalid_value")
            schema = schemas.get(call.function.name)
            err = _schema_errors(schema, args) if schema else None
            if err:
                raise APIError(400, f"{where} does not fit the schema of {call.function.name!r}: {err}",
                               param=where, code="invalid_value")
            call_ids.add(call.id)


def message_dicts(req: ChatRequest) -> list[dict[str, Any]]:
    """The request's messages as the chat template takes them (developer -> system, tool calls kept)."""
    out = []
    for m in req.messages:
        d: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        if m.tool_calls:
            d["tool_calls"] = [{"function": {"name": c.function.name, "arguments": c.function.arguments}}
                               for c in m.tool_calls]
        out.append(d)
    return out


def constraint(plan: ToolPlan, tokenizer: Tokenizer, prompt_len: int, greedy: bool,
               max_tokens: int) -> list[ToolCallConstraint]:
    """The logits processors a request's generation needs ([] without tools).

    Strings are capped at max_tokens // 3 characters (16..MAX_STRING): a model that never closes its string
    (a random or confused one) still finishes the call within max_tokens, as long as the schema has few strings.
    """
    if not plan.active:
        return []
    return [ToolCallConstraint(tokenizer, plan.callable, prompt_len, forced=plan.forced,
                               stop_ids=[tokenizer.end_id, tokenizer.eos_id], keep=1 if greedy else 64,
                               max_string=min(MAX_STRING, max(16, max_tokens // 3)))]


# ---------------------------------------------------------------------------------------------- replies
def parse_reply(text: str, plan: ToolPlan) -> tuple[str | None, list[dict[str, Any]]]:
    """(content, tool_calls) of one reply: a valid call becomes OpenAI's tool_calls entry, anything else text."""
    start = text.find(TOOL_CALL_OPEN)
    if not plan.active or start < 0:
        return text, []
    body = text[start + len(TOOL_CALL_OPEN):].strip()
    if not body.endswith(TOOL_CALL_CLOSE):
        return text, []
    try:
        call = json.loads(body[:-len(TOOL_CALL_CLOSE)])
    except json.JSONDecodeError:
        return text, []
    tools = {t["function"]["name"]: t["function"] for t in plan.callable}
    if not isinstance(call, dict) or call.get("name") not in tools or not isinstance(call.get("arguments"), dict):
        return text, []
    schema = tools[call["name"]].get("parameters")
    if schema and _schema_errors(schema, call["arguments"]):
        return text, []
    content = text[:start].strip() or None
    return content, [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}}]


class StreamedReply:
    """One choice's streamed text with tool calls held back: content streams as it comes, except text that may
    be (the start of) a call, which waits for the end; then a valid call is sent as tool_calls deltas (OpenAI's
    streamed shape: id, type and name first, then the arguments), an invalid one as content."""

    def __init__(self, plan: ToolPlan):
        self.plan, self.text, self.sent = plan, "", 0

    def push(self, delta: str) -> str:
        """Content that can go out now."""
        self.text += delta
        if not self.plan.active:
            out, self.sent = self.text[self.sent:], len(self.text)
            return out
        start = self.text.find(TOOL_CALL_OPEN)
        if self.plan.forced:
            safe = 0  # the whole reply is the call: nothing goes out before the end
        elif start >= 0:
            safe = start
        else:  # hold back a tail that may grow into "<tool_call>"
            safe = len(self.text)
            for n in range(min(len(TOOL_CALL_OPEN) - 1, len(self.text)), 0, -1):
                if self.text.endswith(TOOL_CALL_OPEN[:n]):
                    safe = len(self.text) - n
                    break
        safe = max(safe, self.sent)
        out, self.sent = self.text[self.sent:safe], safe
        return out

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        """(content still to send, streamed tool-call deltas) once the choice has ended."""
        content, calls = parse_reply(self.text, self.plan)
        if not calls:
            out, self.sent = self.text[self.sent:], len(self.text)
            return out, []
        start = self.text.find(TOOL_CALL_OPEN)
        held = self.text[self.sent:start] if content else ""
        deltas = []
        for k, c in enumerate(calls):
            deltas.append({"index": k, "id": c["id"], "type": "function",
                           "function": {"name": c["function"]["name"], "arguments": ""}})
            deltas.append({"index": k, "function": {"arguments": c["function"]["arguments"]}})
        return held, deltas
