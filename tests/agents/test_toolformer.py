"""Toolformer's filter on a stub loss with known values: keep iff L- - L+ >= tau, exactly."""

from __future__ import annotations

import pytest

from genforge.agents.toolformer import APICall, Candidate, augment, execute, filter_calls, propose_calculator_calls
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
