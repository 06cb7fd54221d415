"""An OpenAI-compatible HTTP server for a genforge checkpoint, with a web chat page.

    genforge serve runs/tiny/sft/checkpoint --port 8000
    curl localhost:8000/v1/chat/completions -H 'content-type: application/json' \\
         -d '{"model": "checkpoint", "messages": [{"role": "user", "content": "hi"}], "stream": true}'

Endpoints: `GET /` (chat page), `GET /health`, `GET /v1/models`, `POST /v1/completions`,
`POST /v1/chat/completions` (OpenAI request/response shapes; `stream: true` answers with
server-sent events `data: {...}` and a final `data: [DONE]`). Errors use OpenAI's body
`{"error": {"message", "type", "param", "code"}}`: 400 bad parameters / unknown model /
over-long prompt, 413 oversized body, 429 queue full, 503 worker down.

The model never runs on the event loop: requests become jobs for `Batcher`, whose worker thread
batches compatible jobs through the engine and streams text back (see batcher.py). A client that
disconnects cancels its job, so its rows stop at the next token.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import torch.nn as nn
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from genforge.errors import CheckpointError
from genforge.infer.engine import Engine, StopFn
from genforge.infer.sampling import SamplingParams
from genforge.serve.batcher import Batcher, Closed, Event, GenerateFn, Job, QueueFull
from genforge.serve.schemas import APIError, ChatRequest, CompletionRequest, parse_request, reject_unsupported
from genforge.text import render_prompt
from genforge.tokenizer import Tokenizer

log = logging.getLogger("genforge.serve")
STATIC = Path(__file__).parent / "static"
MAX_ROWS = 64  # prompts x n in one request


def create_app(model: nn.Module, tokenizer: Tokenizer, model_name: str = "genforge", *,
               generate_fn: GenerateFn | None = None, max_queue: int = 64, max_batch: int = 16,
               max_body_bytes: int = 1 << 20, chat_max_tokens: int = 256, completion_max_tokens: int = 16,
               batch_wait_s: float = 0.01) -> FastAPI:
    """The FastAPI app serving `model` under the name `model_name`.

    generate_fn: the batched generation call (default `Engine(model).generate`; tests inject slow
        or gated ones, `--draft` a speculative one). max_queue: requests allowed to wait for a batch
        (more get 429). max_batch: rows per engine call. max_body_bytes: larger bodies get 413.
    chat_max_tokens / completion_max_tokens: max_tokens when a request leaves it unset
        (capped by the room left in the context window). batch_wait_s: see `Batcher`.
    """
    context_len = int(model.config.max_seq_len)
    batcher = Batcher(generate_fn or Engine(model).generate, tokenizer,
                      stop_ids=[tokenizer.end_id, tokenizer.eos_id], context_len=context_len,
                      max_batch=max_batch, max_queue=max_queue, batch_wait_s=batch_wait_s)
    batcher.start()  # also (re)started by the lifespan, so an app used without one still works
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        batcher.close()

    app = FastAPI(title="genforge", version="1", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.batcher = batcher
    app.state.model_name = model_name

    # ------------------------------------------------------------------ errors
    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return JSONResponse(APIError(e.status_code, str(e.detail), type=kind).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _server_error(request: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(APIError(500, f"internal server error: {type(e).__name__}", type="server_error").body(),
                            status_code=500)

    # ------------------------------------------------------------------ plain endpoints
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health")
    async def health() -> JSONResponse:
        ok = batcher.alive
        return JSONResponse({"status": "ok" if ok else "worker down", "model": model_name,
                             "waiting": batcher.waiting, "running": batcher.running, **batcher.stats},
                            status_code=200 if ok else 503)

    def model_card() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "genforge",
                "max_model_len": context_len}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def one_model(name: str) -> dict[str, Any]:
        if name != model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {model_name!r}",
                           type="not_found_error", param="model", code="model_not_found")
        return model_card()

    # ------------------------------------------------------------------ generation endpoints
    def fit(ids: list[int], max_tokens: int | None, default: int, truncate: bool,
            where: str = "prompt") -> tuple[list[int], int]:
        """(ids, max_tokens) that fit the context window, or a 400 (truncating only when asked)."""
        if max_tokens is not None and max_tokens >= context_len:
            raise APIError(400, f"max_tokens ({max_tokens}) must be smaller than the model's context window "
                           f"({context_len} tokens)", param="max_tokens", code="context_length_exceeded")
        want = max_tokens if max_tokens is not None else min(default, max(context_len - len(ids), 1))
        if len(ids) + want > context_len:
            if not truncate:
                raise APIError(400, f"this model's maximum context length is {context_len} tokens, but you "
                               f"requested {len(ids) + want} ({len(ids)} in the {where}, {want} for the completion); "
                               "shorten the prompt, lower max_tokens, or set \"truncate\": true",
                               param="messages" if where == "messages" else "prompt",
                               code="context_length_exceeded")
            keep = context_len - want  # >= 1 since want < context_len
            first = ids[:1] if ids[:1] == [tokenizer.bos_id] and keep > 1 else []
            ids = first + ids[len(ids) - (keep - len(first)):]
        return ids, want

    def check_model(name: str) -> None:
        if name != model_name:
            raise APIError(400, f"the model {name!r} does not exist; this server serves {model_name!r}",
                           param="model", code="model_not_found")

    def chat_prompt(req: ChatRequest) -> tuple[list[int], int]:
        msgs = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]

        def encode(ms: list[dict]) -> list[int]:
            # the text layer keeps special-token strings in message content as plain text (no forged turns)
            return render_prompt(tokenizer, ms)

        ids = encode(msgs)
        max_tokens = req.max_completion_tokens or req.max_tokens
        if req.truncate:  # drop whole old turns first (keeping system messages and the last turn)
            budget = context_len - (max_tokens or 1)
            while len(ids) > budget:
                drop = next((i for i, m in enumerate(msgs[:-1]) if m["role"] != "system"), None)
                if drop is None:
                    break
                msgs.pop(drop)
                ids = encode(msgs)
        return fit(ids, max_tokens, chat_max_tokens, req.truncate, "messages")

    def submit(req: ChatRequest | CompletionRequest, prompts: list[list[int]], max_tokens: int) -> Job:
        """Queue a job with one row per choice (choice index = prompt_index * n + j, as OpenAI orders them)."""
        reject_unsupported(req)
        if len(prompts) * req.n > MAX_ROWS:
            raise APIError(400, f"prompts x n = {len(prompts) * req.n} exceeds the limit of {MAX_ROWS} per request",
                           param="n", code="invalid_value")
        job = Job([p for p in prompts for _ in range(req.n)], max_tokens, req.sampling())
        job.bind()
        try:
            batcher.submit(job)
        except QueueFull as e:
            raise APIError(429, f"the server is busy: {e}; retry shortly", type="server_overloaded",
                           code="queue_full", headers={"Retry-After": "1"}) from None
        except Closed as e:
            raise APIError(503, f"the server cannot generate right now: {e}", type="server_error",
                           code="unavailable") from None
        return job

    async def watch_disconnect(request: Request, job: Job) -> None:
        """Cancel the job when the client goes away (the body has been read, so the next message says so)."""
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                job.cancel()
                return

    async def collect(request: Request, job: Job) -> tuple[list[str], list[str | None]]:
        """Run a non-streamed job to the end: (text per choice, finish reason per choice)."""
        texts = [""] * len(job.prompts)
        reasons: list[str | None] = [None] * len(job.prompts)
        watcher = asyncio.create_task(watch_disconnect(request, job))
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

    def usage(job: Job, prompts: list[list[int]]) -> dict[str, int]:
        p, c = sum(len(x) for x in prompts), sum(job.tokens)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def sse(job: Job, prompts: list[list[int]], make_chunk: Callable[[Event | None, int], dict | None],
            include_usage: bool, obj: str, rid: str) -> StreamingResponse:
        """Stream a job as server-sent events; a disconnect cancels the stream task and so the job."""

        async def events() -> AsyncIterator[str]:
            try:
                for i in range(len(job.prompts)):
                    first = make_chunk(None, i)
                    if first:
                        yield f"data: {json.dumps(first)}\n\n"
                async for events in job.stream():
                    yield "".join(f"data: {json.dumps(make_chunk(ev, ev.index))}\n\n" for ev in events)
                if include_usage:
                    tail = {"id": rid, "object": obj, "created": int(time.time()), "model": model_name,
                            "choices": [], "usage": usage(job, prompts)}
                    yield f"data: {json.dumps(tail)}\n\n"
            except RuntimeError as e:  # the engine failed mid-stream: say so in-band
                yield f"data: {json.dumps(APIError(500, str(e), type='server_error').body())}\n\n"
            finally:
                job.cancel()
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def read_body(request: Request) -> Any:
        """The JSON body, refusing (413) anything over max_body_bytes before reading it all."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body_bytes:
            raise APIError(413, f"request body of {int(declared)} bytes exceeds the limit of {max_body_bytes}",
                           code="request_too_large")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                raise APIError(413, f"request body exceeds the limit of {max_body_bytes} bytes",
                               code="request_too_large")
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from None

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req: ChatRequest = parse_request(ChatRequest, await read_body(request))
        check_model(req.model)
        ids, max_tokens = chat_prompt(req)
        job = submit(req, [ids], max_tokens)
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if req.stream:
            def chunk(ev: Event | None, i: int) -> dict:
                if ev is None:  # the opening chunk of each choice announces the role
                    delta, reason = {"role": "assistant", "content": ""}, None
                elif ev.kind == "delta":
                    delta, reason = {"content": ev.text}, None
                else:
                    delta, reason = {}, ev.finish_reason
                return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model_name,
                        "choices": [{"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}]}
            return sse(job, [ids], chunk, req.include_usage(), "chat.completion.chunk", rid)
        texts, reasons = await collect(request, job)
        choices = [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None, "finish_reason": r}
                   for i, (t, r) in enumerate(zip(texts, reasons))]
        return JSONResponse({"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model_name,
                             "choices": choices, "usage": usage(job, [ids])})

    def completion_prompts(req: CompletionRequest) -> tuple[list[list[int]], int]:
        """Token ids of each prompt (strings get BOS + text, `genforge.text.render_prompt`) and one max_tokens."""
        p = req.prompt
        if isinstance(p, str):
            raw = [render_prompt(tokenizer, p)]
        elif p and all(isinstance(x, str) for x in p):
            raw = [render_prompt(tokenizer, x) for x in p]
        elif p and all(isinstance(x, int) for x in p):
            raw = [list(p)]
        else:
            raw = [list(x) for x in p]
        if not raw or any(len(x) == 0 for x in raw):
            raise APIError(400, "prompt must not be empty", param="prompt", code="invalid_value")
        vocab = int(model.config.vocab_size)
        if any(not 0 <= t < vocab for x in raw for t in x):
            raise APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt", code="invalid_value")
        fitted = [fit(x, req.max_tokens, completion_max_tokens, req.truncate) for x in raw]
        return [ids for ids, _ in fitted], min(m for _, m in fitted)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req: CompletionRequest = parse_request(CompletionRequest, await read_body(request))
        check_model(req.model)
        prompts, max_tokens = completion_prompts(req)
        job = submit(req, prompts, max_tokens)
        rid = f"cmpl-{uuid.uuid4().hex[:24]}"
        if req.stream:
            def chunk(ev: Event | None, i: int) -> dict | None:
                if ev is None:
                    return None
                text, reason = (ev.text, None) if ev.kind == "delta" else ("", ev.finish_reason)
                return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model_name,
                        "choices": [{"index": i, "text": text, "logprobs": None, "finish_reason": reason}]}
            return sse(job, prompts, chunk, req.include_usage(), "text_completion", rid)
        texts, reasons = await collect(request, job)
        choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": r}
                   for i, (t, r) in enumerate(zip(texts, reasons))]
        return JSONResponse({"id": rid, "object": "text_completion", "created": int(time.time()), "model": model_name,
                             "choices": choices, "usage": usage(job, prompts)})

    return app


# ---------------------------------------------------------------------- command line
def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `genforge serve CHECKPOINT [--adapter DIR] [--draft DIR] [--host] [--port] [--max-queue N]`."""
    p = subparsers.add_parser("serve", help="serve a checkpoint over an OpenAI-compatible HTTP API + web chat page",
                              description="Serve a checkpoint: /v1/chat/completions, /v1/completions, /v1/models, "
                              "/health, and a chat page at /.")
    p.add_argument("checkpoint", help="checkpoint folder (genforge or HF Llama-family)")
    p.add_argument("--adapter", help="PEFT adapter folder (LoRA, merged into the weights at load; prompt tuning; "
                   "bottleneck)")
    p.add_argument("--draft", help="draft checkpoint for speculative decoding (same tokenizer)")
    p.add_argument("--draft-k", type=int, default=4, help="tokens the draft proposes per step")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name", help="the name clients use in `model` (default: the checkpoint folder's name)")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait for a batch; more get 429")
    p.add_argument("--max-batch", type=int, default=16, help="rows (requests x n) generated together")
    p.add_argument("--batch-wait-ms", type=float, default=10.0,
                   help="under concurrent load, wait this long to fill a batch before starting it")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get 413")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=serve_command)
    return p


def build_from_args(args: argparse.Namespace) -> FastAPI:
    """Load the checkpoint (+ adapter, + draft) named by parsed CLI args and build the app."""
    from genforge.checkpoint import load_checkpoint
    from genforge.runtime import set_threads

    set_threads(args.threads)
    model, tokenizer, _ = load_checkpoint(args.checkpoint)
    if tokenizer is None:
        raise CheckpointError(f"{args.checkpoint}: no tokenizer.json; the server needs the checkpoint's tokenizer")
    if args.adapter:
        from genforge.model.peft import load_adapter, lora_modules, merge_and_unload

        model = load_adapter(model, args.adapter)
        if lora_modules(model):
            model = merge_and_unload(model)  # W + BA once, so decoding costs what the base model costs
        model.eval()
    generate_fn = None
    max_batch = args.max_batch
    if args.draft:
        draft, _, _ = load_checkpoint(args.draft)
        if draft.config.vocab_size != model.config.vocab_size:
            raise CheckpointError(f"{args.draft}: draft vocab ({draft.config.vocab_size}) differs from the target's "
                                  f"({model.config.vocab_size}); speculative decoding needs the same tokenizer")
        generate_fn, max_batch = speculative_generate_fn(model, draft, args.draft_k), 1
    name = args.model_name or Path(args.checkpoint).resolve().name
    return create_app(model, tokenizer, name, generate_fn=generate_fn, max_queue=args.max_queue,
                      max_batch=max_batch, max_body_bytes=args.max_body_bytes, batch_wait_s=args.batch_wait_ms / 1e3)


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


def serve_command(args: argparse.Namespace) -> None:
    """`genforge serve`: build the app and run uvicorn until interrupted."""
    import uvicorn

    app = build_from_args(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    print(f"genforge serve: {app.state.model_name} on http://{args.host}:{args.port}/  (chat page at /, API at /v1)")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


def main(argv: list[str] | None = None) -> None:
    """`python -m genforge.serve.app CHECKPOINT ...` (the same options as `genforge serve`)."""
    parser = argparse.ArgumentParser(prog="python -m genforge.serve.app")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", *(argv if argv is not None else sys.argv[1:])])
    args.func(args)


if __name__ == "__main__":
    main()
