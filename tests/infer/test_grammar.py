"""Grammar-constrained decoding (llguidance behind a LogitsProcessor): masks, termination, validity."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

from genforge.errors import ConfigError  # noqa: E402
from genforge.infer.engine import Engine  # noqa: E402
from genforge.infer.grammar import (  # noqa: E402
    GrammarLogitsProcessor,
    bounded_schema,
    check_grammar,
    choice_grammar,
    json_object_schema,
    json_schema_grammar,
    min_bytes,
    regex_grammar,
    token_bytes,
)
from genforge.infer.sampling import SamplingParams  # noqa: E402
from genforge.serve.testing import tiny_model_and_tokenizer  # noqa: E402

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"}, "unit": {"enum": ["C", "F"]},
    "tags": {"type": "array", "items": {"type": "string"}}, "ok": {"type": "boolean"}, "x": {"type": "number"},
    "nested": {"type": "object", "properties": {"k": {"type": "string", "maxLength": 3}}, "required": ["k"]}},
    "required": ["name", "age", "unit", "tags", "ok", "x", "nested"]}


@pytest.fixture(scope="module")
def tiny():
    return tiny_model_and_tokenizer(max_seq_len=512)


def test_token_bytes_round_trip(tiny):
    _, tok = tiny
    tb = token_bytes(tok)
    assert all(tb[i] is None for i in tok.special_ids)
    ids = tok.encode("héllo wörld, 12 + 30 = 42!")
    assert b"".join(tb[i] for i in ids) == "héllo wörld, 12 + 30 = 42!".encode()


def test_bounded_schema_only_narrows():
    b = bounded_schema(SCHEMA, 100)
    assert b["properties"]["name"]["maxLength"] >= 4 and b["properties"]["nested"]["properties"]["k"]["maxLength"] == 3
    assert b["properties"]["tags"]["maxItems"] == 4 and b["additionalProperties"] is False
    assert SCHEMA["properties"]["name"] == {"type": "string"}  # the caller's schema is untouched
    shortest = {"name": "", "age": 0, "unit": "C", "tags": [], "ok": True, "x": 0, "nested": {"k": ""}}
    # the shortest reply's size, counted a little generously (a separator per property)
    assert len(json.dumps(shortest)) <= min_bytes(b) <= len(json.dumps(shortest)) + 2 * len(shortest)


def _sample(proc: GrammarLogitsProcessor, tok, n: int, max_tokens: int, seed: int = 0) -> list[str]:
    """n replies from random logits at temperature 1, each constrained by a fresh copy of proc."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p, ids = proc.fork(), [tok.bos_id]
        for _ in range(max_tokens):
            scores = p(torch.tensor([ids]), torch.randn(1, tok.vocab_size, generator=gen))
            t = int(torch.multinomial(torch.softmax(scores[0], -1), 1, generator=gen))
            if t in (tok.end_id, tok.eos_id):
                break
            ids.append(t)
        out.append(tok.decode(ids[1:]))
    return out


@pytest.mark.parametrize("max_tokens", [100, 200])
def test_random_sampling_always_validates(tiny, max_tokens):
    _, tok = tiny
    b = bounded_schema(SCHEMA, max_tokens)
    proc = GrammarLogitsProcessor(json_schema_grammar(b), tok, 1, stop_ids=[tok.end_id, tok.eos_id],
                                  max_tokens=max_tokens, reserve=min_bytes(b))
    for text in _sample(proc, tok, 25, max_tokens):
        jsonschema.validate(json.loads(text), SCHEMA)
    obj = json_object_schema(60)
    proc = GrammarLogitsProcessor(json_schema_grammar(obj), tok, 1, max_tokens=60, reserve=min_bytes(obj))
    assert all(isinstance(json.loads(t), dict) for t in _sample(proc, tok, 10, 60, seed=1))


def test_regex_and_choice(tiny):
    _, tok = tiny
    rx = GrammarLogitsProcessor(regex_grammar(r"(yes|no), [0-9]{2}"), tok, 1, max_tokens=20)
    assert all(__import__("re").fullmatch(r"(yes|no), [0-9]{2}", t) for t in _sample(rx, tok, 10, 20))
    ch = GrammarLogitsProcessor(choice_grammar(["Brightwater", "Millford", "the park"]), tok, 1, max_tokens=20)
    assert set(_sample(ch, tok, 12, 20)) <= {"Brightwater", "Millford", "the park"}


def test_engine_generate_honours_the_processor(tiny):
    """Through the engine's batched generate (static batches): every row follows the grammar."""
    model, tok = tiny
    prompt = tok.encode("the answer is", add_bos=True)
    proc = GrammarLogitsProcessor(regex_grammar(r"[0-9]{1,3}"), tok, len(prompt), stop_ids=[tok.eos_id],
                                  max_tokens=10)
    rows = Engine(model).generate([prompt] * 3, SamplingParams(max_new_tokens=10, temperature=1.0, seed=3),
                                  stop_ids=[tok.eos_id, tok.end_id], logits_processors=[proc])
    assert all(__import__("re").fullmatch(r"[0-9]{1,3}", tok.decode(r)) for r in rows)


def test_unsupported_keywords_are_named(tiny):
    _, tok = tiny
    with pytest.raises(ConfigError, match="propertyNames"):
        check_grammar(json_schema_grammar({"type": "object", "propertyNames": {"maxLength": 2}}), tok)
