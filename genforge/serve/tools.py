"""Function calling for `/v1/chat/completions`: OpenAI's `tools`, `tool_choice`, `tool_calls` and `tool` messages.

The model writes a call as text, `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (the chat template's
shape, see `genforge.tokenizer`); the server turns a well-formed call into OpenAI's `tool_calls` and answers
`finish_reason: "tool_calls"`. What each `tool_choice` does:

- `"none"`: the tools are not shown to the model; it answers in text.
- `"auto"` (the default when tools are given): the model decides; once it writes `<tool_call>` the rest of the
  call is constrained (below), so a call it starts always parses. Text without a call is the message content.
- `"required"` / `{"type": "function", "function": {"name": ...}}`: the reply *is* a call (to any tool / to that
  one), constrained from its first token.

Constrained decoding: the call is a Lark grammar, `"<tool_call>" %json{schema} "</tool_call>"`, whose JSON schema
is the tools' own (`{"name": <const>, "arguments": <the function's parameters>}`, one alternative per tool),
enforced by the same grammar engine as `response_format` (`genforge.infer.grammar`, llguidance): only tokens
that keep the reply inside the grammar get through, and the end-of-turn token only once the call is complete.
So even a random ~1M-parameter model emits a parseable call that fits the schema (strings and arrays are
bounded to fit max_tokens, see `grammar.bounded_schema`). A schema keyword the engine cannot enforce is a 400.
Every call is still validated with `jsonschema` before it is returned, and a call that fails (a model that
ran out of tokens mid-call) is returned as plain content instead, never as a broken `tool_calls`.

Requests are checked before they reach the model: a `tool_choice` without tools or naming an unknown function,
duplicate names, a `parameters` that is not a JSON schema, a `tool` message answering no earlier call, and an
assistant `tool_calls[].function.arguments` that is not JSON or does not fit its tool's schema are all 400s
naming the field.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from genforge.errors import ConfigError
from genforge.extras import require
from genforge.infer import grammar
from genforge.serve.schemas import APIError, ChatRequest
from genforge.tokenizer import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, Tokenizer


# ---------------------------------------------------------------------------------------------- the grammar
def call_schema(tools: Sequence[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
    """The JSON schema of one call's object `{"name": ..., "arguments": {...}}` to any of `tools`, narrowed to fit
    max_tokens (`grammar.bounded_schema`)."""
    alts = []
    for t in tools:
        f = t["function"]
        params = f.get("parameters") or {"type": "object", "properties": {}}
        alts.append({"type": "object", "properties": {"name": {"const": f["name"]}, "arguments": params},
                     "required": ["name", "arguments"], "additionalProperties": False})
    schema = alts[0] if len(alts) == 1 else {"anyOf": alts}
    return grammar.bounded_schema(schema, max_tokens)


def call_grammar(tools: Sequence[dict[str, Any]], max_tokens: int) -> str:
    """The Lark grammar of one call as the model writes it: `<tool_call>{"name": .., "arguments": ..}</tool_call>`,
    in `json.dumps`'s spacing (what the chat template shows the model)."""
    schema = {**call_schema(tools, max_tokens), "x-guidance": grammar.JSON_STYLE}
    return grammar.lark_grammar(f'start: "{TOOL_CALL_OPEN}" call "{TOOL_CALL_CLOSE}"\ncall: %json '
                                + json.dumps(schema))


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
               max_tokens: int) -> list[grammar.GrammarLogitsProcessor]:
    """The logits processors a request's generation needs ([] without tools): the call grammar, from the first
    token when the call is forced, from `<tool_call>` on otherwise. A tool whose schema uses a keyword the
    grammar engine cannot enforce is a 400 naming it."""
    if not plan.active:
        return []
    wrapper = len(TOOL_CALL_OPEN) + len(TOOL_CALL_CLOSE)
    try:
        g = call_grammar(plan.callable, max(16, max_tokens - wrapper))
        grammar.check_grammar(g, tokenizer)
        reserve = wrapper + grammar.min_bytes(call_schema(plan.callable, max_tokens))
    except (ConfigError, ValueError, RuntimeError) as e:
        raise APIError(400, f"tools: the arguments' schema cannot be enforced: {e}", param="tools",
                       code="invalid_value") from None
    return [grammar.GrammarLogitsProcessor(g, tokenizer, prompt_len, stop_ids=[tokenizer.end_id, tokenizer.eos_id],
                                           trigger=None if plan.forced else TOOL_CALL_OPEN, max_tokens=max_tokens,
                                           reserve=reserve)]


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
