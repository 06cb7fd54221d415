"""Request limits checked before a request reaches the model, each answered as an OpenAI-schema 400/413.

- body size: bodies over `max_body_bytes` get 413 before they are read to the end;
- JSON nesting depth: counted on the raw bytes *before* parsing, because Python's JSON decoder
  recurses once per level and a 100k-level body (even inside a field we would refuse) raises
  `RecursionError`. Real OpenAI bodies are a few levels deep (messages -> content parts);
- text the tokenizer cannot encode: JSON may carry lone UTF-16 surrogates ("\\ud800"), which are
  valid JSON but not Unicode text; the path of the first such string is named in the 400;
- context: prompt + max_tokens must fit the model's window (or be truncated when asked).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

from genforge.serve.schemas import APIError

MAX_JSON_DEPTH = 32  # arrays/objects nested in a request body (OpenAI's chat bodies need ~5)
MAX_ROWS = 64  # prompts x n in one request

_STRUCTURAL = re.compile(rb'[\[\]{}"\\]')


def json_depth_exceeds(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when arrays/objects in `body` nest deeper than `limit` (brackets inside strings do not count).

    Only the structural bytes are visited (a regex scan), so a 1 MiB body costs milliseconds; the
    scan stops at the first level past the limit. Malformed JSON is left to the parser to report.
    """
    depth, in_string, skip = 0, False, -1
    for m in _STRUCTURAL.finditer(body):
        i = m.start()
        if i == skip:  # the character after a backslash inside a string is escaped
            continue
        c = body[i]
        if in_string:
            if c == 0x5C:  # backslash
                skip = i + 1
            elif c == 0x22:  # closing quote
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif c in (0x5D, 0x7D):  # ] }
            depth -= 1
    return False


def unencodable_text(value: Any, path: str = "") -> str | None:
    """The path ('messages[0].content') of the first string that is not valid Unicode, else None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str):
            where = unencodable_text(key, f"{path}.{key}" if path else key)  # keys must be text too
            if where:
                return where
        found = unencodable_text(item, f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else key)
        if found:
            return found
    return None


async def read_json_body(chunks: AsyncIterator[bytes], declared_length: str | None, max_body_bytes: int) -> Any:
    """Read and decode a JSON request body within the size and depth limits (413 / 400 otherwise).

    The whole body is read before a 400 is raised, so the keep-alive connection stays usable.
    """
    if declared_length and declared_length.isdigit() and int(declared_length) > max_body_bytes:
        raise APIError(413, f"request body of {int(declared_length)} bytes exceeds the limit of {max_body_bytes}",
                       code="request_too_large")
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > max_body_bytes:
            raise APIError(413, f"request body exceeds the limit of {max_body_bytes} bytes", code="request_too_large")
    if json_depth_exceeds(bytes(body)):
        raise APIError(400, f"the request body nests arrays/objects deeper than {MAX_JSON_DEPTH} levels",
                       code="invalid_json")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from None
    except RecursionError:  # belt and braces: the depth scan should have caught it
        raise APIError(400, "the request body nests too deeply", code="invalid_json") from None
    where = unencodable_text(data)
    if where:
        raise APIError(400, f"invalid value for {where!r}: the text contains a lone UTF-16 surrogate (not valid "
                       "Unicode); send well-formed UTF-8", param=where, code="invalid_value")
    return data


def check_rows(n_prompts: int, n: int) -> None:
    """At most MAX_ROWS generated rows (prompts x n) per request."""
    if n_prompts * n > MAX_ROWS:
        raise APIError(400, f"prompts x n = {n_prompts * n} exceeds the limit of {MAX_ROWS} per request",
                       param="n", code="invalid_value")


def fit_context(ids: list[int], max_tokens: int | None, default: int, context_len: int, truncate: bool,
                bos_id: int | None, where: str = "prompt") -> tuple[list[int], int]:
    """(ids, max_tokens) that fit the context window, or a 400 (truncating the oldest tokens only when asked).

    max_tokens None means `default`, capped by the room left. Truncation keeps a leading BOS.
    """
    if max_tokens is not None and max_tokens >= context_len:
        raise APIError(400, f"max_tokens ({max_tokens}) must be smaller than the model's context window "
                       f"({context_len} tokens)", param="max_tokens", code="context_length_exceeded")
    want = max_tokens if max_tokens is not None else min(default, max(context_len - len(ids), 1))
    if len(ids) + want > context_len:
        if not truncate:
            raise APIError(400, f"this model's maximum context length is {context_len} tokens, but you "
                           f"requested {len(ids) + want} ({len(ids)} in the {where}, {want} for the completion); "
                           "shorten the prompt, lower max_tokens, or set \"truncate\": true",
                           param="messages" if where == "messages" else "prompt", code="context_length_exceeded")
        keep = context_len - want  # >= 1 since want < context_len
        first = ids[:1] if ids[:1] == [bos_id] and keep > 1 else []
        ids = first + ids[len(ids) - (keep - len(first)):]
    return ids, want
