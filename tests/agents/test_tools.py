"""Tool registry: schemas from signatures, argument validation as one-line observations, built-in tools."""

from __future__ import annotations

import json

import pytest

from genforge.agents.knowledge import KnowledgeBase, multihop_questions, world_facts
from genforge.agents.tools import ToolRegistry, calculator, date_add, date_diff, default_registry
from genforge.errors import ConfigError
from genforge.world.facts import build_world


def _reg() -> ToolRegistry:
    reg = ToolRegistry()

    @reg.register
    def repeat(word: str, times: int, sep: str = " ", upper: bool = False) -> str:
        """Repeat a word."""
        out = sep.join([word] * times)
        return out.upper() if upper else out

    @reg.register
    def total(values: list[float]) -> str:
        """Sum numbers."""
        return str(sum(values))
    return reg


def test_schema_is_openai_function_shape():
    s = _reg().tools["repeat"].schema()
    assert s["type"] == "function"
    f = s["function"]
    assert f["name"] == "repeat" and f["description"] == "Repeat a word."
    assert f["parameters"]["properties"] == {"word": {"type": "string"}, "times": {"type": "integer"},
                                             "sep": {"type": "string"}, "upper": {"type": "boolean"}}
    assert f["parameters"]["required"] == ["word", "times"]
    assert _reg().tools["total"].parameters["properties"]["values"] == {"type": "array", "items": {"type": "number"}}


def test_valid_call_runs():
    reg = _reg()
    assert reg.call("repeat", '{"word": "ab", "times": 3}').text == "ab ab ab"
    assert reg.call("repeat", {"word": "ab", "times": 2, "sep": "-", "upper": True}).text == "AB-AB"
    assert reg.call("total", '{"values": [1, 2.5]}').text == "3.5"


@pytest.mark.parametrize("args, message", [
    ('{"word": "ab"}', "repeat: missing argument 'times'"),
    ('{"word": "ab", "times": 2, "tims": 3}', "repeat: unexpected argument 'tims' (did you mean 'times'?)"),
    ('{"word": "ab", "times": "2"}', "repeat: argument 'times' must be integer, got string \"2\""),
    ('{"word": "ab", "times": 2.5}', "repeat: argument 'times' must be integer, got number 2.5"),
    ('{"word": "ab", "times": true}', "repeat: argument 'times' must be integer, got boolean true"),
    ('{"word": "ab", "times": 2', "repeat: arguments are not valid JSON"),
    ('["ab", 2]', "repeat: arguments must be a JSON object, got array"),
])
def test_bad_arguments_are_one_line_observations(args: str, message: str):
    r = _reg().call("repeat", args)
    assert not r.ok and r.text.startswith("error: " + message)
    assert "\n" not in r.text


def test_wrong_item_type_and_unknown_tool():
    reg = _reg()
    assert "must be array" in reg.call("total", '{"values": [1, "x"]}').text
    r = reg.call("repat", "{}")
    assert r.text == "error: unknown tool 'repat'; did you mean 'repeat'?"


def test_tool_exception_is_an_observation():
    reg = ToolRegistry()
    reg.register(calculator)
    r = reg.call("calculator", json.dumps({"expression": "1/0"}))
    assert not r.ok and r.text == "error: calculator: division by zero"


def test_untyped_tool_refused():
    def f(x):  # no type hint: no schema
        return x
    with pytest.raises(ConfigError, match="type hint"):
        ToolRegistry().register(f)


@pytest.mark.parametrize("expr, want", [("2 + 3 * 4", "14"), ("(817 + 145) - 396", "566"), ("7 / 2", "3.5"),
                                        ("2^10", "1024"), ("sqrt(16) + abs(-2)", "6"), ("-3 // 2", "-2")])
def test_calculator(expr: str, want: str):
    assert calculator(expr) == want


@pytest.mark.parametrize("expr", ["__import__('os').system('id')", "open('/etc/passwd')", "9 ** 9 ** 9",
                                  "(lambda: 1)()", "[1] * 10", "x + 1"])
def test_calculator_refuses_non_arithmetic(expr: str):
    with pytest.raises(ValueError):
        calculator(expr)


def test_dates():
    assert date_add("January 30, 2024", 30) == "February 29, 2024"
    assert date_add("2023-03-01", -1) == "February 28, 2023"
    assert date_diff("March 1, 2024", "2024-03-31") == "30"
    r = default_registry(include=("date_add",)).call("date_add", '{"date": "Smarch 1, 2024", "days": 1}')
    assert not r.ok and "cannot read date" in r.text


def test_search_finds_both_hops():
    w = build_world(0, 40, 8, 12)
    kb = KnowledgeBase.from_world(w, [{"fact": "In 2026, Ada Quill discovered a comet and named it Comet X-1."}])
    assert len(kb.facts) == len(world_facts(w)) + 1
    for q in multihop_questions(w, 10):
        first = kb.search(q["question"], k=3)
        assert q["hops"][0] in first
        assert kb.search(q["bridge"] + " lives in", k=3)[0] == q["hops"][1]
    assert "Comet X-1" in kb.search("comet discovered", k=1)[0]


def test_keyed_search_puts_the_asked_relation_first():
    """The look-up 'the sibling of X' returns X's sibling fact first, not the fact naming X as another's sibling
    (both hold the same words; whole-sentence BM25 ranked the wrong one first for about a third of the questions)."""
    w = build_world(0, 60, 8, 16)
    kb = KnowledgeBase.from_world(w)
    qs = multihop_questions(w, 40)
    assert {q["question"].split()[5] for q in qs} == {"sibling", "friend", "maker"}
    for q in qs:
        look_up = q["question"].replace("In which town does ", "").replace(" live?", "")
        assert kb.search(look_up, k=1) == [q["hops"][0]]
        assert kb.search(f"{q['bridge']} lives in", k=1) == [q["hops"][1]]
    whole = KnowledgeBase(world_facts(w))  # unkeyed: the reverse sibling fact ties and often wins
    assert any(whole.search(q["question"].split("does ")[1][:-6], k=1) != [q["hops"][0]] for q in qs)


def test_keys_must_match_facts():
    with pytest.raises(Exception, match="one key per fact"):
        KnowledgeBase(["a b.", "c d."], keys=["a"])


def test_default_registry_python_tool_runs_in_sandbox():
    reg = default_registry(include=("python",))
    assert reg.call("python", {"code": "print(sum(range(10)))"}).text == "45"
