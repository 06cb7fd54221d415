"""Structured output through the official `openai` client: response_format json_object / json_schema (strict),
regex and choice extensions, enforced while decoding; what cannot be honoured is a 400.

The served model is a random ~0.1M-parameter GPT sampled at temperature 1: every reply that parses and
validates does so because the grammar made it."""

from __future__ import annotations

import json
import re

import pytest

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")

from genforge.serve.app import create_app  # noqa: E402
from genforge.serve.testing import running_server, tiny_model_and_tokenizer  # noqa: E402

PERSON = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "town": {"enum": ["Brightwater", "Millford"]}, "pets": {"type": "array", "items": {"type": "string"}},
    "admin": {"type": "boolean"}},
    "required": ["name", "age", "town", "pets", "admin"], "additionalProperties": False}
ASK = [{"role": "user", "content": "describe a person"}]


@pytest.fixture(scope="module")
def client():
    model, tok = tiny_model_and_tokenizer(max_seq_len=1024)
    with running_server(create_app(model, tok, "tiny")) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def _schema_format(strict: bool = True) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": strict}}


def test_json_schema_strict_validates_over_many_samples(client):
    """40 replies at temperature 1 (8 requests x n=5, rows decoding side by side): all parse and validate."""
    replies = []
    for seed in range(8):
        r = client.chat.completions.create(model="tiny", messages=ASK, response_format=_schema_format(),
                                           temperature=1.0, n=5, seed=100 * seed, max_tokens=200)
        replies += [c.message.content for c in r.choices]
        assert all(c.finish_reason == "stop" for c in r.choices)
    assert len(replies) == 40 and len(set(replies)) > 30  # sampled, not one memorised answer
    for text in replies:
        jsonschema.validate(json.loads(text), PERSON)


def test_json_schema_streamed(client):
    for seed in range(3):
        chunks = list(client.chat.completions.create(model="tiny", messages=ASK, response_format=_schema_format(False),
                                                     temperature=1.0, seed=seed, max_tokens=200, stream=True))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        jsonschema.validate(json.loads(text), PERSON)


def test_json_object(client):
    r = client.chat.completions.create(model="tiny", messages=ASK, response_format={"type": "json_object"},
                                       temperature=1.0, n=8, seed=0, max_tokens=120)
    assert all(isinstance(json.loads(c.message.content), dict) for c in r.choices)


def test_regex_and_choice_extensions(client):
    r = client.chat.completions.create(model="tiny", messages=ASK, temperature=1.0, n=6, seed=1, max_tokens=30,
                                       extra_body={"response_format": {"type": "regex",
                                                                       "regex": r"[A-Z][a-z]{2,8} is [0-9]{1,2}"}})
    assert all(re.fullmatch(r"[A-Z][a-z]{2,8} is [0-9]{1,2}", c.message.content) for c in r.choices)
    r = client.chat.completions.create(model="tiny", messages=ASK, temperature=1.0, n=6, seed=2, max_tokens=30,
                                       extra_body={"response_format": {"type": "choice",
                                                                       "choice": ["yes", "no", "maybe later"]}})
    assert {c.message.content for c in r.choices} <= {"yes", "no", "maybe later"}
    done = client.completions.create(model="tiny", prompt="The town is", max_tokens=20, temperature=1.0, seed=3,
                                     extra_body={"response_format": {"type": "choice",
                                                                     "choice": ["Brightwater", "Millford"]}})
    assert done.choices[0].text in ("Brightwater", "Millford")


@pytest.mark.parametrize("fmt, param, words", [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object",
                                                                   "propertyNames": {"pattern": "^a"}}}},
     "response_format", "propertyNames"),  # a keyword the engine does not implement: refused, not ignored
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 12}}},
     "response_format.json_schema.schema", "not a valid JSON schema"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "response_format.json_schema", "needs"),
    ({"type": "regex", "regex": "(unclosed"}, "response_format", "cannot be enforced"),
    ({"type": "regex"}, "response_format.regex", "needs"),
])
def test_what_cannot_be_honoured_is_a_400(client, fmt, param, words):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=ASK, max_tokens=20, extra_body={"response_format": fmt})
    assert e.value.body["param"] == param and words in e.value.body["message"], e.value.body


def test_tools_and_response_format_together_is_a_400(client):
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=ASK, tools=[tool],
                                       response_format={"type": "json_object"})
    assert e.value.body["param"] == "response_format"
