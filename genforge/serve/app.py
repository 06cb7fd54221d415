"""An OpenAI-compatible HTTP server for a genforge checkpoint, with a web chat page: app factory and routes.

    genforge serve runs/tiny/sft/chat/checkpoint port=8000
    curl localhost:8000/v1/chat/completions -H 'content-type: application/json' \\
         -d '{"model": "checkpoint", "messages": [{"role": "user", "content": "hi"}], "stream": true}'

Endpoints: `GET /` (chat page), `GET /health`, `GET /metrics` (Prometheus, see metrics.py), `GET /v1/models`,
`POST /v1/completions`, `POST /v1/chat/completions` (OpenAI request/response shapes; `stream: true` answers with
server-sent events `data: {...}` and a final `data: [DONE]`, see sse.py), `POST /tokenize` and `/detokenize`
(vLLM's shapes), `POST /v1/load_lora_adapter` / `unload_lora_adapter` (adapters.py). Completions return
log-probabilities in the legacy format (`logprobs: k`, `echo`, `max_tokens: 0` to score a prompt), chat in the
chat format (`logprobs`, `top_logprobs`). Chat completions do function calling in OpenAI's schema (`tools`,
`tool_choice`, `tool_calls`, `tool` messages; see tools.py) and both honour `response_format` (structured.py):
calls and formats are enforced while decoding by one grammar engine (genforge.infer.grammar), so even a tiny
model's output parses and validates. With `api_key`, every endpoint but the page, /health and /metrics needs
`Authorization: Bearer <key>` (401 otherwise). Errors use OpenAI's body
`{"error": {"message", "type", "param", "code"}}`: 400 bad parameters / unknown fields / unknown
model / over-long prompt / over-deep JSON (see limits.py), 413 oversized body, 429 queue full,
503 worker down.

Special-token strings (`<|end|>`, `<|user|>`...) are plain text everywhere: in chat messages and
in raw `/v1/completions` prompts alike, so no request can forge a turn or end a document early.
A client that needs control tokens sends token ids as the prompt.

The model never runs on the event loop: requests become jobs for the batcher, whose worker thread runs
them through the engine -- by default with continuous batching over a slot KV cache with prefix caching,
statically with `batching="static"` or a custom `generate_fn` (speculative decoding) -- and streams text
back (see batcher.py). A client that disconnects cancels its job, so its rows stop at the next token.
The command (`genforge serve`, uvicorn start-up) lives in `genforge.commands.serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from genforge.infer.engine import Engine, StopFn, supports_slots
from genforge.infer.sampling import SamplingParams
from genforge.serve import adapters, embeddings, limits, sse, structured, tools
from genforge.serve.batcher import Batcher, Closed, ContinuousBatcher, Event, GenerateFn, Job, QueueFull, TokenLogprob
from genforge.serve.schemas import APIError, ChatRequest, CompletionRequest, parse_request, reject_unsupported
from genforge.text import render_prompt
from genforge.tokenizer import Tokenizer

log = logging.getLogger("genforge.serve")
STATIC = Path(__file__).parent / "static"
MAX_ROWS = limits.MAX_ROWS  # kept for callers that read it here

router = APIRouter()


@dataclass
class ServerState:
    """What the routes need, kept on `app.state.server`."""

    batcher: Batcher
    tokenizer: Tokenizer
    model_name: str
    context_len: int
    vocab_size: int
    max_body_bytes: int
    chat_max_tokens: int
    completion_max_tokens: int
    created: int
    continuous: bool = False
    metrics: Any = None
    api_key: str = ""
    adapters: dict[str, str] = field(default_factory=dict)  # LoRA adapters served by name -> folder


def create_app(model: nn.Module, tokenizer: Tokenizer, model_name: str = "genforge", *,
               generate_fn: GenerateFn | None = None, max_queue: int = 64, max_batch: int = 16,
               max_body_bytes: int = 1 << 20, chat_max_tokens: int = 256, completion_max_tokens: int = 16,
               batch_wait_s: float = 0.01, embedder: Any = None, embedder_name: str = "",
               rag_store: str = "", batching: str = "continuous", prefix_cache_tokens: int = 8192,
               kv_cache_tokens: int = 0, api_key: str = "", metrics: bool = True) -> FastAPI:
    """The FastAPI app serving `model` under the name `model_name`.

    generate_fn: the batched generation call (default `Engine(model).generate`; tests inject slow
        or gated ones, `draft=` a speculative one). max_queue: requests allowed to wait for a batch
        (more get 429). max_batch: rows per engine call. max_body_bytes: larger bodies get 413.
    chat_max_tokens / completion_max_tokens: max_tokens when a request leaves it unset
        (capped by the room left in the context window). batch_wait_s: see `Batcher`.
    embedder / embedder_name / rag_store: /v1/embeddings and chat retrieval (see embeddings.py).
    batching: "continuous" (rows join and leave between decode steps; needs a genforge GPT with stock
        attention, no sliding window and no generate_fn; otherwise static) or "static" (see batcher.py).
        prefix_cache_tokens: prompt tokens whose
        keys/values are kept for reuse by later prompts with the same start (continuous only; 0 = off).
        kv_cache_tokens: columns of the continuous scheduler's slot KV cache (0: 2 x context, at most 8192).
    api_key: when set, /v1/*, /tokenize and /detokenize need `Authorization: Bearer <api_key>`.
    metrics: serve Prometheus metrics at /metrics.
    """
    if batching not in ("continuous", "static"):
        raise ValueError(f"batching={batching!r}: choose continuous or static")
    context_len = int(model.config.max_seq_len)
    stop_ids = [tokenizer.end_id, tokenizer.eos_id]
    meters = None
    if metrics:
        from genforge.serve.metrics import ServeMetrics

        meters = ServeMetrics()
    continuous = batching == "continuous" and generate_fn is None and supports_slots(model)
    if continuous:
        batcher: Batcher = ContinuousBatcher(model, tokenizer, stop_ids=stop_ids, context_len=context_len,
                                             max_batch=max_batch, max_queue=max_queue, metrics=meters,
                                             prefix_cache_tokens=prefix_cache_tokens,
                                             cache_len=kv_cache_tokens or None)
    else:
        batcher = Batcher(generate_fn or Engine(model).generate, tokenizer, stop_ids=stop_ids,
                          context_len=context_len, max_batch=max_batch, max_queue=max_queue,
                          batch_wait_s=batch_wait_s, metrics=meters)
    batcher.start()  # also (re)started by the lifespan, so an app used without one still works

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        batcher.close()

    app = FastAPI(title="genforge", version="1", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.server = ServerState(batcher, tokenizer, model_name, context_len, int(model.config.vocab_size),
                                   max_body_bytes, chat_max_tokens, completion_max_tokens, int(time.time()),
                                   continuous, meters, api_key)
    app.state.batcher = batcher
    app.state.model_name = model_name
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _server_error)
    if api_key:
        app.middleware("http")(_check_key)
    app.include_router(router)
    app.include_router(adapters.router)
    embeddings.mount(app, embedder, embedder_name, rag_store)  # rag: /v1/embeddings + chat retrieval
    return app


def _state(request: Request) -> ServerState:
    return request.app.state.server


# ---------------------------------------------------------------------------------------------- errors
async def _api_error(request: Request, e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
    return JSONResponse(APIError(e.status_code, str(e.detail), type=kind).body(), status_code=e.status_code)


async def _server_error(request: Request, e: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path)
    return JSONResponse(APIError(500, f"internal server error: {type(e).__name__}", type="server_error").body(),
                        status_code=500)


_OPEN_PATHS = ("/", "/health", "/metrics", "/docs", "/openapi.json")  # no key needed (no model output)


async def _check_key(request: Request, call_next: Callable) -> Response:
    """Optional API-key auth (OpenAI's `Authorization: Bearer KEY`); compared in constant time."""
    import hmac

    s = _state(request)
    if request.url.path not in _OPEN_PATHS and not request.url.path.startswith("/static"):
        given = request.headers.get("authorization", "")
        scheme, _, key = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), s.api_key.encode()):
            return JSONResponse(APIError(401, "invalid or missing API key: send 'Authorization: Bearer <key>'",
                                         type="authentication_error", code="invalid_api_key").body(),
                                status_code=401)
    return await call_next(request)


# ---------------------------------------------------------------------------------------------- plain endpoints
@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    s = _state(request)
    ok = s.batcher.alive
    return JSONResponse({"status": "ok" if ok else "worker down", "model": s.model_name,
                         "waiting": s.batcher.waiting, "running": s.batcher.running, **s.batcher.stats},
                        status_code=200 if ok else 503)


def _model_card(s: ServerState) -> dict[str, Any]:
    return {"id": s.model_name, "object": "model", "created": s.created, "owned_by": "genforge",
            "max_model_len": s.context_len}


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    s = _state(request)
    if s.metrics is None:
        raise APIError(404, "metrics are off on this server (create_app(metrics=True))", type="not_found_error")
    body, ctype = s.metrics.render()
    return Response(body, media_type=ctype)


@router.post("/tokenize")
async def tokenize(request: Request) -> dict[str, Any]:
    """vLLM's shape: {"prompt": text, "add_special_tokens": true} -> {"tokens", "count", "max_model_len"};
    add_special_tokens adds BOS as completions do; {"messages": [...]} renders the chat template instead."""
    s = _state(request)
    body = await limits.read_json_body(request.stream(), request.headers.get("content-length"), s.max_body_bytes)
    if not isinstance(body, dict) or ("prompt" in body) == ("messages" in body):
        raise APIError(400, "send either \"prompt\" (a string) or \"messages\" (a chat)", param="prompt")
    unknown = set(body) - {"prompt", "messages", "add_special_tokens", "model", "add_generation_prompt"}
    if unknown:
        raise APIError(400, f"unrecognized request argument supplied: {sorted(unknown)[0]!r}",
                       param=sorted(unknown)[0], code="unknown_parameter")
    if "messages" in body:
        req = parse_request(ChatRequest, {"model": s.model_name, "messages": body["messages"]})
        ids = render_prompt(s.tokenizer, tools.message_dicts(req))
    else:
        if not isinstance(body["prompt"], str):
            raise APIError(400, "prompt must be a string", param="prompt", code="invalid_value")
        add = body.get("add_special_tokens", True)
        if not isinstance(add, bool):
            raise APIError(400, "add_special_tokens must be a boolean", param="add_special_tokens")
        ids = render_prompt(s.tokenizer, body["prompt"], add_bos=add, allow_special=False)
    return {"tokens": ids, "count": len(ids), "max_model_len": s.context_len}


@router.post("/detokenize")
async def detokenize(request: Request) -> dict[str, Any]:
    """{"tokens": [ids]} -> {"prompt": text} (special tokens skipped, as in replies)."""
    s = _state(request)
    body = await limits.read_json_body(request.stream(), request.headers.get("content-length"), s.max_body_bytes)
    ids = body.get("tokens") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise APIError(400, "tokens must be a list of token ids", param="tokens", code="invalid_value")
    if any(not 0 <= t < s.vocab_size for t in ids):
        raise APIError(400, f"token ids must be in [0, {s.vocab_size})", param="tokens", code="invalid_value")
    return {"prompt": s.tokenizer.decode(ids)}


def _adapter_card(s: ServerState, name: str) -> dict[str, Any]:
    return {**_model_card(s), "id": name, "parent": s.model_name, "root": s.adapters[name]}


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    s = _state(request)
    return {"object": "list", "data": [_model_card(s)] + [_adapter_card(s, a) for a in s.adapters]}


@router.get("/v1/models/{name:path}")
async def one_model(name: str, request: Request) -> dict[str, Any]:
    s = _state(request)
    if name in s.adapters:
        return _adapter_card(s, name)
    if name != s.model_name:
        raise APIError(404, f"the model {name!r} does not exist; this server serves {s.model_name!r}",
                       type="not_found_error", param="model", code="model_not_found")
    return _model_card(s)


# ---------------------------------------------------------------------------------------------- requests -> jobs
async def _parse(request: Request, cls: type) -> Any:
    """Body within the limits, validated as `cls`, naming a model this server serves."""
    s = _state(request)
    body = await limits.read_json_body(request.stream(), request.headers.get("content-length"), s.max_body_bytes)
    req = parse_request(cls, body)
    if req.model != s.model_name and req.model not in s.adapters:
        served = ", ".join(repr(n) for n in [s.model_name, *s.adapters])
        raise APIError(400, f"the model {req.model!r} does not exist; this server serves {served}",
                       param="model", code="model_not_found")
    return req



def _chat_prompt(s: ServerState, req: ChatRequest, plan: tools.ToolPlan) -> tuple[list[int], int]:
    """The rendered conversation's ids (the plan's tools listed first) and max_tokens; with `truncate`, whole
    old turns go first."""
    msgs = tools.message_dicts(req)

    def encode(ms: list[dict]) -> list[int]:
        # message content stays plain text: special-token strings in it cannot forge a turn
        if plan.active:
            return s.tokenizer.encode_chat(ms, add_generation_prompt=True, tools=plan.tools)[0]
        return render_prompt(s.tokenizer, ms)

    ids = encode(msgs)
    max_tokens = req.max_completion_tokens or req.max_tokens
    if req.truncate:  # drop whole old turns first (keeping system messages and the last turn)
        budget = s.context_len - (max_tokens or 1)
        while len(ids) > budget:
            drop = next((i for i, m in enumerate(msgs[:-1]) if m["role"] != "system"), None)
            if drop is None:
                break
            msgs.pop(drop)
            ids = encode(msgs)
    return limits.fit_context(ids, max_tokens, s.chat_max_tokens, s.context_len, req.truncate,
                              s.tokenizer.bos_id, "messages")


def _completion_prompts(s: ServerState, req: CompletionRequest) -> tuple[list[list[int]], int]:
    """Token ids of each prompt (strings: BOS + text, special-token strings as plain text) and one max_tokens."""
    p = req.prompt

    def encode(text: str) -> list[int]:
        return render_prompt(s.tokenizer, text, allow_special=False)

    if isinstance(p, str):
        raw = [encode(p)]
    elif p and all(isinstance(x, str) for x in p):
        raw = [encode(x) for x in p]
    elif p and all(isinstance(x, int) for x in p):
        raw = [list(p)]
    else:
        raw = [list(x) for x in p]
    if not raw or any(len(x) == 0 for x in raw):
        raise APIError(400, "prompt must not be empty", param="prompt", code="invalid_value")
    if any(not 0 <= t < s.vocab_size for x in raw for t in x):
        raise APIError(400, f"prompt token ids must be in [0, {s.vocab_size})", param="prompt", code="invalid_value")
    fitted = [limits.fit_context(x, req.max_tokens, s.completion_max_tokens, s.context_len, req.truncate,
                                 s.tokenizer.bos_id) for x in raw]
    return [ids for ids, _ in fitted], min(m for _, m in fitted)


def _logprob_request(req: ChatRequest | CompletionRequest) -> tuple[int | None, bool]:
    """(alternatives per token or None when log-probs are off, prompt log-probs wanted)."""
    if isinstance(req, ChatRequest):
        return (req.top_logprobs or 0) if req.logprobs else None, False
    return req.logprobs, bool(req.echo and req.logprobs is not None)


def _submit(s: ServerState, req: ChatRequest | CompletionRequest, prompts: list[list[int]], max_tokens: int,
            processors: list | None = None) -> Job:
    """Queue a job with one row per choice (choice index = prompt_index * n + j, as OpenAI orders them)."""
    reject_unsupported(req)
    limits.check_rows(len(prompts), req.n)
    top, echo = _logprob_request(req)
    if (top is not None or max_tokens == 0) and not s.continuous:
        raise APIError(400, "log-probabilities and max_tokens 0 need the continuous scheduler; this server runs "
                       "static batching (speculative decoding or a custom generate function)", param="logprobs",
                       code="unsupported")
    need = max(len(p) for p in prompts) + max_tokens
    if need > s.batcher.capacity:
        raise APIError(400, f"prompt + max_tokens = {need} tokens exceed the server's KV cache ({s.batcher.capacity} "
                       "tokens per row; genforge serve kv_cache_tokens=...); shorten the prompt or lower max_tokens",
                       param="max_tokens", code="context_length_exceeded")
    job = Job([p for p in prompts for _ in range(req.n)], max_tokens, req.sampling(),
              logits_processors=list(processors or []), logprobs=top, echo_logprobs=echo,
              adapter=req.model if req.model != s.model_name else None)
    job.bind()
    if s.metrics is not None:
        s.metrics.accepted(sum(len(p) for p in job.prompts))
    try:
        s.batcher.submit(job)
    except QueueFull as e:
        raise APIError(429, f"the server is busy: {e}; retry shortly", type="server_overloaded",
                       code="queue_full", headers={"Retry-After": "1"}) from None
    except Closed as e:
        raise APIError(503, f"the server cannot generate right now: {e}", type="server_error",
                       code="unavailable") from None
    return job


# ---------------------------------------------------------------------------------------------- jobs -> responses
async def _watch_disconnect(request: Request, job: Job) -> None:
    """Cancel the job when the client goes away (the body has been read, so the next message says so)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.cancel()
            return


@dataclass
class Collected:
    """A finished non-streamed job: per choice its text, finish reason, token log-probs and prompt log-probs."""

    texts: list[str]
    reasons: list[str | None]
    logprobs: list[list[TokenLogprob]]
    prompt_logprobs: list[list[TokenLogprob]]


async def _collect(request: Request, job: Job) -> Collected:
    """Run a non-streamed job to the end."""
    n = len(job.prompts)
    out = Collected([""] * n, [None] * n, [[] for _ in range(n)], [[] for _ in range(n)])
    watcher = asyncio.create_task(_watch_disconnect(request, job))
    try:
        async for events in job.stream():
            for ev in events:
                if ev.kind == "delta":
                    out.texts[ev.index] += ev.text
                    out.logprobs[ev.index] += ev.logprobs
                elif ev.kind == "finish":
                    out.reasons[ev.index] = ev.finish_reason
                elif ev.kind == "prompt":
                    out.prompt_logprobs[ev.index] = ev.logprobs
    except RuntimeError as e:
        raise APIError(500, str(e), type="server_error") from None
    finally:
        watcher.cancel()
        job.cancel()  # no-op when finished; stops the rows if this coroutine was cancelled
    return out


# ---------------------------------------------------------------------------------------------- log-probs
def token_text(tok: Tokenizer, i: int) -> str:
    """A token as a string: its text, or its name for a special token (`<|bos|>`)."""
    if i in tok.special_ids:
        return tok.hf.id_to_token(i) or ""
    return tok.decode([i])


def completion_logprobs(tok: Tokenizer, lps: list[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """The legacy completions `logprobs` object: tokens, token_logprobs, top_logprobs ({token: logprob}, the
    chosen token included, as vLLM does), text_offset."""
    out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for lp in lps:
        text = token_text(tok, lp.token)
        out["tokens"].append(text)
        out["token_logprobs"].append(lp.logprob)
        if lp.logprob is None:
            out["top_logprobs"].append(None)
        else:
            top = {token_text(tok, t): v for t, v in lp.top}
            top.setdefault(text, lp.logprob)
            out["top_logprobs"].append(top)
        out["text_offset"].append(offset)
        offset += len(text)
    return out


def chat_logprobs(tok: Tokenizer, lps: list[TokenLogprob]) -> dict[str, Any]:
    """The chat `logprobs` object: {"content": [{token, logprob, bytes, top_logprobs: [...]}]}."""
    def entry(t: int, v: float) -> dict[str, Any]:
        text = token_text(tok, t)
        return {"token": text, "logprob": v, "bytes": list(text.encode("utf-8"))}
    return {"content": [{**entry(lp.token, lp.logprob or 0.0), "top_logprobs": [entry(t, v) for t, v in lp.top]}
                        for lp in lps]}


def _usage(job: Job, prompts: list[list[int]]) -> dict[str, int]:
    p, c = sum(len(x) for x in prompts), sum(job.tokens)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _stream(s: ServerState, job: Job, prompts: list[list[int]],
            make_chunk: Callable[[Event | None, int], dict | list[dict] | None],
            include_usage: bool, obj: str, rid: str) -> Response:
    """Stream a job as server-sent events; a disconnect cancels the stream task and so the job."""

    async def events() -> AsyncIterator[str]:
        try:
            for i in range(len(job.prompts)):
                first = make_chunk(None, i)
                if first:
                    yield sse.event(first)
            async for batch in job.stream():
                chunks = [make_chunk(ev, ev.index) for ev in batch]
                # a chunk function may hold text back (None) or send several chunks for one event (a list)
                out = [c for x in chunks for c in (x if isinstance(x, list) else [x]) if c is not None]
                if out:
                    yield "".join(sse.event(c) for c in out)
            if include_usage:
                yield sse.event({"id": rid, "object": obj, "created": int(time.time()), "model": s.model_name,
                                 "choices": [], "usage": _usage(job, prompts)})
        except RuntimeError as e:  # the engine failed mid-stream: say so in-band
            yield sse.event(APIError(500, str(e), type="server_error").body())
        finally:
            job.cancel()
        yield sse.DONE

    return sse.response(events())


# ---------------------------------------------------------------------------------------------- generation endpoints
@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    s = _state(request)
    req: ChatRequest = await _parse(request, ChatRequest)
    sources = await embeddings.retrieve_for_chat(request, req)  # rag: None unless the request opted in
    plan = tools.plan_tools(req)
    ids, max_tokens = _chat_prompt(s, req, plan)
    greedy = req.sampling().greedy
    processors = tools.constraint(plan, s.tokenizer, len(ids), greedy, max_tokens)
    fmt = structured.processor_for(req.response_format, s.tokenizer, len(ids),
                                   [s.tokenizer.end_id, s.tokenizer.eos_id], max_tokens)
    if fmt is not None:
        if plan.active:
            raise APIError(400, "response_format and tools cannot be combined in one request (the reply is either "
                           "a tool call or the formatted text)", param="response_format", code="invalid_value")
        processors = [fmt]
    job = _submit(s, req, [ids], max_tokens, processors)
    rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    if req.stream:
        replies = [tools.StreamedReply(plan) for _ in job.prompts]
        held: list[list[TokenLogprob]] = [[] for _ in job.prompts]  # log-probs of text a tool call holds back

        def chunk(ev: Event | None, i: int) -> dict | list[dict] | None:
            def make(delta: dict, reason: str | None = None, first: bool = False,
                     lps: list[TokenLogprob] | None = None) -> dict:
                logprobs = chat_logprobs(s.tokenizer, lps) if job.logprobs is not None and lps else None
                return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
                        "model": req.model,
                        "choices": [{"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": reason}],
                        **({"sources": sources} if first and sources is not None else {})}  # rag
            if ev is None:  # the opening chunk of each choice announces the role (and, with retrieval, sources)
                return make({"role": "assistant", "content": ""}, first=True)
            if ev.kind == "delta":
                held[i] += ev.logprobs
                text = replies[i].push(ev.text)
                if not text:
                    return None
                lps, held[i] = held[i], []
                return make({"content": text}, lps=lps)
            if ev.kind != "finish":
                return None
            rest, calls = replies[i].finish()
            lps, held[i] = held[i], []
            out = [make({"content": rest}, lps=lps)] if rest else []
            out += [make({"tool_calls": [d]}) for d in calls]
            return out + [make({}, "tool_calls" if calls else ev.finish_reason)]
        return _stream(s, job, [ids], chunk, req.include_usage(), "chat.completion.chunk", rid)
    got = await _collect(request, job)
    choices = []
    for i, (t, r) in enumerate(zip(got.texts, got.reasons)):
        content, calls = tools.parse_reply(t, plan)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        logprobs = chat_logprobs(s.tokenizer, got.logprobs[i]) if job.logprobs is not None else None
        choices.append({"index": i, "message": message, "logprobs": logprobs,
                        "finish_reason": "tool_calls" if calls else r})
    return JSONResponse({"id": rid, "object": "chat.completion", "created": int(time.time()), "model": req.model,
                         "choices": choices, "usage": _usage(job, [ids]),
                         **({"sources": sources} if sources is not None else {})})  # rag


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    s = _state(request)
    req: CompletionRequest = await _parse(request, CompletionRequest)
    prompts, max_tokens = _completion_prompts(s, req)
    processors = []
    if req.response_format is not None:
        if len(prompts) > 1 and req.response_format.type != "text":
            raise APIError(400, "response_format works on one prompt per completions request (n may be > 1)",
                           param="response_format", code="unsupported")
        fmt = structured.processor_for(req.response_format, s.tokenizer, len(prompts[0]),
                                       [s.tokenizer.end_id, s.tokenizer.eos_id], max_tokens)
        processors = [fmt] if fmt is not None else []
    job = _submit(s, req, prompts, max_tokens, processors)
    rid = f"cmpl-{uuid.uuid4().hex[:24]}"
    echoed = [s.tokenizer.decode(p) if req.echo else "" for p in prompts]
    want_lps = job.logprobs is not None

    def echo_of(i: int) -> str:
        return echoed[i // req.n]

    if req.stream:
        offsets = [0] * len(job.prompts)

        def make(i: int, text: str, lps: list[TokenLogprob] | None, reason: str | None) -> dict:
            logprobs = None
            if want_lps:
                logprobs = completion_logprobs(s.tokenizer, lps or [], offsets[i])
                offsets[i] += len(text)
            return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": req.model,
                    "choices": [{"index": i, "text": text, "logprobs": logprobs, "finish_reason": reason}]}

        def chunk(ev: Event | None, i: int) -> dict | None:
            if ev is None:  # echo without log-probs: the prompt text first
                return make(i, echo_of(i), [], None) if req.echo and not job.echo_logprobs else None
            if ev.kind == "prompt":
                return make(i, echo_of(i), ev.logprobs, None)
            if ev.kind == "delta":
                return make(i, ev.text, ev.logprobs, None)
            return make(i, "", [], ev.finish_reason)
        return _stream(s, job, prompts, chunk, req.include_usage(), "text_completion", rid)
    got = await _collect(request, job)
    choices = []
    for i, (t, r) in enumerate(zip(got.texts, got.reasons)):
        logprobs = completion_logprobs(s.tokenizer, got.prompt_logprobs[i] + got.logprobs[i]) if want_lps else None
        choices.append({"index": i, "text": echo_of(i) + t, "logprobs": logprobs, "finish_reason": r})
    return JSONResponse({"id": rid, "object": "text_completion", "created": int(time.time()), "model": req.model,
                         "choices": choices, "usage": _usage(job, prompts)})


# ---------------------------------------------------------------------------------------------- speculative decoding
def speculative_generate_fn(target: nn.Module, draft: nn.Module, k: int = 4) -> GenerateFn:
    """A `generate_fn` for the (static) batcher that decodes one row at a time with a draft model.

    Tokens stream as each target call accepts them (the batcher's per-token `stop_fn` runs inside
    `speculative_generate`), so a streamed reply arrives in bursts of up to k + 1 tokens, and a stop string,
    max_tokens or a client that goes away ends the row at the next accepted token. Penalties are not
    applied (the speculative decoder has none).
    """
    from dataclasses import replace

    from genforge.infer.speculative import speculative_generate

    def generate(prompts: list[list[int]], params: SamplingParams, *, stop_ids: Sequence[int] = (),
                 stop_fn: StopFn | None = None) -> list[list[int]]:
        params = replace(params, repetition_penalty=1.0, frequency_penalty=0.0, presence_penalty=0.0)
        outs = []
        for row, prompt in enumerate(prompts):
            each = None if stop_fn is None else (lambda toks, row=row: stop_fn(row, list(toks)))
            tokens, _stats = speculative_generate(target, draft, prompt, params, k=k, stop_ids=stop_ids, stop_fn=each)
            outs.append(tokens)
        return outs

    return generate
