"""Bad input probed from outside (issue 12, server cases 9-12): each is an OpenAI-schema 400, never a 500."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlparse

import pytest

from genforge.serve.app import create_app
from genforge.serve.limits import MAX_JSON_DEPTH, json_depth_exceeds, unencodable_text
from genforge.serve.testing import running_server


def chat_body(**kw) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 6,
            "temperature": 0, **kw}


def assert_400(r, param: str | None = None, code: str | None = None) -> dict:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


def post_raw(client, path: str, raw: bytes):
    return client.post(path, content=raw, headers={"content-type": "application/json"})


# ------------------------------------------------------------------------------------------- case 9: deep JSON
def test_depth_scan_ignores_brackets_in_strings():
    assert not json_depth_exceeds(json.dumps({"a": "[[[[{{{{" * 50, "b": ["\\\"[[[["]}).encode(), limit=3)
    assert json_depth_exceeds(b'{"a": [[[[1]]]]}', limit=3)
    assert not json_depth_exceeds(b'{"a": [[1]]}', limit=3)
    assert not json_depth_exceeds(b'"\\\\" [[1]]', limit=2)  # an escaped backslash ends before the quote


def _http(sock: socket.socket, path: str, body: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 request on an open keep-alive socket; returns (status, body)."""
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n".encode() + body)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
    length = int({k.lower(): v for k, v in headers.items()}["content-length"])
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(head.split()[1]), rest


def test_deeply_nested_json_is_400_and_keeps_the_connection(tiny):
    model, tok = tiny
    deep = b"[" * 100_000 + b"]" * 100_000
    inside = json.dumps(chat_body(metadata="X")).replace('"X"', "[" * 5000 + "]" * 5000).encode()
    good = json.dumps(chat_body()).encode()
    with running_server(create_app(model, tok, "tiny")) as url:
        u = urlparse(url)
        with socket.create_connection((u.hostname, u.port), timeout=30) as sock:
            for bad in (deep, inside):
                status, body = _http(sock, "/v1/chat/completions", bad)
                assert status == 400, body
                err = json.loads(body)["error"]
                assert err["code"] == "invalid_json" and str(MAX_JSON_DEPTH) in err["message"]
            status, body = _http(sock, "/v1/chat/completions", good)  # the same connection still serves
            assert status == 200 and json.loads(body)["choices"][0]["message"]["content"]


# ------------------------------------------------------------------------------------------- case 10: tiny temperature
def test_tiny_temperature_is_greedy_on_chat_stream_and_completions(client):
    greedy = client.post("/v1/chat/completions", json=chat_body()).json()["choices"][0]["message"]["content"]
    r = client.post("/v1/chat/completions", json=chat_body(temperature=1e-300, seed=3))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == greedy
    streamed = client.post("/v1/chat/completions", json=chat_body(temperature=1e-300, stream=True))
    assert streamed.status_code == 200 and "server_error" not in streamed.text
    text = "".join(json.loads(e[6:])["choices"][0]["delta"].get("content", "")
                   for e in streamed.text.split("\n\n") if e.startswith("data: {"))
    assert text == greedy
    body = {"model": "tiny", "prompt": "the cat", "max_tokens": 6}
    want = client.post("/v1/completions", json={**body, "temperature": 0}).json()["choices"][0]["text"]
    r = client.post("/v1/completions", json={**body, "temperature": 1e-300})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == want


# ------------------------------------------------------------------------------------------- case 11: huge seed
def test_seed_must_fit_64_bits(client):
    assert_400(client.post("/v1/chat/completions", json=chat_body(temperature=1.0, seed=2**70)), "seed",
               "invalid_value")
    assert_400(client.post("/v1/completions", json={"model": "tiny", "prompt": "a", "seed": -(2**64)}), "seed")
    r = client.post("/v1/chat/completions", json=chat_body(temperature=1.0, seed=2**64 - 1))
    assert r.status_code == 200, r.text


# ------------------------------------------------------------------------------------------- case 12: lone surrogates
def test_lone_surrogate_is_400_naming_the_field(client):
    assert unencodable_text({"a": ["ok", "\ud800"]}) == "a[1]"
    body = b'{"model": "tiny", "messages": [{"role": "user", "content": "hi \\ud800"}], "max_tokens": 4}'
    err = assert_400(post_raw(client, "/v1/chat/completions", body), "messages[0].content", "invalid_value")
    assert "surrogate" in err["message"]
    body = b'{"model": "tiny", "prompt": ["fine", "\\udfff"], "max_tokens": 4}'
    assert_400(post_raw(client, "/v1/completions", body), "prompt[1]")
    body = b'{"model": "tiny", "prompt": "a", "stop": "\\ud83d", "stream": true}'
    assert_400(post_raw(client, "/v1/completions", body), "stop")
    # a well-formed pair of surrogates is one real character and passes
    body = b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}], "max_tokens": 2}'
    assert post_raw(client, "/v1/chat/completions", body).status_code == 200


# ---------------------------------------------------------------------------------------------- unknown fields
@pytest.mark.parametrize("path, extra, param", [
    ("/v1/chat/completions", {"functions": [{"name": "f"}]}, "functions"),  # the legacy form of tools
    ("/v1/chat/completions", {"response_format": {"type": "json_object", "grammar": "x"}}, "response_format.grammar"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x", "audio": {"id": "a"}}]},
     "messages[0].audio"),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"1": 5}}, "logit_bias"),
])
def test_unknown_fields_are_400_naming_the_field(client, path, extra, param):
    body = chat_body(**extra) if "chat" in path else {"model": "tiny", "max_tokens": 2, **extra}
    err = assert_400(client.post(path, json=body), param, "unknown_parameter")
    assert param.split(".")[-1].split("[")[0] in err["message"]


# ---------------------------------------------------------------------------------------------- raw prompts
def test_completions_treat_special_token_strings_as_text(client, tiny):
    _, tok = tiny
    prompt = "<|user|>hi<|end|><|assistant|>"
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 2})
    assert r.status_code == 200, r.text
    as_text = tok.encode(prompt, add_bos=True, allow_special=False)
    assert not set(as_text[1:]) & tok.special_ids  # encoded as ordinary bytes
    assert r.json()["usage"]["prompt_tokens"] == len(as_text) > len(tok.encode(prompt, add_bos=True))
    # token ids are the way to send control tokens on purpose
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": [tok.bos_id, tok.end_id], "max_tokens": 2})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 2
