"""Toolformer-style tool data (Schick et al. 2023, arXiv:2302.04761), the filtering step.

Given texts and candidate API calls at positions inside them, execute each call and keep it only if
inserting the call *with its result* makes the following text easier to predict (Toolformer sec. 2):

    L+ = loss(prefix + " [tool(input) -> result]", continuation)
    L- = min(loss(prefix, continuation), loss(prefix + " [tool(input)]", continuation))
    keep  iff  L- - L+ >= tau

`loss(prefix, continuation) -> float` is any callable (mean negative log-likelihood per token of the
continuation given the prefix): a genforge model through `loss_from_eval_lm`, or a stub with known
losses in tests. The paper weights the continuation's tokens by distance; here the caller chooses the
continuation window (`window` characters, to the end of a word), which is the same idea with a hard cut.
Kept calls are inserted into the texts (`augment`) to make fine-tuning data; fine-tuning is the trainer's job.

At inference (`generate_with_tools`) the model's own call is executed as soon as it writes "[tool(input) ->":
the result and "]" are appended to the same decode session (`DecodeSession.append`, no re-prefill) and
decoding goes on, as the paper's "interrupt decoding at ->" does.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from genforge.agents.tools import ToolRegistry

_STEP = re.compile(r"(\d+) ([+\-*/]) (\d+) = (\d+)")


@dataclass(frozen=True)
class APICall:
    tool: str
    input: str

    def render(self, result: str | None = None) -> str:
        """' [tool(input)]' or ' [tool(input) -> result]' (leading space: it sits between words)."""
        return f" [{self.tool}({self.input})]" if result is None else f" [{self.tool}({self.input}) -> {result}]"


@dataclass(frozen=True)
class Candidate:
    text_id: int
    position: int  # character offset: the call goes before text[position:]
    call: APICall


@dataclass
class Scored:
    candidate: Candidate
    result: str
    loss_plus: float
    loss_minus: float
    kept: bool

    @property
    def gain(self) -> float:
        return self.loss_minus - self.loss_plus


@dataclass
class FilterResult:
    scored: list[Scored] = field(default_factory=list)

    @property
    def kept(self) -> list[Scored]:
        return [s for s in self.scored if s.kept]

    def stats(self) -> dict:
        n, k = len(self.scored), len(self.kept)
        return {"proposed": n, "kept": k, "kept_rate": k / n if n else 0.0,
                "failed_calls": sum(s.result.startswith("error:") for s in self.scored)}


def propose_calculator_calls(texts: list[str], n_random: int = 0, seed: int = 0) -> list[Candidate]:
    """Candidates: a calculator call before every worked result ("12 + 5 = |17"), plus `n_random` calls
    per text at random word boundaries with a random pair of the text's numbers (calls that should
    *not* survive the filter)."""
    rng = random.Random(f"toolformer-{seed}")
    out = []
    for i, text in enumerate(texts):
        for m in _STEP.finditer(text):
            out.append(Candidate(i, m.start(4) - 1, APICall("calculator", f"{m[1]} {m[2]} {m[3]}")))
        nums = re.findall(r"\d+", text)
        spaces = [m.start() for m in re.finditer(r" ", text)]
        for _ in range(n_random if len(nums) >= 2 and spaces else 0):
            a, b = rng.sample(nums, 2)
            out.append(Candidate(i, rng.choice(spaces), APICall("calculator", f"{a} {rng.choice('+-*')} {b}")))
    return sorted(set(out), key=lambda c: (c.text_id, c.position, c.call.input))


def execute(registry: ToolRegistry, call: APICall) -> str:
    """Run a call whose input is the tool's one string argument."""
    params = registry.tools[call.tool].parameters if call.tool in registry else {"required": []}
    args = {params["required"][0]: call.input} if len(params["required"]) == 1 else call.input
    return registry.call(call.tool, args).text


def cut_window(continuation: str, window: int | None) -> str:
    """The first `window` characters of the continuation, extended to the end of the word they stop in (a cut
    inside a word would be scored as rare sub-word tokens the model never saw there). None: all of it."""
    if not window or len(continuation) <= window:
        return continuation
    m = re.compile(r"\s").search(continuation, window)
    return continuation[:m.start()] if m else continuation


Losses = Callable[[list[tuple[str, str]]], list[float]]


def filter_calls(texts: list[str], candidates: list[Candidate], run: Callable[[APICall], str],
                 loss: Callable[[str, str], float] | None, tau: float, window: int | None = None, *,
                 losses: Losses | None = None) -> FilterResult:
    """Score every candidate with the L- - L+ >= tau rule; failed calls (results "error: ...") are dropped.

    loss(prefix, continuation) scores one pair; `losses(pairs)` scores many at once (batched forwards) and is
    used instead when given. Each distinct (prefix, continuation) pair is scored once (L- without a call is
    shared by every candidate at the same position).
    """
    if losses is None:
        if loss is None:
            raise ValueError("filter_calls: give `loss` or `losses`")
        losses = lambda pairs: [loss(p, c) for p, c in pairs]  # noqa: E731
    work = []  # (candidate, result, continuation, prefix)
    for c in candidates:
        text = texts[c.text_id]
        work.append((c, run(c.call), cut_window(text[c.position:], window), text[:c.position]))
    pairs = sorted({(prefix + extra, cont) for c, result, cont, prefix in work
                    for extra in ("", c.call.render(), c.call.render(result))})
    scored = dict(zip(pairs, losses(pairs)))
    res = FilterResult()
    for c, result, cont, prefix in work:
        plus = scored[(prefix + c.call.render(result), cont)]
        minus = min(scored[(prefix, cont)], scored[(prefix + c.call.render(), cont)])
        kept = not result.startswith("error:") and (minus - plus) >= tau
        res.scored.append(Scored(c, result, plus, minus, kept))
    return res


def augment(texts: list[str], kept: list[Scored]) -> list[str]:
    """Texts with their kept calls inserted (one call per position: the largest gain wins)."""
    best: dict[tuple[int, int], Scored] = {}
    for s in kept:
        key = (s.candidate.text_id, s.candidate.position)
        if key not in best or s.gain > best[key].gain:
            best[key] = s
    out = list(texts)
    for (tid, pos), s in sorted(best.items(), key=lambda kv: (kv[0][0], -kv[0][1])):  # right to left
        out[tid] = out[tid][:pos] + s.candidate.call.render(s.result) + out[tid][pos:]
    return out


def loss_from_eval_lm(lm: Any) -> Callable[[str, str], float]:
    """Mean NLL per continuation token from a `genforge.eval.lm.LM` (its `loglikelihood`)."""
    def loss(prefix: str, continuation: str) -> float:
        (ll,) = lm.loglikelihood([(prefix, continuation)])
        return -ll[0] / max(ll[1], 1)
    return loss


def losses_from_eval_lm(lm: Any) -> Losses:
    """`loss_from_eval_lm` for many pairs at once (one batched `loglikelihood` call)."""
    def losses(pairs: list[tuple[str, str]]) -> list[float]:
        return [-ll[0] / max(ll[1], 1) for ll in lm.loglikelihood(list(pairs))]
    return losses


# ---- inference: the model writes a call, the tool answers inside the same decode ---------------------------------

# An open call at the end of the generated text: "... [calculator(361 + 859) ->"
_OPEN_CALL = re.compile(r"\[(\w+)\(([^()\[\]]*)\) ->$")
_CALL_SPAN = re.compile(r" ?\[\w+\([^()\[\]]*\)(?: ->[^\]]*)?\]?")


class Session(Protocol):
    """What the tool loop needs from a decode: `genforge.infer.engine.DecodeSession` (one row) fits."""

    def step(self) -> int: ...

    def append(self, tokens: Sequence[int]) -> None: ...


@dataclass
class ToolDecode:
    text: str  # everything generated, the tools' results included
    calls: list[tuple[APICall, str]] = field(default_factory=list)  # (call, result) in order
    tokens: list[int] = field(default_factory=list)  # the new token ids (the tools' results included)


def generate_with_tools(session: Session, tokenizer: Any, registry: ToolRegistry, *, max_new_tokens: int,
                        stop_ids: Sequence[int] = (), stop: Sequence[str] = ("\n",), max_calls: int = 2) -> ToolDecode:
    """Decode one row; when the text so far ends in an open call "[tool(input) ->", run the tool and feed
    " result]" into the same session (`append`: the prefix is not recomputed), then go on decoding.

    Ends at a stop id, a stop string (the text is cut before it), or after max_new_tokens picked tokens (the
    tools' tokens do not count). At most `max_calls` calls are executed; later ones are left as text.
    """
    out = ToolDecode("")
    room = getattr(session, "room", None)  # a DecodeSession's cache is finite: stop where it is full
    for _ in range(max_new_tokens):
        if room is not None and room() <= 0:
            break
        t = session.step()
        if t in stop_ids:
            break
        out.tokens.append(t)
        out.text = tokenizer.decode(out.tokens)
        cut = [i for i in (out.text.find(s) for s in stop if s) if i >= 0]
        if cut:
            out.text = out.text[:min(cut)]
            break
        m = _OPEN_CALL.search(out.text)
        if m and len(out.calls) < max_calls:
            call = APICall(m[1], m[2])
            result = execute(registry, call) if call.tool in registry else f"error: no tool {call.tool!r}"
            ids = tokenizer.encode(f" {result}]")
            if room is not None and room() < len(ids) + 1:
                break
            session.append(ids)
            out.tokens += ids
            out.text = tokenizer.decode(out.tokens)
            out.calls.append((call, result))
    return out


def strip_calls(text: str) -> str:
    """The text with every call span (" [tool(input) -> result]") removed: what a reader of the answer sees."""
    return _CALL_SPAN.sub("", text)


def first_number(text: str) -> str:
    """The first (possibly negative) integer in the text with its calls removed, or ""."""
    m = re.search(r"-?\d+", strip_calls(text))
    return m.group(0) if m else ""
