"""Log-probabilities on the wire: completions `echo` + `logprobs` (legacy format), chat `logprobs`/`top_logprobs`,
token-id and batched prompts, `/tokenize` and `/detokenize`. The oracle is one plain forward of the model."""

from __future__ import annotations

import json

import pytest
import torch
from fastapi.testclient import TestClient

from genforge.infer.engine import Engine
from genforge.infer.sampling import SamplingParams
from genforge.serve.app import create_app
from tests.serve.test_serve import assert_error, sse_events


def forward_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log P(ids[t] | ids[:t]) for t >= 1, from one forward (T-1,)."""
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids]))[0].float(), -1)
    return logp[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


def test_echo_scores_the_prompt_like_a_forward_pass(client, tiny):
    model, tok = tiny
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "the cat sat on the mat", "max_tokens": 0,
                                             "echo": True, "logprobs": 3})
    assert r.status_code == 200, r.text
    c = r.json()["choices"][0]
    ids = tok.encode("the cat sat on the mat", add_bos=True)
    lp = c["logprobs"]
    assert c["text"] == "the cat sat on the mat" and len(lp["tokens"]) == len(ids)
    assert lp["tokens"][0] == "<|bos|>" and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][1:] == pytest.approx(forward_logprobs(model, ids).tolist(), abs=1e-4)
    for chosen, top in zip(lp["token_logprobs"][1:], lp["top_logprobs"][1:]):
        assert 3 <= len(top) <= 4 and max(top.values()) >= chosen - 1e-6  # top-3 plus the chosen token
    assert lp["text_offset"] == sorted(lp["text_offset"])


def test_lm_eval_request_shape_token_ids_batched(client, tiny):
    """What lm-eval's local-completions sends for log-likelihoods: token-id prompts, batched, echo, max_tokens 1."""
    model, tok = tiny
    prompts = [tok.encode("hello world", add_bos=True), tok.encode("one plus two is three", add_bos=True)]
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": prompts, "max_tokens": 1, "echo": True,
                                             "logprobs": 1, "temperature": 0, "seed": 1234})
    assert r.status_code == 200, r.text
    choices = sorted(r.json()["choices"], key=lambda c: c["index"])
    for ids, c in zip(prompts, choices):
        lp = c["logprobs"]
        assert len(lp["token_logprobs"]) == len(ids) + 1  # the prompt, then the one generated token
        nxt = int(model(torch.tensor([ids]))[0, -1].argmax())
        assert forward_logprobs(model, ids + [nxt]).tolist() == pytest.approx(lp["token_logprobs"][1:], abs=1e-4)
        # greedy: the generated token is the most likely one, as lm-eval's is_greedy check reads it
        assert lp["token_logprobs"][-1] == pytest.approx(max(lp["top_logprobs"][-1].values()))


def test_generated_token_logprobs_are_the_models(client, tiny):
    model, tok = tiny
    body = {"model": "tiny", "prompt": "Alice lives in", "max_tokens": 6, "logprobs": 2, "temperature": 0.9,
            "seed": 5}
    c = client.post("/v1/completions", json=body).json()["choices"][0]
    ids = tok.encode("Alice lives in", add_bos=True)
    # a seeded row samples exactly as the engine does alone, so the engine tells which tokens were drawn
    gen = Engine(model).generate([ids], SamplingParams(max_new_tokens=6, temperature=0.9, seed=5))[0]
    assert tok.decode(gen) == c["text"] and len(c["logprobs"]["tokens"]) == 6
    assert "".join(c["logprobs"]["tokens"]) == c["text"]
    # raw model log-probs (before temperature), whatever the sampler did
    want = forward_logprobs(model, ids + gen)[-len(gen):].tolist()
    assert c["logprobs"]["token_logprobs"] == pytest.approx(want, abs=1e-4)
    streamed = [json.loads(e) for e in sse_events(client.post("/v1/completions", json={**body, "stream": True}).text)
                if e != "[DONE]"]
    lps = [x for ch in streamed for x in (ch["choices"][0]["logprobs"] or {}).get("token_logprobs", [])]
    assert lps == pytest.approx(c["logprobs"]["token_logprobs"], abs=1e-6)


def test_chat_logprobs_streamed_and_not(client):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0,
            "logprobs": True, "top_logprobs": 2}
    c = client.post("/v1/chat/completions", json=body).json()["choices"][0]
    content = c["logprobs"]["content"]
    assert len(content) == 5 and "".join(x["token"] for x in content) == c["message"]["content"]
    for x in content:  # greedy: the chosen token is the first alternative
        assert len(x["top_logprobs"]) == 2 and x["top_logprobs"][0]["logprob"] == pytest.approx(x["logprob"])
        assert bytes(x["bytes"]).decode("utf-8", "replace") == x["token"]
    chunks = [json.loads(e) for e in sse_events(client.post("/v1/chat/completions",
                                                            json={**body, "stream": True}).text) if e != "[DONE]"]
    streamed = [x for ch in chunks for x in ((ch["choices"][0].get("logprobs") or {}).get("content") or [])]
    assert streamed == content
    plain = client.post("/v1/chat/completions", json={**body, "logprobs": False, "top_logprobs": None}).json()
    assert plain["choices"][0]["logprobs"] is None


def test_echo_without_logprobs_and_bad_combinations(client):
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "hello", "max_tokens": 2, "echo": True})
    assert r.json()["choices"][0]["text"].startswith("hello")
    assert_error(client.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 0}), 400,
                 "max_tokens")
    assert_error(client.post("/v1/completions", json={"model": "tiny", "prompt": "x", "logprobs": 21}), 400,
                 "logprobs")


def test_static_batching_refuses_logprobs_clearly(tiny):
    model, tok = tiny
    with TestClient(create_app(model, tok, "tiny", batching="static")) as c:
        err = assert_error(c.post("/v1/completions", json={"model": "tiny", "prompt": "x", "logprobs": 1}), 400,
                           "logprobs", "unsupported")
        assert "continuous" in err["message"]


def test_tokenize_and_detokenize(client, tiny):
    _, tok = tiny
    r = client.post("/tokenize", json={"prompt": "the cat <|end|>"}).json()
    assert r["tokens"] == tok.encode("the cat <|end|>", add_bos=True, allow_special=False)
    assert r["count"] == len(r["tokens"]) and r["max_model_len"] == 128
    bare = client.post("/tokenize", json={"prompt": "the cat", "add_special_tokens": False}).json()["tokens"]
    assert bare == tok.encode("the cat")
    assert client.post("/detokenize", json={"tokens": bare}).json() == {"prompt": "the cat"}
    chat = client.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}]}).json()["tokens"]
    assert chat == tok.encode_chat([{"role": "user", "content": "hi"}], add_generation_prompt=True)[0]
    assert_error(client.post("/detokenize", json={"tokens": [10 ** 6]}), 400, "tokens")
    assert_error(client.post("/tokenize", json={"prompt": 3}), 400, "prompt")
