"""The official `openai` client against a real server (uvicorn on 127.0.0.1, a free port, a background thread)."""

from __future__ import annotations

import pytest

openai = pytest.importorskip("openai")

from genforge.serve.app import create_app  # noqa: E402
from genforge.serve.testing import running_server, tiny_model_and_tokenizer  # noqa: E402

MESSAGES = [{"role": "system", "content": "you are terse"}, {"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def client():
    model, tok = tiny_model_and_tokenizer(max_seq_len=128)
    with running_server(create_app(model, tok, "tiny")) as url:
        # max_retries=0: a 429/503 must surface here instead of being retried away
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)


def test_models_list(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"


def test_chat_completion(client):
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=10, temperature=0)
    assert r.object == "chat.completion" and r.model == "tiny"
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 10 and r.usage.total_tokens == r.usage.prompt_tokens + 10
    two = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=6, temperature=1.0, n=2,
                                         seed=3)
    assert [c.index for c in two.choices] == [0, 1] and two.usage.completion_tokens == 12


def test_chat_streaming_equals_non_streamed(client):
    full = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0)
    stream = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12


def test_text_completion_and_streaming(client):
    r = client.completions.create(model="tiny", prompt="the cat", max_tokens=8, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text and r.usage.completion_tokens == 8
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="the cat", max_tokens=8, temperature=0, stream=True))
    assert streamed == r.choices[0].text
    stop = r.choices[0].text[2:4]
    cut = client.completions.create(model="tiny", prompt="the cat", max_tokens=8, temperature=0, stop=[stop])
    assert cut.choices[0].text == r.choices[0].text[:r.choices[0].text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_errors_raise_bad_request(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=5)
    assert e.value.status_code == 400 and e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "cat " * 300}])
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=[])
