"""The one text layer: text in, text out over the id-only engine.

Three pieces, used by every stage, the chat REPL, evaluation, rollouts and the server:
- `render_prompt`: a prompt's ids -- BOS + text, or the chat template (`Tokenizer.encode_chat`) for a
  conversation or a single user message (typed special-token strings in content stay plain text,
  so "<|end|>" in a message cannot forge a turn);
- `StreamDecoder`: token ids -> final text deltas. Stop strings are matched on decoded text, not on
  ids, because a string such as "\\nQ:" can be split into tokens in many ways; text that could
  still become a stop string is held back, and a token that ends in the middle of a UTF-8
  character (byte-level BPE) is held until the character is complete, so every delta is final;
- `generate_text` / `stream_text`: render, run the engine with a `SamplingParams`, detokenise
  through the same `StreamDecoder` (so streamed deltas joined equal the batch output).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

import torch.nn as nn

from genforge.infer.engine import Engine, StopFn
from genforge.infer.sampling import LogitsProcessor, SamplingParams
from genforge.tokenizer import Tokenizer

Conversation = list[dict]  # [{"role": "system" | "user" | "assistant", "content": str}, ...]
REPLACEMENT = "\ufffd"  # what decode() gives for an incomplete UTF-8 sequence


def render_prompt(tokenizer: Tokenizer, prompt: str | Conversation, *, chat: bool = False, system: str = "",
                  add_bos: bool = True, allow_special: bool = True) -> list[int]:
    """Prompt ids. A conversation (list of messages) or chat=True renders the chat template with the
    generation prompt (a str becomes one user turn; `system` adds a system message first; message
    content is always plain text, so typed special-token strings cannot forge a turn);
    otherwise BOS + text (add_bos), where allow_special=False also keeps "<|end|>"-like strings as text
    (what the server does with raw completion prompts).
    """
    if isinstance(prompt, str) and not chat:
        return tokenizer.encode(prompt, add_bos=add_bos, allow_special=allow_special)
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system:
        messages = [{"role": "system", "content": system}] + messages
    return tokenizer.encode_chat(messages, add_generation_prompt=True)[0]


def stop_ids_for(tokenizer: Tokenizer, chat: bool) -> list[int]:
    """Token ids that end a reply: <|end|> (the chat turn's end) and <|eos|> for chat, <|eos|> otherwise."""
    return [tokenizer.end_id, tokenizer.eos_id] if chat else [tokenizer.eos_id]


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut text at the earliest occurrence of any stop string -> (text, stopped)."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _held_back(text: str, stop: Sequence[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of some stop string."""
    best = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


class StreamDecoder:
    """One row's token ids -> final text deltas, cut at the first stop string.

    push(token) returns the text that became final (maybe ''); flush() returns the held-back rest
    once the row has ended. `text` is the row's text so far (cut at a stop string); `stopped` says
    a stop string was found (the caller should end the row).
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()):
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0  # characters already handed out
        self.stopped = False

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        self.ids.append(token)
        text, self.stopped = cut_at_stop(self.tokenizer.decode(self.ids), self.stop)
        if self.stopped:
            self.text = text
            return self.flush()
        if text.endswith(REPLACEMENT):
            return ""  # the token ended inside a multi-byte character: wait for the rest
        self.text = text
        safe = len(self.text) - _held_back(self.text, self.stop)
        if safe <= self.sent:
            return ""
        delta, self.sent = self.text[self.sent:safe], safe
        return delta

    def flush(self) -> str:
        # a row that ended mid-character keeps the replacement character, as decode() gives it
        if not self.stopped and len(self.ids):
            self.text, self.stopped = cut_at_stop(self.tokenizer.decode(self.ids), self.stop)
        delta, self.sent = self.text[self.sent:], len(self.text)
        return delta


def detokenize(tokenizer: Tokenizer, ids: Sequence[int], stop: Sequence[str] = ()) -> str:
    """The text of a finished row of ids, cut at the first stop string (what `StreamDecoder` yields in all)."""
    dec = StreamDecoder(tokenizer, stop)
    return "".join([dec.push(t) for t in ids] + [dec.flush()])


def _engine(model_or_engine: nn.Module | Engine) -> Engine:
    return model_or_engine if isinstance(model_or_engine, Engine) else Engine(model_or_engine)


def generate_text(model_or_engine: nn.Module | Engine, tokenizer: Tokenizer, prompts: Sequence[str | Conversation],
                  params: SamplingParams | None = None, *, chat: bool = False, system: str = "",
                  add_bos: bool = True, stop_ids: Sequence[int] | None = None,
                  logits_processors: Sequence[LogitsProcessor] = (),
                  max_new_tokens: Sequence[int] | None = None) -> list[str]:
    """Completions (new text only) for a batch of prompts or conversations.

    chat=True (or a conversation) renders the chat template and stops at <|end|>; otherwise the
    prompt is BOS + text and generation stops at EOS (`stop_ids` overrides). params.stop strings
    end a row as soon as they appear in its text and are cut from the output.
    max_new_tokens: a budget per prompt (instead of params.max_new_tokens), so that prompts with
    different budgets share one batch; each row ends exactly where it would have alone.
    """
    params = params or SamplingParams()
    if max_new_tokens is not None:
        params = replace(params, max_new_tokens=max(max_new_tokens, default=0))
    engine = _engine(model_or_engine)
    ids = [render_prompt(tokenizer, p, chat=chat, system=system, add_bos=add_bos) for p in prompts]
    chat = chat or any(not isinstance(p, str) for p in prompts)
    decoders = [StreamDecoder(tokenizer, params.stop) for _ in prompts]
    engine.generate(ids, params, stop_ids=stop_ids_for(tokenizer, chat) if stop_ids is None else stop_ids,
                    stop_fn=_decoder_stop_fn(decoders, max_new_tokens), logits_processors=logits_processors)
    for d in decoders:
        d.flush()
    if max_new_tokens is not None:  # a row with no budget picked one token before its stop_fn could end it
        return [d.text if n > 0 else "" for d, n in zip(decoders, max_new_tokens)]
    return [d.text for d in decoders]


def _decoder_stop_fn(decoders: list[StreamDecoder], limits: Sequence[int] | None = None) -> StopFn:
    """A stop_fn that feeds each new token to its row's decoder and ends the row at a stop string (or at its
    own token budget in `limits`)."""
    def fn(row: int, tokens: list[int]) -> bool:
        decoders[row].push(tokens[-1])
        return decoders[row].stopped or (limits is not None and len(tokens) >= limits[row])
    return fn


def stream_text(model_or_engine: nn.Module | Engine, tokenizer: Tokenizer, prompt: str | Conversation,
                params: SamplingParams | None = None, *, chat: bool = False, system: str = "", add_bos: bool = True,
                stop_ids: Sequence[int] | None = None,
                logits_processors: Sequence[LogitsProcessor] = ()) -> Iterator[str]:
    """Yield final text deltas of one completion; joined they equal `generate_text`'s output."""
    params = params or SamplingParams()
    engine = _engine(model_or_engine)
    ids = render_prompt(tokenizer, prompt, chat=chat, system=system, add_bos=add_bos)
    chat = chat or not isinstance(prompt, str)
    dec = StreamDecoder(tokenizer, params.stop)
    for t in engine.stream(ids, params, stop_ids=stop_ids_for(tokenizer, chat) if stop_ids is None else stop_ids,
                           logits_processors=logits_processors):
        delta = dec.push(t)
        if delta:
            yield delta
        if dec.stopped:
            break
    rest = dec.flush()
    if rest:
        yield rest
