"""The OpenAI-compatible server: shapes, streaming, validation errors, batching, queueing, disconnects, CLI."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from genforge.checkpoint import save_checkpoint
from genforge.infer.engine import Engine
from genforge.infer.sampling import SamplingParams
from genforge.model.peft import apply_lora, save_lora
from genforge.serve.app import create_app
from genforge.serve.testing import running_server
from tests.serve.conftest import CTX


def chat_body(**kw) -> dict:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 12,
            "temperature": 0}
    body.update(kw)
    return body


def sse_events(text: str) -> list[str]:
    """The data payloads of an SSE body, checking the framing on the way."""
    assert text.endswith("\n\n")
    events = text.split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events), events
    return [e[len("data: "):] for e in events]


def assert_error(r: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


# ---------------------------------------------------------------------------------------------- basics
def test_models_health_and_page(client):
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny"]
    assert models["data"][0]["max_model_len"] == CTX
    assert client.get("/v1/models/tiny").json()["id"] == "tiny"
    assert_error(client.get("/v1/models/other"), 404, code="model_not_found")
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "v1/chat/completions" in page.text and "getReader" in page.text


def test_chat_completion_shape_and_usage(client, tiny):
    model, tok = tiny
    r = client.post("/v1/chat/completions", json=chat_body(max_tokens=10))
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["object"] == "chat.completion" and j["model"] == "tiny" and j["id"].startswith("chatcmpl-")
    (choice,) = j["choices"]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] == "length"  # the random test model never emits a stop token
    prompt = tok.encode(tok.render_chat([{"role": "user", "content": "hello there"}], add_generation_prompt=True))
    assert j["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": 10, "total_tokens": len(prompt) + 10}
    # the same text the engine gives directly (the server adds no tokens of its own)
    ids = Engine(model).generate([prompt], SamplingParams(max_new_tokens=10), stop_ids=[tok.end_id, tok.eos_id])[0]
    assert choice["message"]["content"] == tok.decode(ids)


def test_chat_stream_format_and_deltas_match_non_streamed(client):
    full = client.post("/v1/chat/completions", json=chat_body()).json()["choices"][0]["message"]["content"]
    r = client.post("/v1/chat/completions", json=chat_body(stream=True, stream_options={"include_usage": True}))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "tiny" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 12
    body = [c for c in chunks[1:-1]]
    assert body[-1]["choices"][0]["finish_reason"] == "length" and body[-1]["choices"][0]["delta"] == {}
    deltas = [c["choices"][0]["delta"].get("content", "") for c in body]
    assert len([d for d in deltas if d]) > 1  # really streamed, not one burst
    assert "".join(deltas) == full


def test_completion_stream_matches_and_choice_order(client):
    body = {"model": "tiny", "prompt": ["the cat", "hello world"], "max_tokens": 6, "temperature": 0, "n": 2}
    j = client.post("/v1/completions", json=body).json()
    assert j["object"] == "text_completion"
    texts = [c["text"] for c in j["choices"]]
    assert [c["index"] for c in j["choices"]] == [0, 1, 2, 3]
    assert texts[0] == texts[1] and texts[2] == texts[3] and texts[0] != texts[2]  # index = prompt * n + j
    events = sse_events(client.post("/v1/completions", json={**body, "stream": True}).text)
    assert events[-1] == "[DONE]"
    streamed = ["", "", "", ""]
    for e in events[:-1]:
        c = json.loads(e)["choices"][0]
        streamed[c["index"]] += c["text"]
    assert streamed == texts
    # token-id prompts are accepted too
    tok_prompt = client.post("/v1/completions", json={**body, "prompt": [1, 20, 30], "n": 1})
    assert tok_prompt.status_code == 200 and tok_prompt.json()["usage"]["prompt_tokens"] == 3


def test_stop_strings_cut_the_text(client):
    full = client.post("/v1/chat/completions", json=chat_body(max_tokens=20)).json()["choices"][0]["message"]
    text = full["content"]
    stop = text[5:8]
    assert stop and text.find(stop) >= 0
    want = text[:text.find(stop)]
    r = client.post("/v1/chat/completions", json=chat_body(max_tokens=20, stop=[stop]))
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == want and choice["finish_reason"] == "stop"
    events = sse_events(client.post("/v1/chat/completions", json=chat_body(max_tokens=20, stop=stop,
                                                                          stream=True)).text)
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == want
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_seed_makes_sampling_reproducible(client):
    body = chat_body(temperature=1.0, max_tokens=16, seed=7)
    a = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    b = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    c = client.post("/v1/chat/completions", json={**body, "seed": 8}).json()["choices"][0]["message"]["content"]
    assert a == b and a != c


def test_request_sampling_is_one_sampling_params():
    from genforge.serve.batcher import batch_key
    from genforge.serve.schemas import ChatRequest, CompletionRequest

    req = ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}], temperature=0.5, top_p=0.8, top_k=3,
                      seed=7, stop="\n", presence_penalty=0.5, frequency_penalty=0.25, repetition_penalty=1.2,
                      max_completion_tokens=9)
    assert req.sampling() == SamplingParams(max_new_tokens=9, temperature=0.5, top_k=3, top_p=0.8, seed=7,
                                            repetition_penalty=1.2, frequency_penalty=0.25, presence_penalty=0.5,
                                            stop=["\n"])
    plain = CompletionRequest(model="m", prompt="x", temperature=0.0, max_tokens=4).sampling()
    assert plain.greedy and plain.max_new_tokens == 4 and plain.stop == []
    # greedy requests batch together whatever their seed; seeded sampling runs alone
    assert batch_key(plain) == batch_key(SamplingParams(seed=3)) is not None
    assert batch_key(req.sampling()) is None


def test_developer_role_and_text_parts(client):
    plain = client.post("/v1/chat/completions", json=chat_body(
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])).json()
    parts = client.post("/v1/chat/completions", json=chat_body(
        messages=[{"role": "developer", "content": [{"type": "text", "text": "be "},
                                                    {"type": "text", "text": "brief"}]},
                  {"role": "user", "content": "hi"}])).json()
    assert plain["choices"][0]["message"] == parts["choices"][0]["message"]


# ---------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("change, param, code", [
    ({"temperature": "hot"}, "temperature", "invalid_value"),  # wrongly typed
    ({"temperature": 2.5}, "temperature", "invalid_value"),  # out of range
    ({"top_p": 0}, "top_p", "invalid_value"),
    ({"max_tokens": 0}, "max_tokens", "invalid_value"),
    ({"max_tokens": 1.5}, "max_tokens", "invalid_value"),
    ({"n": 0}, "n", "invalid_value"),
    ({"n": True}, "n", "invalid_value"),  # a bool is not an int here
    ({"stream": "yes"}, "stream", "invalid_value"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
    ({"presence_penalty": -3}, "presence_penalty", "invalid_value"),
    ({"messages": []}, "messages", "invalid_value"),  # empty messages
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "invalid_value"),
    ({"messages": [{"role": "user"}]}, "messages[0].content", "missing_required_parameter"),
    ({"model": None}, "model", "invalid_value"),
    ({"model": "gpt-4o"}, "model", "model_not_found"),  # unknown model
    ({"top_logprobs": 2}, "top_logprobs", "invalid_value"),  # without logprobs: true
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "invalid_value"),
    ({"response_format": {"type": "yaml"}}, "response_format.type", "invalid_value"),
])
def test_bad_parameters_give_400(client, change, param, code):
    assert_error(client.post("/v1/chat/completions", json=chat_body(**change)), 400, param, code)


def test_missing_model_and_bad_json_give_400(client):
    body = chat_body()
    del body["model"]
    assert_error(client.post("/v1/chat/completions", json=body), 400, "model", "missing_required_parameter")
    bad = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(bad, 400, code="invalid_json")
    assert_error(client.post("/v1/chat/completions", json=[1, 2]), 400)
    assert_error(client.post("/v1/completions", json={"model": "tiny", "prompt": []}), 400, "prompt")
    assert client.post("/v1/completions", json={"model": "tiny", "prompt": "", "max_tokens": 2}).status_code == 200
    assert_error(client.post("/v1/completions", json={"model": "tiny", "prompt": [99999]}), 400, "prompt")


def test_context_overflow_gives_400_or_truncates(client):
    long = "the cat sat on the mat " * 40  # far beyond 128 tokens
    r = client.post("/v1/chat/completions", json=chat_body(messages=[{"role": "user", "content": long}]))
    err = assert_error(r, 400, "messages", "context_length_exceeded")
    assert "128" in err["message"]
    assert_error(client.post("/v1/chat/completions", json=chat_body(max_tokens=CTX)), 400, "max_tokens",
                 "context_length_exceeded")
    assert_error(client.post("/v1/completions", json={"model": "tiny", "prompt": long, "max_tokens": 8}), 400,
                 "prompt", "context_length_exceeded")
    # truncate: true keeps the newest tokens and answers
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": long, "max_tokens": 8, "truncate": True})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == CTX - 8
    # chat truncation drops old turns first and keeps the system message and the last turn
    msgs = [{"role": "system", "content": "sys"}] + [{"role": "user", "content": long[:150]}] * 6 + \
        [{"role": "user", "content": "last"}]
    r = client.post("/v1/chat/completions", json=chat_body(messages=msgs, max_tokens=8, truncate=True))
    assert r.status_code == 200, r.text
    assert 0 < r.json()["usage"]["prompt_tokens"] <= CTX - 8


def test_oversized_body_gives_413(tiny):
    model, tok = tiny
    with TestClient(create_app(model, tok, "tiny", max_body_bytes=2000)) as c:
        big = chat_body(messages=[{"role": "user", "content": "x" * 5000}])
        assert_error(c.post("/v1/chat/completions", json=big), 413, code="request_too_large")
        chunked = c.post("/v1/chat/completions", content=iter([b"{" * 1500, b"}" * 1500]))  # no content-length
        assert_error(chunked, 413, code="request_too_large")
        assert c.post("/v1/chat/completions", json=chat_body(max_tokens=2)).status_code == 200


# ---------------------------------------------------------------------------------------------- concurrency
class Gate:
    """A generate_fn wrapping the real engine that waits for `open` before each batch and counts batches."""

    def __init__(self, model, delay: float = 0.0):
        self.engine = Engine(model)
        self.open = threading.Event()
        self.entered = threading.Event()
        self.delay = delay
        self.batches: list[int] = []

    def __call__(self, prompts, params, **kw):
        self.batches.append(len(prompts))
        self.entered.set()
        assert self.open.wait(30), "gate never opened"
        if self.delay:
            inner = kw["stop_fn"]

            def slow(row, tokens):
                time.sleep(self.delay)
                return inner(row, tokens)
            kw["stop_fn"] = slow
        return self.engine.generate(prompts, params, **kw)


def test_two_concurrent_requests_complete_and_batch(tiny):
    model, tok = tiny
    gate = Gate(model)
    app = create_app(model, tok, "tiny", generate_fn=gate, max_batch=8)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as c:
            first = asyncio.create_task(c.post("/v1/chat/completions", json=chat_body(max_tokens=4)))
            await asyncio.to_thread(gate.entered.wait, 10)  # the first request holds the worker
            later = [asyncio.create_task(c.post("/v1/chat/completions", json=chat_body(
                messages=[{"role": "user", "content": text}], max_tokens=8)))
                for text in ("hi", "what is one plus two")]
            while app.state.batcher.waiting < 2:
                await asyncio.sleep(0.01)
            health = await c.get("/health")  # the event loop answers while the model is busy
            assert health.status_code == 200 and health.json()["running"] == 1 and health.json()["waiting"] == 2
            gate.open.set()
            return await asyncio.gather(first, *later)

    results = asyncio.run(scenario())
    assert [r.status_code for r in results] == [200, 200, 200]
    assert gate.batches == [1, 2]  # the two waiting requests shared one batch
    # batched greedy output equals each request served alone
    with TestClient(create_app(model, tok, "tiny")) as c:
        alone = c.post("/v1/chat/completions", json=chat_body(messages=[{"role": "user", "content": "hi"}],
                                                              max_tokens=8)).json()
    assert results[1].json()["choices"][0]["message"] == alone["choices"][0]["message"]


def test_full_queue_gives_429(tiny):
    model, tok = tiny
    gate = Gate(model)
    app = create_app(model, tok, "tiny", generate_fn=gate, max_queue=1)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as c:
            running = asyncio.create_task(c.post("/v1/chat/completions", json=chat_body(max_tokens=3)))
            await asyncio.to_thread(gate.entered.wait, 10)
            waiting = asyncio.create_task(c.post("/v1/chat/completions", json=chat_body(max_tokens=3, seed=1,
                                                                                        temperature=0.5)))
            while app.state.batcher.waiting < 1:
                await asyncio.sleep(0.01)
            refused = await c.post("/v1/chat/completions", json=chat_body(max_tokens=3))
            gate.open.set()
            return refused, await running, await waiting

    refused, running, waiting = asyncio.run(scenario())
    err = assert_error(refused, 429, code="queue_full")
    assert refused.headers["retry-after"] == "1" and "max_queue=1" in err["message"]
    assert running.status_code == 200 and waiting.status_code == 200


def test_stopped_worker_gives_503(tiny):
    model, tok = tiny
    app = create_app(model, tok, "tiny")
    app.state.batcher.close()
    c = TestClient(app)  # no lifespan: the worker stays down
    assert_error(c.post("/v1/chat/completions", json=chat_body()), 503, code="unavailable")
    assert c.get("/health").status_code == 503


def test_engine_failure_is_reported(tiny):
    model, tok = tiny

    def broken(prompts, params, **kw):
        raise RuntimeError("boom")

    with TestClient(create_app(model, tok, "tiny", generate_fn=broken)) as c:
        err = assert_error(c.post("/v1/chat/completions", json=chat_body()), 500)
        assert "boom" in err["message"] and err["type"] == "server_error"
        events = sse_events(c.post("/v1/chat/completions", json=chat_body(stream=True)).text)
        assert events[-1] == "[DONE]" and "boom" in json.loads(events[-2])["error"]["message"]
        assert c.get("/health").status_code == 200  # the worker survives


def test_client_disconnect_mid_stream_frees_the_worker(tiny):
    model, tok = tiny
    gate = Gate(model, delay=0.02)  # ~50 tokens/s so the stream is still running when the client leaves
    gate.open.set()
    app = create_app(model, tok, "tiny", generate_fn=gate, max_queue=1)
    batcher = app.state.batcher
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        with c.stream("POST", "/v1/chat/completions", json=chat_body(max_tokens=100, stream=True)) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]  # a few chunks (and blank separators) arrive
            assert any('"content"' in x for x in got)
        # the connection is closed: generation stops long before 100 tokens
        deadline = time.monotonic() + 10
        while batcher.running and time.monotonic() < deadline:
            time.sleep(0.02)
        assert batcher.running == 0 and batcher.stats["cancelled"] == 1
        assert batcher.stats["tokens"] < 60
        # and the worker is free for the next client
        r = c.post("/v1/chat/completions", json=chat_body(max_tokens=2))
        assert r.status_code == 200, r.text
        # a non-streamed request whose client gives up is cancelled too
        tokens = batcher.stats["tokens"]
        with pytest.raises(httpx.ReadTimeout):
            c.post("/v1/chat/completions", json=chat_body(max_tokens=100), timeout=0.5)
        deadline = time.monotonic() + 10
        while batcher.stats["cancelled"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert batcher.stats["cancelled"] == 2 and batcher.stats["tokens"] - tokens < 60


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_builds_app_from_checkpoint_adapter_and_draft(tiny, tmp_path):
    from genforge.cli import COMMANDS, collect_overrides
    from genforge.commands.serve import ServeConfig, build_app
    from genforge.config import load_config

    model, tok = tiny
    save_checkpoint(tmp_path / "ckpt", model, tok)

    def parse(*words: str) -> ServeConfig:  # what `genforge serve WORDS...` builds
        return load_config(ServeConfig, None, collect_overrides(ServeConfig, COMMANDS["serve"].positional, list(words)))

    cfg = parse(str(tmp_path / "ckpt"), "port=0", "max_queue=3")
    assert cfg.host == "127.0.0.1" and cfg.max_queue == 3 and cfg.checkpoint == str(tmp_path / "ckpt")
    assert COMMANDS["serve"].main == "genforge.commands.serve:main"

    def reply(app, **kw):
        with TestClient(app) as c:
            r = c.post("/v1/chat/completions", json=chat_body(model="ckpt", **kw))
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["message"]["content"]

    base = reply(build_app(cfg))
    assert base == reply(create_app(model, tok, "ckpt"))  # the saved checkpoint serves the same text
    # draft=: speculative greedy decoding gives the target's greedy text
    assert reply(build_app(parse(str(tmp_path / "ckpt"), f"draft={tmp_path / 'ckpt'}"))) == base
    # adapter=: a LoRA with non-zero B changes the output
    from genforge.checkpoint import load_checkpoint

    lora_model, _, _ = load_checkpoint(tmp_path / "ckpt")
    apply_lora(lora_model, r=4, alpha=8.0)
    import torch

    with torch.no_grad():
        for name, p in lora_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    save_lora(lora_model, tmp_path / "lora")
    assert reply(build_app(parse(str(tmp_path / "ckpt"), f"adapter={tmp_path / 'lora'}"))) != base
