"""Request bodies of the OpenAI-compatible API, and its error body.

Requests are validated strictly (a string where a number belongs is a 400, as OpenAI does, not
silently coerced). Unknown fields (`functions`, ...) are a 400 naming the field: ignoring them would
answer a different request than the one sent. Fields we recognise but cannot honour (suffix,
best_of > n) are rejected with a clear 400 too. Log-probabilities: completions take `logprobs: k`
(the legacy format: each token's log-prob and the k most likely alternatives) and `echo` (the prompt
and its tokens' log-probs first; with `max_tokens: 0` a request only scores its prompt, which is how
lm-evaluation-harness asks for log-likelihoods); chat takes `logprobs: true` + `top_logprobs: k`.
Structured output: `response_format` (`text`, `json_object`, `json_schema`; extensions `regex` and
`choice`) is enforced while decoding (see `genforge.infer.grammar`). Numbers are limited to
what the sampler can honour: `seed` fits in 64 bits (torch's generator seed), and a temperature
above 0 but below `genforge.infer.sampling.GREEDY_BELOW` samples greedily (see there).
Function calling (`tools`, `tool_choice`, `tool_calls`, role "tool") is parsed here and checked and
served by `genforge.serve.tools`.
Extensions beyond OpenAI: `top_k`, `repetition_penalty` and `truncate` (drop the oldest prompt
tokens/messages instead of failing when prompt + max_tokens exceed the context window).

Reference: https://platform.openai.com/docs/api-reference/chat/create and /completions/create.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from genforge.infer.sampling import SamplingParams

MAX_N = 8  # choices per request
MAX_STOP = 4  # stop sequences per request (OpenAI's limit)


class APIError(Exception):
    """An error answered as `{"error": {"message", "type", "param", "code"}}` with an HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class TextPart(_Strict):
    """One part of a multi-part message content (only text parts are supported)."""

    type: Literal["text"]
    text: str


_NAME = r"^[A-Za-z0-9_-]{1,64}$"  # OpenAI's rule for function names (also keeps them literal in the template)


class FunctionCall(_Strict):
    name: str = Field(pattern=_NAME)
    arguments: str  # JSON text, as OpenAI sends it (checked by serve.tools)


class ToolCall(_Strict):
    """One call in an assistant message's `tool_calls`."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Strict):
    """A chat message; `developer` is treated as `system` (the newer OpenAI name); `tool` answers a tool call."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # assistant: the calls it made
    tool_call_id: str | None = None  # tool: the call this result answers

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class FunctionDef(_Strict):
    name: str = Field(pattern=_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments object
    strict: bool | None = None


class ToolDef(_Strict):
    """One entry of `tools`."""

    type: Literal["function"]
    function: FunctionDef


class FunctionName(_Strict):
    name: str


class NamedToolChoice(_Strict):
    """`tool_choice` naming one function: `{"type": "function", "function": {"name": ...}}`."""

    type: Literal["function"]
    function: FunctionName


class StreamOptions(_Strict):
    include_usage: bool = False


class SamplingRequest(_Strict):
    """Fields shared by chat and text completions."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)  # extension: 0 = off
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)  # torch.Generator.manual_seed's range
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)  # extension (CTRL)
    truncate: bool = False  # extension: fit an over-long prompt by dropping its oldest part
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are allowed, got {len(stops)}")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return stops

    def stops(self) -> list[str]:
        return list(self.stop or [])

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling(self) -> SamplingParams:
        """The request's sampling settings as the engine takes them (max_new_tokens: the requested cap,
        or SamplingParams' default when unset; the server fits it to the context window)."""
        cap = getattr(self, "max_completion_tokens", None) or self.max_tokens
        return SamplingParams(max_new_tokens=cap or SamplingParams.max_new_tokens, temperature=self.temperature,
                              top_k=self.top_k, top_p=self.top_p, seed=self.seed,
                              repetition_penalty=self.repetition_penalty, frequency_penalty=self.frequency_penalty,
                              presence_penalty=self.presence_penalty, stop=self.stops())


class RetrievalOptions(_Strict):
    """Extension (rag): retrieve k passages for the last user message; see genforge/serve/embeddings.py."""

    collection: str = Field(min_length=1)
    k: int = Field(3, ge=1, le=20)
    mode: Literal["dense", "bm25", "hybrid"] = "hybrid"


MAX_LOGPROBS = 20  # alternatives per token (OpenAI: 5 for completions, 20 for chat)


class JSONSchemaFormat(_Strict):
    """`response_format.json_schema`: the schema the reply must validate against."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    """`response_format`: OpenAI's text / json_object / json_schema, and two extensions: `regex` (the reply
    matches the pattern) and `choice` (the reply is one of the strings)."""

    type: Literal["text", "json_object", "json_schema", "regex", "choice"]
    json_schema: JSONSchemaFormat | None = None
    regex: str | None = Field(None, min_length=1, max_length=4096)
    choice: list[str] | None = Field(None, min_length=1, max_length=256)


class ChatRequest(SamplingRequest):
    """POST /v1/chat/completions."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None  # accepted; a reply holds at most one call either way
    retrieval: RetrievalOptions | None = None  # extension (rag): answer from retrieved passages, cite sources


class CompletionRequest(SamplingRequest):
    """POST /v1/completions; `prompt` is a string, a list of strings, token ids, or a list of token-id lists."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=0)  # 0 with echo: score the prompt only
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    response_format: ResponseFormat | None = None  # extension (OpenAI has it on chat only)
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)


def reject_unsupported(req: SamplingRequest) -> None:
    """400 for recognised OpenAI features this server does not implement, or combinations that make no sense."""
    if isinstance(req, ChatRequest) and req.top_logprobs and not req.logprobs:
        raise APIError(400, "top_logprobs needs \"logprobs\": true", param="top_logprobs", code="invalid_value")
    if isinstance(req, CompletionRequest):
        if req.max_tokens == 0 and not req.echo:
            raise APIError(400, "max_tokens 0 generates nothing; it is only allowed with \"echo\": true (scoring the "
                           "prompt)", param="max_tokens", code="invalid_value")
        if req.suffix:
            raise APIError(400, "suffix (insertion) is not supported by this server", param="suffix",
                           code="unsupported")
        if req.best_of is not None and req.best_of != req.n:
            raise APIError(400, "best_of other than n is not supported by this server", param="best_of",
                           code="unsupported")


def _field_names() -> set[str]:
    names: set[str] = set()
    for cls in (ChatRequest, CompletionRequest, Message, TextPart, StreamOptions, ToolCall, FunctionCall, ToolDef,
                FunctionDef, NamedToolChoice, FunctionName, RetrievalOptions, ResponseFormat, JSONSchemaFormat):
        names |= set(cls.model_fields)
    return names


def _param(loc: tuple) -> str | None:
    """'messages[0].content' from a pydantic error location (dropping union member tags such as 'list[int]')."""
    fields = _field_names()
    out = ""
    for item in loc:
        if isinstance(item, int):
            out += f"[{item}]"
        elif item in fields:
            out += ("." if out else "") + item
    return out or None


def parse_request(cls: type[_Strict], body: Any) -> Any:
    """Validate a decoded JSON body as `cls`, turning the first problem into a 400 APIError."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return cls.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        param = _param(tuple(err["loc"]))
        kind = "missing_required_parameter" if err["type"] == "missing" else "invalid_value"
        if err["type"] == "extra_forbidden":  # the location ends with the unknown field's own name
            loc = tuple(err["loc"])
            param = ".".join(filter(None, [_param(loc[:-1]), str(loc[-1])]))
            raise APIError(400, f"unrecognized request argument supplied: {param!r} (this server does not support "
                           "it; remove it from the request)", param=param, code="unknown_parameter") from None
        if err["type"] == "missing":
            msg = f"missing required parameter: {param!r}"
        else:
            msg = f"invalid value for {param!r}: {err['msg'].removeprefix('Value error, ')}"
            if "input" in err and err["type"] != "missing" and not isinstance(err["input"], (dict, list)):
                msg += f" (got {err['input']!r})"
        raise APIError(400, msg, param=param, code=kind) from None
