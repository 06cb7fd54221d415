"""Toolformer's filter on a stub loss with known values (keep iff L- - L+ >= tau, exactly), the kept-data texts,
and the inference loop that runs a call inside the decode."""

from __future__ import annotations

import re

import pytest

from genforge.agents.toolformer import (
    APICall,
    Candidate,
    augment,
    cut_window,
    execute,
    filter_calls,
    first_number,
    generate_with_tools,
    propose_calculator_calls,
    strip_calls,
)
from genforge.agents.tools import ToolRegistry, calculator

TEXT = "She had 12 + 5 = 17 apples and 40 pears."


def _reg() -> ToolRegistry:
    reg = ToolRegistry()
    reg.register(calculator)
    return reg


def test_proposals_sit_before_worked_results():
    cands = propose_calculator_calls([TEXT])
    assert cands == [Candidate(0, TEXT.index("17") - 1, APICall("calculator", "12 + 5"))]
    assert len(propose_calculator_calls([TEXT], n_random=3)) >= 2


@pytest.mark.parametrize("tau, kept", [(0.5, True), (1.0, True), (1.01, False)])
def test_filter_threshold_exact(tau: float, kept: bool):
    """Stub losses: no call 3.0, call without result 2.5, call with result 1.5 -> gain = 2.5 - 1.5 = 1.0."""
    cand = propose_calculator_calls([TEXT])[0]
    prefix = TEXT[:cand.position]
    table = {prefix: 3.0, prefix + " [calculator(12 + 5)]": 2.5, prefix + " [calculator(12 + 5) -> 17]": 1.5}
    seen = []

    def loss(p: str, cont: str) -> float:
        seen.append((p, cont))
        return table[p]
    res = filter_calls([TEXT], [cand], lambda c: execute(_reg(), c), loss, tau)
    (s,) = res.scored
    assert s.result == "17" and s.loss_plus == 1.5 and s.loss_minus == 2.5 and s.gain == 1.0
    assert s.kept is kept
    assert {c for _, c in seen} == {" 17 apples and 40 pears."}
    assert res.stats() == {"proposed": 1, "kept": int(kept), "kept_rate": float(kept), "failed_calls": 0}


def test_l_minus_takes_the_smaller_baseline():
    """If the call alone (no result) already helps, the result must beat *that* (L- = min)."""
    cand = Candidate(0, 8, APICall("calculator", "1 + 1"))
    losses = {TEXT[:8]: 3.0, TEXT[:8] + " [calculator(1 + 1)]": 1.0, TEXT[:8] + " [calculator(1 + 1) -> 2]": 0.8}
    res = filter_calls([TEXT], [cand], lambda c: execute(_reg(), c), lambda p, c: losses[p], tau=0.5)
    assert res.scored[0].loss_minus == 1.0 and not res.scored[0].kept


def test_failed_calls_are_never_kept_and_augment_inserts_right_to_left():
    texts = [TEXT, "x 2 * 3 = 6 y"]
    cands = [Candidate(0, 8, APICall("calculator", "1 / 0")), *propose_calculator_calls(texts)]
    res = filter_calls(texts, cands, lambda c: execute(_reg(), c), lambda p, c: 5.0 - p.count("->") * 2, tau=1.0)
    assert [s.kept for s in res.scored] == [False, True, True]
    assert res.stats()["failed_calls"] == 1
    assert augment(texts, res.kept) == ["She had 12 + 5 = [calculator(12 + 5) -> 17] 17 apples and 40 pears.",
                                        "x 2 * 3 = [calculator(2 * 3) -> 6] 6 y"]


def test_kept_data_holds_exactly_the_kept_calls():
    """A stub loss that rewards results only where the text goes on with them: the kept-data texts carry exactly
    the kept calls (each at its own position, with its result) and nothing else of the text changes."""
    texts = ["Ann has 12 + 5 = 17 pens and 3 * 4 = 11 cups.", "Then 7 - 2 = 5 birds flew off, 9 + 9 = 18 left."]
    cands = propose_calculator_calls(texts, n_random=2, seed=3)

    def loss(prefix: str, cont: str) -> float:  # low when the inserted result is the next number of the text
        m = re.search(r"-> (-?\d+)\]$", prefix)
        return 0.5 if m and cont.split()[0].strip(".,") == m[1] else 2.0

    res = filter_calls(texts, cands, lambda c: execute(_reg(), c), loss, tau=1.0, window=6)
    kept = {(s.candidate.text_id, s.candidate.call.input, s.result) for s in res.kept}
    assert kept == {(0, "12 + 5", "17"), (1, "7 - 2", "5"), (1, "9 + 9", "18")}  # "3 * 4 -> 12" is not "11"
    out = augment(texts, res.kept)
    span = re.compile(r"\[calculator\(([^)]*)\) -> ([^\]]*)\]")
    found = {(i, m[1], m[2]) for i, t in enumerate(out) for m in span.finditer(t)}
    assert found == kept
    assert [strip_calls(t) for t in out] == texts
    assert out[0] == "Ann has 12 + 5 = [calculator(12 + 5) -> 17] 17 pens and 3 * 4 = 11 cups."


def test_batched_losses_equal_single_ones():
    cands = propose_calculator_calls([TEXT], n_random=3, seed=1)
    single = filter_calls([TEXT], cands, lambda c: execute(_reg(), c), lambda p, c: len(p) % 7 + len(c) / 10, 1.0, 8)
    calls = []

    def many(pairs):
        calls.append(len(pairs))
        return [len(p) % 7 + len(c) / 10 for p, c in pairs]
    batched = filter_calls([TEXT], cands, lambda c: execute(_reg(), c), None, 1.0, 8, losses=many)
    assert [(s.loss_plus, s.loss_minus, s.kept) for s in single.scored] == \
        [(s.loss_plus, s.loss_minus, s.kept) for s in batched.scored]
    assert len(calls) == 1  # one batched call for every pair


def test_window_ends_at_a_word_boundary():
    assert cut_window(" 17 apples and 40 pears.", 6) == " 17 apples"
    assert cut_window(" 17 apples", 100) == " 17 apples" and cut_window(" 17 apples", None) == " 17 apples"


class ScriptedSession:
    """A decode session that emits a fixed token script and records what is appended (like DecodeSession)."""

    def __init__(self, script: list[int]):
        self.script, self.appended, self.tokens = list(script), [], []

    def step(self) -> int:
        t = self.script.pop(0)
        self.tokens.append(t)
        return t

    def append(self, tokens) -> None:
        self.appended.append(list(tokens))
        self.tokens += list(tokens)


def test_tool_loop_executes_the_call_inside_the_decode(tiny_tokenizer):
    tok = tiny_tokenizer
    script = tok.encode(" So 3 + 4 = [calculator(3 + 4) ->") + tok.encode(" 7. Then [calculator(2 * 5) ->") \
        + tok.encode(" 10.\nnext line") + [tok.eos_id]
    session = ScriptedSession(script)
    out = generate_with_tools(session, tok, _reg(), max_new_tokens=200, stop_ids=[tok.eos_id])
    assert out.text == " So 3 + 4 = [calculator(3 + 4) -> 7] 7. Then [calculator(2 * 5) -> 10] 10."
    assert out.calls == [(APICall("calculator", "3 + 4"), "7"), (APICall("calculator", "2 * 5"), "10")]
    assert session.appended == [tok.encode(" 7]"), tok.encode(" 10]")]  # fed into the same session, in order
    assert tok.decode(session.tokens).startswith(out.text)
    assert first_number(" [calculator(3 + 4) -> 7] 8.") == "8"  # the model's own number, not the tool's


def test_tool_loop_on_a_real_decode_session(tiny_model, tiny_tokenizer):
    """On the engine's session, the appended result becomes context exactly as if it had been in the prompt."""
    import torch

    from genforge.infer.engine import Engine
    from genforge.infer.sampling import SamplingParams

    tok, model = tiny_tokenizer, tiny_model.eval()
    prompt = tok.encode("Sums: 3 + 4 =", add_bos=True)
    session = Engine(model).session(prompt, SamplingParams(max_new_tokens=8))
    forced = tok.encode(" [calculator(3 + 4) ->")
    session.append(forced)  # as if the model had written the call
    out = generate_with_tools(session, tok, _reg(), max_new_tokens=3)
    assert not out.calls  # the open call was in the prompt side, not generated
    with torch.no_grad():
        full = model(torch.tensor([prompt + forced + out.tokens[:1]]))[0, -2].argmax().item()
    assert full == out.tokens[0]  # the cached prefix + append equals a full forward
