"""How an agent reaches a model: `TextModel` (prompts in, one completion each out), plus a scripted stub.

`TextModel` is the shape of `genforge.eval.lm.LM.generate` with one sample per prompt, so
`from_eval_lm(GenforgeLM(...))` turns a genforge checkpoint into an agent's model; a server client or
any object with this `generate` fits too. `ScriptedModel` answers by a function of the prompt (or a
fixed list of replies) so agent loops are tested with exact trajectories.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class TextModel(Protocol):
    """What an agent needs from a model."""

    def generate(self, prompts: list[str], *, max_new_tokens: int, temperature: float,
                 stop: Sequence[str]) -> list[str]:
        """One completion per prompt (without the prompt), cut before the first stop string."""
        ...


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to (not including) the earliest stop string."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


class ScriptedModel:
    """A stub model for tests and lessons.

    reply: a function prompt -> text, or a list of texts returned in order (one per prompt asked).
    Every prompt is recorded in `prompts`, so a test can check exactly what the agent asked.
    """

    def __init__(self, reply: Callable[[str], str] | Sequence[str]):
        self._fn = reply if callable(reply) else None
        self._queue = list(reply) if not callable(reply) else []
        self.prompts: list[str] = []

    def generate(self, prompts: list[str], *, max_new_tokens: int = 64, temperature: float = 0.0,
                 stop: Sequence[str] = ()) -> list[str]:
        out = []
        for p in prompts:
            self.prompts.append(p)
            if self._fn is not None:
                text = self._fn(p)
            elif self._queue:
                text = self._queue.pop(0)
            else:
                raise AssertionError(f"ScriptedModel ran out of replies at prompt #{len(self.prompts)}")
            out.append(cut_at_stop(text, stop))
        return out


class _EvalLMAdapter:
    def __init__(self, lm: Any):
        self.lm = lm

    def generate(self, prompts: list[str], *, max_new_tokens: int = 64, temperature: float = 0.0,
                 stop: Sequence[str] = ()) -> list[str]:
        outs = self.lm.generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature, stop=stop, n=1)
        return [o[0] for o in outs]


class EngineModel:
    """A genforge model whose prompts are complete texts with special-token strings as tokens, so a prompt can
    be a rendered chat turn followed by the start of the assistant's reply (`chat_prefix`): how a fine-tuned
    ReAct model continues its own turn after each observation. Replies end at <|end|> or <|eos|>."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 32):
        from genforge.infer.engine import Engine

        self.engine, self.tok, self.batch_size = Engine(model.eval()), tokenizer, batch_size

    def generate(self, prompts: list[str], *, max_new_tokens: int = 64, temperature: float = 0.0,
                 stop: Sequence[str] = ()) -> list[str]:
        from genforge.infer.sampling import SamplingParams
        from genforge.text import generate_text

        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, stop=list(stop))
        out: list[str] = []
        for i in range(0, len(prompts), self.batch_size):
            out += generate_text(self.engine, self.tok, prompts[i:i + self.batch_size], params, add_bos=False,
                                 stop_ids=[self.tok.end_id, self.tok.eos_id])
        return out


class ChatTurns:
    """A `TextModel` that sends each prompt as one user turn of the chat template and returns the reply
    (for a chat model in loops written with plain prompts, such as `router.critique_many`)."""

    def __init__(self, model: EngineModel, tokenizer: Any):
        self.model, self.tok = model, tokenizer
        self.truncated = 0  # prompts cut from the left to fit the context with room for the reply

    def generate(self, prompts: list[str], *, max_new_tokens: int = 64, temperature: float = 0.0,
                 stop: Sequence[str] = ()) -> list[str]:
        return self.model.generate([chat_prefix(self.tok, self.fit(p, max_new_tokens)) for p in prompts],
                                   max_new_tokens=max_new_tokens, temperature=temperature, stop=stop)

    def fit(self, prompt: str, max_new_tokens: int) -> str:
        """The prompt, its start cut off if the chat turn and the reply would not fit the model's context (the end,
        where the question is, matters most)."""
        room = self.model.engine.model.config.max_seq_len - max_new_tokens - len(self.tok.encode(
            chat_prefix(self.tok, "")))
        ids = self.tok.encode(prompt)
        if len(ids) <= room:
            return prompt
        self.truncated += 1
        return self.tok.decode(ids[-max(room, 1):])


def chat_prefix(tokenizer: Any, user: str, reply_so_far: str = "") -> str:
    """The text of a one-turn chat ready for the assistant, plus the start of its reply (for `EngineModel`)."""
    return tokenizer.render_chat([{"role": "user", "content": user}], add_generation_prompt=True) + reply_so_far


def from_eval_lm(lm: Any) -> TextModel:
    """Wrap a `genforge.eval.lm.LM` (n completions per prompt) as a `TextModel` (one each)."""
    return _EvalLMAdapter(lm)
