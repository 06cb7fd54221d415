"""Function calling through the official `openai` client: tools, tool_choice, tool messages, streamed and not.

The served model is a random ~0.1M-parameter GPT: whatever it calls, it calls because the grammar made it,
so these tests check the constraint as much as the API shape.
"""

from __future__ import annotations

import json

import pytest
import torch

openai = pytest.importorskip("openai")
pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")

from genforge.serve.app import create_app  # noqa: E402
from genforge.serve.testing import running_server, tiny_model_and_tokenizer  # noqa: E402
from genforge.serve.tools import ToolPlan, constraint, parse_reply  # noqa: E402

CALC = {"type": "function", "function": {
    "name": "calculator", "description": "Evaluate arithmetic.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"],
                   "additionalProperties": False}}}
WEATHER = {"type": "function", "function": {
    "name": "weather", "description": "Weather in a town.",
    "parameters": {"type": "object", "properties": {"town": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["C", "F"]},
                                                    "days": {"type": "integer"}},
                   "required": ["town", "unit", "days"]}}}
ASK = [{"role": "user", "content": "what is 6 times 7?"}]


@pytest.fixture(scope="module")
def client():
    model, tok = tiny_model_and_tokenizer(max_seq_len=1024)
    with running_server(create_app(model, tok, "tiny")) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def _args(call) -> dict:
    return json.loads(call.function.arguments)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "weather"}}])
def test_forced_call_is_parseable_and_fits_the_schema(client, choice):
    r = client.chat.completions.create(model="tiny", messages=ASK, tools=[CALC, WEATHER], tool_choice=choice,
                                       max_tokens=200, temperature=0)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None
    (call,) = c.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    if isinstance(choice, dict):
        assert call.function.name == "weather"
        args = _args(call)
        assert set(args) == {"town", "unit", "days"} and args["unit"] in ("C", "F") and isinstance(args["days"], int)
    else:
        assert call.function.name in ("calculator", "weather")


def test_forced_call_streamed_equals_non_streamed(client):
    kw = dict(model="tiny", messages=ASK, tools=[CALC], tool_choice="required", max_tokens=200, temperature=0)
    full = client.chat.completions.create(**kw).choices[0].message.tool_calls[0]
    chunks = list(client.chat.completions.create(**kw, stream=True))
    deltas = [tc for ch in chunks for tc in (ch.choices[0].delta.tool_calls or [])]
    assert deltas[0].id.startswith("call_") and deltas[0].function.name == "calculator"
    assert "".join(d.function.arguments or "" for d in deltas) == full.function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert all(not (ch.choices[0].delta.content or "") for ch in chunks)  # nothing leaks out as text


def test_none_and_auto_answer_in_text_from_a_model_that_never_calls(client):
    for choice in ("none", "auto"):
        r = client.chat.completions.create(model="tiny", messages=ASK, tools=[CALC], tool_choice=choice,
                                           max_tokens=12, temperature=0)
        c = r.choices[0]
        assert c.message.content and not c.message.tool_calls and c.finish_reason == "length"


def test_tool_result_round_trip(client):
    """The client sends the call and its result back; the server renders both and answers."""
    call = {"id": "call_1", "type": "function",
            "function": {"name": "calculator", "arguments": '{"expression": "6*7"}'}}
    msgs = ASK + [{"role": "assistant", "content": None, "tool_calls": [call]},
                  {"role": "tool", "tool_call_id": "call_1", "content": "42"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, tools=[CALC], max_tokens=8, temperature=0)
    assert r.choices[0].message.content
    plain = client.chat.completions.create(model="tiny", messages=ASK, tools=[CALC], max_tokens=8, temperature=0)
    assert r.usage.prompt_tokens > plain.usage.prompt_tokens  # the call and its result are in the prompt


@pytest.mark.parametrize("kw, param", [
    ({"tool_choice": "required"}, "tool_choice"),  # no tools
    ({"tools": [CALC], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [CALC, CALC]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]},
     "tools[0].function.parameters"),
    ({"tools": [CALC], "messages": ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "calculator", "arguments": "{expression: 6*7"}}]}]},
     "messages[1].tool_calls[0].function.arguments"),
    ({"tools": [CALC], "messages": ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "calculator", "arguments": '{"expr": "6*7"}'}}]}]},
     "messages[1].tool_calls[0].function.arguments"),
    ({"messages": ASK + [{"role": "tool", "tool_call_id": "call_9", "content": "42"}]}, "messages[1].tool_call_id"),
])
def test_bad_tool_requests_are_clean_400s(client, kw, param):
    body = {"model": "tiny", "messages": ASK, "max_tokens": 4, **kw}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**body)
    assert e.value.status_code == 400 and e.value.body["param"] == param, e.value.body


def test_constraint_masks_all_but_the_grammar():
    """Unit check of the processor on a hand-made state: after `<tool_call>{"name": "` only tool names continue."""
    model, tok = tiny_model_and_tokenizer()
    prompt = tok.encode("hi", add_bos=True)
    (proc,) = constraint(ToolPlan([CALC, WEATHER], [CALC, WEATHER], forced=True), tok, len(prompt), True, 200)

    def allowed(text: str) -> list[int]:
        out = proc.fork()(torch.tensor([prompt + tok.encode(text)]), torch.zeros(1, tok.vocab_size))
        return torch.nonzero(out[0] > float("-inf")).flatten().tolist()

    ok = allowed('<tool_call>{"name": "')
    assert ok and all("calculator".startswith(tok.decode([i])) or "weather".startswith(tok.decode([i])) for i in ok)
    assert tok.end_id not in ok
    done = allowed('<tool_call>{"name": "calculator", "arguments": {"expression": "1"}}</tool_call>')
    assert done == sorted([tok.end_id, tok.eos_id])  # complete: only the end of the turn
    # auto: free text until the call starts, then the grammar
    (auto,) = constraint(ToolPlan([CALC], [CALC], forced=False), tok, len(prompt), True, 200)
    free = auto(torch.tensor([prompt + tok.encode("sure")]), torch.zeros(1, tok.vocab_size))
    assert bool((free[0] == 0).all())
    started = auto.fork()(torch.tensor([prompt + tok.encode('sure <tool_call>{"na')]), torch.zeros(1, tok.vocab_size))
    assert 0 < int((started[0] == 0).sum()) < 5  # only what continues `"name"`


def test_unenforceable_tool_schema_is_a_400(client):
    bad = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
        "propertyNames": {"maxLength": 3}}}}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=ASK, tools=[bad], tool_choice="required", max_tokens=40)
    assert e.value.body["param"] == "tools" and "propertyNames" in e.value.body["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_sampled_calls_always_fit_the_schema(client, stream):
    """Temperature 1 on a random model: every call parses and validates (jsonschema), streamed or not."""
    import jsonschema

    schema = WEATHER["function"]["parameters"]
    for seed in range(6):
        # 160 tokens: this tiny vocabulary spends about one token per character, and the shortest call is ~90
        kw = dict(model="tiny", messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=160,
                  temperature=1.0, seed=seed)
        if stream:
            chunks = list(client.chat.completions.create(**kw, stream=True))
            deltas = [tc for ch in chunks for tc in (ch.choices[0].delta.tool_calls or [])]
            args = "".join(d.function.arguments or "" for d in deltas)
            assert chunks[-1].choices[0].finish_reason == "tool_calls"
        else:
            c = client.chat.completions.create(**kw).choices[0]
            assert c.finish_reason == "tool_calls"
            args = c.message.tool_calls[0].function.arguments
        jsonschema.validate(json.loads(args), schema)


def test_parse_reply_rejects_calls_that_do_not_fit():
    plan = ToolPlan([CALC], [CALC], forced=False)
    ok = '<tool_call>{"name": "calculator", "arguments": {"expression": "2+2"}}</tool_call>'
    content, calls = parse_reply("let me see " + ok, plan)
    assert content == "let me see" and calls[0]["function"] == {"name": "calculator",
                                                               "arguments": '{"expression": "2+2"}'}
    for bad in ('<tool_call>{"name": "calculator", "arguments": {"expression": 4}}</tool_call>',  # wrong type
                '<tool_call>{"name": "calc", "arguments": {}}</tool_call>',  # unknown tool
                '<tool_call>{"name": "calculator", "arguments": {"expression": "2"</tool_call>'):  # broken JSON
        assert parse_reply(bad, plan) == (bad, [])
