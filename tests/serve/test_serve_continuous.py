"""Continuous batching: rows join and leave between decode steps over a slot KV cache with prefix caching.

Checked: rows that join at different steps decode exactly as they would alone (greedy, seeded sampling,
penalties, echo log-probs); a short request arriving while a long one decodes finishes first (and does not
under static batching); a prefix-cache hit is exact and counted in /metrics; the queue depth and latency
histograms are there."""

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from genforge.infer.engine import Engine, PrefixCache, SlotDecoder
from genforge.infer.sampling import SamplingParams
from genforge.serve.app import create_app
from genforge.serve.testing import running_server, tiny_model_and_tokenizer

pytest.importorskip("prometheus_client")


@pytest.fixture(scope="module")
def long_ctx():
    return tiny_model_and_tokenizer(max_seq_len=1024)


def test_slot_decoder_rows_joining_later_decode_as_alone(tiny):
    model, tok = tiny
    prompts = [tok.encode(t, add_bos=True) for t in ("the cat sat on the mat", "hello world! how are you", "Alice")]
    budgets = [30, 12, 20]
    want = [Engine(model).generate([p], SamplingParams(max_new_tokens=n))[0] for p, n in zip(prompts, budgets)]
    sd = SlotDecoder(model, 2, cache_len=96, prefix_cache=PrefixCache(block=4))  # 2 slots: the third row waits
    joins, waiting, order, out = {0: 0, 5: 1}, [2], [], {}
    for step in range(80):
        if step in joins or (waiting and step > 5 and sd.fits(len(prompts[waiting[0]]), budgets[waiting[0]])):
            i = joins[step] if step in joins else waiting.pop(0)
            logits, _ = sd.admit(prompts[i], budgets[i])
            order.append(i)
            out[i] = [int(logits.argmax())]
        if not order:
            break
        logits = sd.step([out[i][-1] for i in order])
        for r, i in enumerate(order):
            out[i].append(int(logits[r].argmax()))
        for r in reversed(range(len(order))):
            if len(out[order[r]]) >= budgets[order[r]]:
                moved = sd.release(r)
                if moved is not None:
                    order[r] = order[moved]
                order.pop()
    assert [out[i][:budgets[i]] for i in range(3)] == want
    # the cached prefix gives the same next-token logits as a full forward
    logits, cached = sd.admit(prompts[1] + tok.encode(" today"), 4)
    assert cached > 0 and sd.prefix.hits >= 1
    with torch.no_grad():
        ref = model(torch.tensor([prompts[1] + tok.encode(" today")]))[0, -1]
    assert torch.allclose(logits, ref, atol=1e-5)


def test_mixed_settings_in_one_running_batch_match_the_engine(long_ctx):
    """Rows with different temperatures, seeds and penalties share the batch, each decoding as alone."""
    model, tok = long_ctx
    cases = [dict(temperature=0.0), dict(temperature=0.9, seed=7), dict(temperature=0.0, repetition_penalty=1.3),
             dict(temperature=1.2, seed=3, top_k=20, frequency_penalty=0.5)]
    prompt = "one plus two is three."
    app = create_app(model, tok, "tiny", max_batch=8)
    with running_server(app) as url:
        results: dict[int, str] = {}

        def ask(k: int) -> None:
            body = {"model": "tiny", "prompt": prompt, "max_tokens": 40, **cases[k]}
            results[k] = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]

        threads = [threading.Thread(target=ask, args=(k,)) for k in range(len(cases))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert app.state.batcher.stats["steps"] < 4 * 40  # they did share steps
    ids = tok.encode(prompt, add_bos=True)
    for k, kw in enumerate(cases):
        want = Engine(model).generate([ids], SamplingParams(max_new_tokens=40, **kw),
                                      stop_ids=[tok.end_id, tok.eos_id])[0]
        assert results[k] == tok.decode(want), kw


@pytest.mark.parametrize("batching", ["continuous", "static"])
def test_short_request_arriving_during_a_long_one(long_ctx, batching):
    """Server-side order (what the worker had generated when the short reply came back), not the order the
    client threads happened to read their sockets in."""
    model, tok = long_ctx
    app = create_app(model, tok, "tiny", batching=batching)
    started = threading.Event()
    with running_server(app) as url:
        def long() -> None:
            body = {"model": "tiny", "prompt": "the cat", "max_tokens": 700, "stream": True, "temperature": 0}
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as r:
                for line in r.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        started.set()

        t = threading.Thread(target=long)
        t.start()
        assert started.wait(30)
        r = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "hello", "max_tokens": 3},
                       timeout=120)
        tokens_then = app.state.batcher.stats["tokens"]  # generated so far, both requests together
        assert r.status_code == 200
        t.join(120)
    if batching == "continuous":
        assert tokens_then < 700  # the short reply finished while the long one was still decoding
    else:
        assert tokens_then >= 703  # static: it waited for the long batch to end


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def test_prefix_cache_hit_is_exact_and_counted_in_metrics(long_ctx):
    model, tok = long_ctx
    system = "You are a helpful assistant for the town of Brightwater. " * 6
    body = {"model": "tiny", "max_tokens": 12, "temperature": 0,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": "hi"}]}
    with TestClient(create_app(model, tok, "tiny", prefix_cache_tokens=0)) as c:
        plain = [c.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]]
        assert _metric(c.get("/metrics").text, "genforge_prefix_cache_hits_total") == 0
    with TestClient(create_app(model, tok, "tiny")) as c:
        m0 = c.get("/metrics").text
        assert _metric(m0, "genforge_prefix_cache_hits_total") == 0
        first = c.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
        other = {**body, "messages": [body["messages"][0], {"role": "user", "content": "what is 12 + 30?"}]}
        second = c.post("/v1/chat/completions", json=other).json()
        again = c.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
        text = c.get("/metrics").text
    assert first == again == plain[0]  # reuse changes nothing
    assert second["choices"][0]["message"]["content"]
    assert _metric(text, "genforge_prefix_cache_hits_total") == 2
    assert _metric(text, "genforge_prefix_cache_hit_tokens_total") >= 2 * 64  # the shared system prompt
    assert _metric(text, "genforge_prefix_cache_queries_total") == 3
    assert _metric(text, "genforge_requests_total") == 3
    assert _metric(text, "genforge_time_to_first_token_seconds_count") == 3
    assert _metric(text, "genforge_e2e_request_latency_seconds_count") == 3
    assert _metric(text, "genforge_generation_tokens_total") == 36
    assert _metric(text, "genforge_queue_depth") == 0 and "genforge_tokens_per_second" in text


def test_queue_depth_is_reported_while_requests_wait(long_ctx):
    model, tok = long_ctx
    app = create_app(model, tok, "tiny", max_batch=1)
    with running_server(app) as url:
        threads = [threading.Thread(target=httpx.post, args=(f"{url}/v1/completions",),
                                    kwargs={"json": {"model": "tiny", "prompt": "x", "max_tokens": 300},
                                            "timeout": 120}) for _ in range(3)]
        for t in threads:
            t.start()
        depth, deadline = 0.0, time.monotonic() + 20
        while depth < 1 and time.monotonic() < deadline:
            depth = _metric(httpx.get(f"{url}/metrics").text, "genforge_queue_depth")
        for t in threads:
            t.join()
    assert depth >= 1


def test_api_key(tiny):
    model, tok = tiny
    with TestClient(create_app(model, tok, "tiny", api_key="s3cret")) as c:
        body = {"model": "tiny", "prompt": "x", "max_tokens": 2}
        assert c.post("/v1/completions", json=body).status_code == 401
        bad = c.post("/v1/completions", json=body, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
        ok = c.post("/v1/completions", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.post("/tokenize", json={"prompt": "x"}).status_code == 401
        assert c.get("/health").status_code == 200 and c.get("/metrics").status_code == 200


def test_speculative_decoding_streams_as_tokens_are_accepted(long_ctx):
    """With a draft, a streamed reply starts long before the generation ends (one burst per target call)."""
    import copy

    from genforge.serve.app import speculative_generate_fn

    model, tok = long_ctx
    draft = copy.deepcopy(model)  # a perfect draft: every proposal accepted, k + 1 tokens per target call
    app = create_app(model, tok, "tiny", generate_fn=speculative_generate_fn(model, draft, k=4), max_batch=1)
    body = {"model": "tiny", "prompt": "the cat", "max_tokens": 500, "temperature": 0}
    with running_server(app) as url:
        full = httpx.post(f"{url}/v1/completions", json=body, timeout=120).json()["choices"][0]["text"]
        t0, first, texts = time.monotonic(), None, []
        with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    text = __import__("json").loads(line[6:])["choices"][0]["text"]
                    if text:
                        first = first or time.monotonic() - t0
                        texts.append(text)
        total = time.monotonic() - t0
    assert "".join(texts) == full and len(texts) > 10
    assert first < 0.3 * total, (first, total)  # not replayed after the whole reply was generated
    ids = tok.encode("the cat", add_bos=True)
    assert full == tok.decode(Engine(model).generate([ids], SamplingParams(max_new_tokens=500),
                                                     stop_ids=[tok.end_id, tok.eos_id])[0])


def test_requests_beyond_the_slot_cache_are_a_clear_400(tiny):
    model, tok = tiny
    with TestClient(create_app(model, tok, "tiny", kv_cache_tokens=40)) as c:
        r = c.post("/v1/completions", json={"model": "tiny", "prompt": "hello", "max_tokens": 60})
        assert r.status_code == 400 and "kv_cache_tokens" in r.json()["error"]["message"]
        ok = c.post("/v1/completions", json={"model": "tiny", "prompt": "hello", "max_tokens": 20, "n": 4})
        assert ok.status_code == 200 and len(ok.json()["choices"]) == 4  # rows wait for columns, then run
