"""An OpenAI-compatible HTTP server for a genforge checkpoint, with a web chat page: app factory and routes.

    genforge serve runs/tiny/sft/chat/checkpoint port=8000
    curl localhost:8000/v1/chat/completions -H 'content-type: application/json' \\
         -d '{"model": "checkpoint", "messages": [{"role": "user", "content": "hi"}], "stream": true}'

Endpoints: `GET /` (chat page), `GET /health`, `GET /v1/models`, `POST /v1/completions`,
`POST /v1/chat/completions` (OpenAI request/response shapes; `stream: true` answers with
server-sent events `data: {...}` and a final `data: [DONE]`, see sse.py). Chat completions do function
calling in OpenAI's schema (`tools`, `tool_choice`, `tool_calls`, `tool` messages; a forced call is
constrained by a grammar so even a tiny model's call parses; see tools.py). Errors use OpenAI's body
`{"error": {"message", "type", "param", "code"}}`: 400 bad parameters / unknown fields / unknown
model / over-long prompt / over-deep JSON (see limits.py), 413 oversized body, 429 queue full,
503 worker down.

Special-token strings (`<|end|>`, `<|user|>`...) are plain text everywhere: in chat messages and
in raw `/v1/completions` prompts alike, so no request can forge a turn or end a document early.
A client that needs control tokens sends token ids as the prompt.

The model never runs on the event loop: requests become jobs for `Batcher`, whose worker thread
batches compatible jobs through the engine and streams text back (see batcher.py). A client that
disconnects cancels its job, so its rows stop at the next token. The command (`genforge serve`,
uvicorn start-up) lives in `genforge.commands.serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from genforge.infer.engine import Engine, StopFn
from genforge.infer.sampling import SamplingParams
from genforge.serve import embeddings, limits, sse, tools
from genforge.serve.batcher import Batcher, Closed, Event, GenerateFn, Job, QueueFull
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


def create_app(model: nn.Module, tokenizer: Tokenizer, model_name: str = "genforge", *,
               generate_fn: GenerateFn | None = None, max_queue: int = 64, max_batch: int = 16,
               max_body_bytes: int = 1 << 20, chat_max_tokens: int = 256, completion_max_tokens: int = 16,
               batch_wait_s: float = 0.01, embedder: Any = None, embedder_name: str = "",
               rag_store: str = "") -> FastAPI:
    """The FastAPI app serving `model` under the name `model_name`.

    generate_fn: the batched generation call (default `Engine(model).generate`; tests inject slow
        or gated ones, `draft=` a speculative one). max_queue: requests allowed to wait for a batch
        (more get 429). max_batch: rows per engine call. max_body_bytes: larger bodies get 413.
    chat_max_tokens / completion_max_tokens: max_tokens when a request leaves it unset
        (capped by the room left in the context window). batch_wait_s: see `Batcher`.
    embedder / embedder_name / rag_store: /v1/embeddings and chat retrieval (see embeddings.py).
    """
    context_len = int(model.config.max_seq_len)
    batcher = Batcher(generate_fn or Engine(model).generate, tokenizer,
                      stop_ids=[tokenizer.end_id, tokenizer.eos_id], context_len=context_len,
                      max_batch=max_batch, max_queue=max_queue, batch_wait_s=batch_wait_s)
    batcher.start()  # also (re)started by the lifespan, so an app used without one still works

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        batcher.close()

    app = FastAPI(title="genforge", version="1", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.server = ServerState(batcher, tokenizer, model_name, context_len, int(model.config.vocab_size),
                                   max_body_bytes, chat_max_tokens, completion_max_tokens, int(time.time()))
    app.state.batcher = batcher
    app.state.model_name = model_name
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _server_error)
    app.include_router(router)
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


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [_model_card(_state(request))]}


@router.get("/v1/models/{name:path}")
async def one_model(name: str, request: Request) -> dict[str, Any]:
    s = _state(request)
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
    if req.model != s.model_name:
        raise APIError(400, f"the model {req.model!r} does not exist; this server serves {s.model_name!r}",
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


def _submit(s: ServerState, req: ChatRequest | CompletionRequest, prompts: list[list[int]], max_tokens: int,
            processors: list | None = None) -> Job:
    """Queue a job with one row per choice (choice index = prompt_index * n + j, as OpenAI orders them)."""
    reject_unsupported(req)
    limits.check_rows(len(prompts), req.n)
    job = Job([p for p in prompts for _ in range(req.n)], max_tokens, req.sampling(),
              logits_processors=list(processors or []))
    job.bind()
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


async def _collect(request: Request, job: Job) -> tuple[list[str], list[str | None]]:
    """Run a non-streamed job to the end: (text per choice, finish reason per choice)."""
    texts = [""] * len(job.prompts)
    reasons: list[str | None] = [None] * len(job.prompts)
    watcher = asyncio.create_task(_watch_disconnect(request, job))
    try:
        async for events in job.stream():
            for ev in events:
                if ev.kind == "delta":
                    texts[ev.index] += ev.text
                elif ev.kind == "finish":
                    reasons[ev.index] = ev.finish_reason
    except RuntimeError as e:
        raise APIError(500, str(e), type="server_error") from None
    finally:
        watcher.cancel()
        job.cancel()  # no-op when finished; stops the rows if this coroutine was cancelled
    return texts, reasons


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
    job = _submit(s, req, [ids], max_tokens,
                  tools.constraint(plan, s.tokenizer, len(ids), req.sampling().greedy, max_tokens))
    rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    if req.stream:
        replies = [tools.StreamedReply(plan) for _ in job.prompts]

        def chunk(ev: Event | None, i: int) -> dict | list[dict] | None:
            def make(delta: dict, reason: str | None = None, first: bool = False) -> dict:
                return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
                        "model": s.model_name,
                        "choices": [{"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}],
                        **({"sources": sources} if first and sources is not None else {})}  # rag
            if ev is None:  # the opening chunk of each choice announces the role (and, with retrieval, sources)
                return make({"role": "assistant", "content": ""}, first=True)
            if ev.kind == "delta":
                text = replies[i].push(ev.text)
                return make({"content": text}) if text else None
            rest, calls = replies[i].finish()
            out = [make({"content": rest})] if rest else []
            out += [make({"tool_calls": [d]}) for d in calls]
            return out + [make({}, "tool_calls" if calls else ev.finish_reason)]
        return _stream(s, job, [ids], chunk, req.include_usage(), "chat.completion.chunk", rid)
    texts, reasons = await _collect(request, job)
    choices = []
    for i, (t, r) in enumerate(zip(texts, reasons)):
        content, calls = tools.parse_reply(t, plan)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        choices.append({"index": i, "message": message, "logprobs": None,
                        "finish_reason": "tool_calls" if calls else r})
    return JSONResponse({"id": rid, "object": "chat.completion", "created": int(time.time()), "model": s.model_name,
                         "choices": choices, "usage": _usage(job, [ids]),
                         **({"sources": sources} if sources is not None else {})})  # rag


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    s = _state(request)
    req: CompletionRequest = await _parse(request, CompletionRequest)
    prompts, max_tokens = _completion_prompts(s, req)
    job = _submit(s, req, prompts, max_tokens)
    rid = f"cmpl-{uuid.uuid4().hex[:24]}"
    if req.stream:
        def chunk(ev: Event | None, i: int) -> dict | None:
            if ev is None:
                return None
            text, reason = (ev.text, None) if ev.kind == "delta" else ("", ev.finish_reason)
            return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": s.model_name,
                    "choices": [{"index": i, "text": text, "logprobs": None, "finish_reason": reason}]}
        return _stream(s, job, prompts, chunk, req.include_usage(), "text_completion", rid)
    texts, reasons = await _collect(request, job)
    choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": r}
               for i, (t, r) in enumerate(zip(texts, reasons))]
    return JSONResponse({"id": rid, "object": "text_completion", "created": int(time.time()), "model": s.model_name,
                         "choices": choices, "usage": _usage(job, prompts)})


# ---------------------------------------------------------------------------------------------- speculative decoding
def speculative_generate_fn(target: nn.Module, draft: nn.Module, k: int = 4) -> GenerateFn:
    """A `generate_fn` for the batcher that decodes one row at a time with a draft model.

    `speculative_generate` returns whole completions, so the tokens are replayed through the
    batcher's per-token `stop_fn` afterwards: a reply arrives as one burst, and a disconnect cannot
    interrupt a row already being generated. Penalties are not applied (the speculative decoder has none).
    """
    from dataclasses import replace

    from genforge.infer.speculative import speculative_generate

    def generate(prompts: list[list[int]], params: SamplingParams, *, stop_ids: Sequence[int] = (),
                 stop_fn: StopFn | None = None) -> list[list[int]]:
        params = replace(params, repetition_penalty=1.0, frequency_penalty=0.0, presence_penalty=0.0)
        outs = []
        for row, prompt in enumerate(prompts):
            tokens, _stats = speculative_generate(target, draft, prompt, params, k=k, stop_ids=stop_ids)
            out: list[int] = []
            for t in tokens:
                out.append(t)
                if stop_fn is not None and stop_fn(row, out):
                    break
            outs.append(out)
        return outs

    return generate
