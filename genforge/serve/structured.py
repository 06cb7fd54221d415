"""`response_format` for chat and completions: the reply's grammar, enforced while decoding.

- `{"type": "text"}` (or none): free text.
- `{"type": "json_object"}`: the reply is a JSON object (a bounded one, see `grammar.json_object_schema`).
- `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`: the reply is JSON valid under the
  schema (strict or not, it is enforced; narrowed only to fit max_tokens, see `grammar.bounded_schema`).
- extensions: `{"type": "regex", "regex": "..."}` (the reply matches the pattern) and
  `{"type": "choice", "choice": ["yes", "no"]}` (the reply is one of the strings).

Whatever the grammar engine cannot honour -- a schema keyword it does not implement, an invalid schema or
regex -- is a 400 naming it, never a silently looser reply.
"""

from __future__ import annotations

from collections.abc import Sequence

from genforge.errors import ConfigError
from genforge.extras import require
from genforge.infer import grammar
from genforge.serve.schemas import APIError, ResponseFormat
from genforge.tokenizer import Tokenizer


def _bad(message: str, param: str = "response_format") -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


def grammar_for(fmt: ResponseFormat, tokenizer: Tokenizer, max_tokens: int) -> tuple[str, int] | None:
    """(llguidance grammar, end-game reserve) of a response_format (None for text), checked: a 400 for what
    cannot be honoured."""
    if fmt.type == "text":
        return None
    reserve = 0
    try:
        if fmt.type == "json_object":
            schema = grammar.json_object_schema(max_tokens)
            g, reserve = grammar.json_schema_grammar(schema), grammar.min_bytes(schema)
        elif fmt.type == "json_schema":
            if fmt.json_schema is None or fmt.json_schema.schema_ is None:
                raise _bad("response_format json_schema needs json_schema.schema (a JSON schema)",
                           "response_format.json_schema")
            schema = fmt.json_schema.schema_
            jsonschema = require("jsonschema", "serve")
            try:
                jsonschema.Draft202012Validator.check_schema(schema)
            except jsonschema.SchemaError as e:
                raise _bad(f"response_format.json_schema.schema is not a valid JSON schema: {e.message}",
                           "response_format.json_schema.schema") from None
            bounded = grammar.bounded_schema(schema, max_tokens)
            g, reserve = grammar.json_schema_grammar(bounded), grammar.min_bytes(bounded)
        elif fmt.type == "regex":
            if not fmt.regex:
                raise _bad("response_format regex needs \"regex\": a pattern", "response_format.regex")
            g = grammar.regex_grammar(fmt.regex)
        else:
            if not fmt.choice or any(not c for c in fmt.choice):
                raise _bad("response_format choice needs \"choice\": non-empty strings", "response_format.choice")
            g = grammar.choice_grammar(fmt.choice)
        grammar.check_grammar(g, tokenizer)
    except (ConfigError, ValueError, RuntimeError) as e:  # llguidance reports unsupported features this way
        raise _bad(f"response_format cannot be enforced: {e}") from None
    return g, reserve


def processor_for(fmt: ResponseFormat | None, tokenizer: Tokenizer, prompt_len: int, stop_ids: Sequence[int],
                  max_tokens: int) -> grammar.GrammarLogitsProcessor | None:
    """The logits processor enforcing `fmt` (None for no format or "text")."""
    if fmt is None:
        return None
    got = grammar_for(fmt, tokenizer, max_tokens)
    if got is None:
        return None
    return grammar.GrammarLogitsProcessor(got[0], tokenizer, prompt_len, stop_ids=stop_ids, max_tokens=max_tokens,
                                          reserve=got[1])
