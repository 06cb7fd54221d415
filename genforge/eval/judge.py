"""LLM-as-judge: pairwise comparison in both orders, with position and length bias measured.

A judge is anything with `complete(prompts) -> texts`: a genforge model (`ModelJudge`) or any
OpenAI-compatible server (`EndpointJudge`: a plain POST to /v1/chat/completions). Each pair is
judged twice with the responses swapped; a verdict counts only if it survives the swap, because
LLM judges favour a position (Zheng et al. 2023, "Judging LLM-as-a-Judge", sec. 3.3) and longer
answers ("verbosity bias", same section). Both biases are measured, not assumed away.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from genforge.errors import GenforgeError
from genforge.extras import require

if TYPE_CHECKING:  # torch stays unimported until a model is used
    from genforge.eval.lm import LM


class Judge(Protocol):
    def complete(self, prompts: list[str]) -> list[str]:
        """One reply per prompt (greedy)."""
        ...


class ModelJudge:
    """A genforge model (behind the `LM` interface) as the judge."""

    def __init__(self, lm: LM, max_new_tokens: int = 8):
        self.lm, self.max_new_tokens = lm, max_new_tokens

    def complete(self, prompts: list[str]) -> list[str]:
        outs = self.lm.generate(prompts, max_new_tokens=self.max_new_tokens, temperature=0.0, stop=("\n",), n=1)
        return [o[0] for o in outs]


class LoglikJudge:
    """A forced-choice judge: the verdict is the likelier of "A" and "B" after the judge prompt (no generation).

    A model too small to follow "Reply with one letter" writes anything but a verdict (a generating judge then has
    nothing to parse); reading the two letters' log-probabilities always gives one, as evaluations of small models
    score options by likelihood rather than by parsing text (Brown et al. 2020; lm-evaluation-harness). `margins`
    keeps log P(A) - log P(B) of each prompt of the last call, for position-calibrated verdicts
    (`calibrated_agreement`)."""

    def __init__(self, lm: LM):
        self.lm, self.margins = lm, []

    def complete(self, prompts: list[str]) -> list[str]:
        # a chat model's answer starts right after its assistant tag, a base model's after "Verdict:" and a space
        sep = "" if getattr(self.lm, "chat", False) else " "
        ll = [x[0] for x in self.lm.loglikelihood([(p, f"{sep}{c}") for p in prompts for c in "AB"])]
        self.margins = [ll[2 * i] - ll[2 * i + 1] for i in range(len(prompts))]
        return ["A" if m >= 0 else "B" for m in self.margins]


def calibrated_winners(margins: Sequence[float]) -> list[str]:
    """Position-calibrated verdicts from a `LoglikJudge`'s margins over `pairwise`'s prompts (each pair in both
    orders): response 1 wins when its log-odds over response 2, summed over the two orders, is positive (Wang et al.
    2023, "Large language models are not fair evaluators": balanced position calibration). A judge that only
    prefers a position gets the same margin in both orders, which cancels; "tie" when it cancels exactly."""
    out = []
    for k in range(len(margins) // 2):
        s = margins[2 * k] - margins[2 * k + 1]  # forward: A is response 1; reverse: B is response 1
        out.append("1" if s > 0 else "2" if s < 0 else "tie")
    return out


class EndpointJudge:
    """Any OpenAI-compatible chat endpoint (genforge serve, vLLM, llama.cpp, OpenAI itself).

    base_url: e.g. http://localhost:8000 or http://localhost:8000/v1. Every request has a hard
    `timeout` (seconds) so an unreachable or stalled server fails fast with a `GenforgeError`.
    """

    def __init__(self, base_url: str, model: str = "genforge", api_key: str | None = None, timeout: float = 30.0,
                 max_tokens: int = 16):
        base = base_url.rstrip("/")
        self.url = base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")
        self.model, self.api_key, self.timeout, self.max_tokens = model, api_key, timeout, max_tokens

    def _post(self, client, prompt: str) -> str:
        httpx = require("httpx", "eval")

        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                "temperature": 0.0, "max_tokens": self.max_tokens}
        try:
            r = client.post(self.url, json=body)
        except httpx.TimeoutException:
            raise GenforgeError(f"judge endpoint {self.url} did not answer within {self.timeout:g}s "
                                "(raise the judge timeout or check the server)") from None
        except httpx.HTTPError as e:
            raise GenforgeError(f"judge endpoint {self.url} is unreachable ({type(e).__name__}: {e}); "
                                f"is the server running? (timeout {self.timeout:g}s)") from None
        if r.status_code != 200:
            raise GenforgeError(f"judge endpoint {self.url} answered HTTP {r.status_code}: {r.text[:200]}")
        try:
            return r.json()["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise GenforgeError(f"judge endpoint {self.url} sent a reply that is not an OpenAI chat completion: "
                                f"{r.text[:200]}") from None

    def complete(self, prompts: list[str]) -> list[str]:
        httpx = require("httpx", "eval")

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        with httpx.Client(timeout=self.timeout, headers=headers) as client:
            return [self._post(client, p) for p in prompts]


PAIRWISE_TEMPLATE = (
    "You are judging two responses to the same question. Pick the one that is more correct and helpful.\n\n"
    "Question: {question}\n\nResponse A: {a}\n\nResponse B: {b}\n\n"
    "Which response is better? Reply with one letter, A or B.\nVerdict:"
)

_VERDICT = re.compile(r"\b(?:response\s+)?([AB])\b")


def parse_verdict(text: str) -> str | None:
    """'A' or 'B' (the first one the judge names), or None if it named neither."""
    m = _VERDICT.search(text.strip())
    return m.group(1) if m else None


@dataclass
class Pair:
    """A question and two responses to compare; `1` and `2` name them independent of position."""

    question: str
    response_1: str
    response_2: str


def pairwise(judge: Judge, pairs: Sequence[Pair], template: str = PAIRWISE_TEMPLATE) -> dict:
    """Judge each pair in both orders and measure how much the verdicts follow position and length.

    Returns:
      win_rate_1: share of pairs response_1 wins (a tie or an order-dependent verdict counts 0.5);
      consistency: share of pairs with the same winner in both orders (1.0 = no position effect);
      first_position_rate: share of valid verdicts naming position A (0.5 = unbiased on balance);
      bias_first / bias_second: share of pairs where the judge named A (or B) in both orders, i.e.
        the verdict followed the position, not the content;
      longer_preferred: share of valid verdicts (between responses of different length) picking
        the longer one;
      invalid_rate: share of verdicts naming neither;
      items: per-pair verdicts.
    """
    prompts = []
    for p in pairs:
        prompts.append(template.format(question=p.question, a=p.response_1, b=p.response_2))
        prompts.append(template.format(question=p.question, a=p.response_2, b=p.response_1))
    replies = judge.complete(prompts)
    items, valid, first, longer, length_decided, invalid = [], 0, 0, 0, 0, 0
    for k, p in enumerate(pairs):
        v_fwd, v_rev = parse_verdict(replies[2 * k]), parse_verdict(replies[2 * k + 1])
        # map positions back to response identities: in the reversed order A shows response_2
        w_fwd = {"A": "1", "B": "2"}.get(v_fwd or "")
        w_rev = {"A": "2", "B": "1"}.get(v_rev or "")
        winner = w_fwd if w_fwd is not None and w_fwd == w_rev else "tie"
        items.append({"question": p.question, "verdicts": [v_fwd, v_rev], "winner": winner,
                      "replies": [replies[2 * k], replies[2 * k + 1]]})
        longer_id = None if len(p.response_1) == len(p.response_2) else (
            "1" if len(p.response_1) > len(p.response_2) else "2")
        for v, w in ((v_fwd, w_fwd), (v_rev, w_rev)):
            if v is None:
                invalid += 1
                continue
            valid += 1
            first += v == "A"
            if longer_id is not None:
                length_decided += 1
                longer += w == longer_id
    n = max(len(pairs), 1)
    return {
        "n": len(pairs),
        "win_rate_1": sum(1.0 if i["winner"] == "1" else 0.5 if i["winner"] == "tie" else 0.0 for i in items) / n,
        "consistency": sum(i["winner"] != "tie" for i in items) / n,
        "first_position_rate": first / valid if valid else float("nan"),
        "bias_first": sum(i["verdicts"] == ["A", "A"] for i in items) / n,
        "bias_second": sum(i["verdicts"] == ["B", "B"] for i in items) / n,
        "longer_preferred": longer / length_decided if length_decided else float("nan"),
        "invalid_rate": invalid / max(2 * len(pairs), 1),
        "items": items,
    }


PADDING = (" To be thorough, I have considered the question carefully from several angles before giving this "
           "answer, and I am confident that it is complete and correct.")


def verbosity_probe(judge: Judge, qa: Sequence[tuple[str, str]], padding: str = PADDING) -> dict:
    """Length bias by construction: each answer against itself plus content-free padding.

    The two responses say the same thing, so an unbiased judge splits evenly (padded_win_rate
    0.5, counting order-dependent verdicts as ties); above 0.5 the judge rewards length itself.
    """
    res = pairwise(judge, [Pair(q, a + padding, a) for q, a in qa])
    return {"padded_win_rate": res["win_rate_1"], "longer_preferred": res["longer_preferred"],
            "consistency": res["consistency"], "n": res["n"]}
