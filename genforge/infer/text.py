"""Text in, text out: the tokenizer-aware layer over the id-only engine.

Stop strings are matched on decoded text, not on ids, because a string such as "\\nQ:" can be
split into tokens in many ways. While streaming, text that could still become a stop string
is held back, and a token that ends in the middle of a UTF-8 character (byte-level BPE) is held
until the character is complete, so every delta a caller sees is final.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch.nn as nn

from genforge.infer.engine import Engine
from genforge.tokenizer import Tokenizer

REPLACEMENT = "\ufffd"  # what decode() gives for an incomplete UTF-8 sequence


def encode_prompt(tokenizer: Tokenizer, prompt: str, chat: bool = False, add_bos: bool = True) -> list[int]:
    """Prompt ids: one user turn of the chat template + the generation prompt if chat, else BOS + text.

    Chat prompts go through `encode_chat`, the ids of `render_chat(..., add_generation_prompt=True)`
    with the user's text encoded as plain bytes, so typed "<|end|>" strings cannot forge a turn.
    """
    if chat:
        return tokenizer.encode_chat([{"role": "user", "content": prompt}], add_generation_prompt=True)[0]
    return tokenizer.encode(prompt, add_bos=add_bos)


def _stop_ids(tokenizer: Tokenizer, chat: bool, stop_ids: Sequence[int] | None) -> list[int]:
    if stop_ids is not None:
        return list(stop_ids)
    return [tokenizer.eos_id, tokenizer.end_id] if chat else [tokenizer.eos_id]


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
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


def _stop_fn(tokenizer: Tokenizer, stop: Sequence[str]):
    """A stop_fn for the engine: true once the decoded tail of a row contains a stop string.

    Only the last few tokens are decoded: every token is at least one byte, so a stop string of
    n bytes that ends in the newest token lies within its last n + 1 tokens (+1 for a partial byte).
    """
    stop = [s for s in stop if s]
    if not stop:
        return None
    tail = max(len(s.encode("utf-8")) for s in stop) + 1

    def fn(row: int, tokens: list[int]) -> bool:
        text = tokenizer.decode(tokens[-tail:], skip_special=False)
        return any(s in text for s in stop)

    return fn


def generate_text(model: nn.Module, tokenizer: Tokenizer, prompts: list[str], *, stop: Sequence[str] = (),
                  max_new_tokens: int = 64, chat: bool = False, add_bos: bool = True,
                  stop_ids: Sequence[int] | None = None, engine: Engine | None = None, **sampling) -> list[str]:
    """Completions (new text only) for a batch of prompts.

    chat=True wraps each prompt as one user turn with the generation prompt and stops at <|end|>;
    otherwise the prompt is BOS + text (add_bos) and generation stops at EOS. `stop` strings cut
    the output before their first occurrence. `sampling` goes to `Engine.generate`
    (temperature, top_k, top_p, seed, penalties, watermark...).
    """
    engine = engine or Engine(model)
    ids = [encode_prompt(tokenizer, p, chat, add_bos) for p in prompts]
    out = engine.generate(ids, max_new_tokens=max_new_tokens, stop_ids=_stop_ids(tokenizer, chat, stop_ids),
                          stop_fn=_stop_fn(tokenizer, stop), **sampling)
    return [truncate_at_stop(tokenizer.decode(o), stop)[0] for o in out]


def stream_text(model: nn.Module, tokenizer: Tokenizer, prompt: str, *, stop: Sequence[str] = (),
                max_new_tokens: int = 64, chat: bool = False, add_bos: bool = True,
                stop_ids: Sequence[int] | None = None, engine: Engine | None = None, **sampling) -> Iterator[str]:
    """Yield text deltas of one completion; joined they equal `generate_text`'s output."""
    engine = engine or Engine(model)
    ids = encode_prompt(tokenizer, prompt, chat, add_bos)
    tokens: list[int] = []
    sent = 0  # characters already yielded
    text = ""
    for t in engine.stream(ids, max_new_tokens=max_new_tokens, stop_ids=_stop_ids(tokenizer, chat, stop_ids),
                           **sampling):
        tokens.append(t)
        text = tokenizer.decode(tokens)
        text, stopped = truncate_at_stop(text, stop)
        if stopped:
            break
        if text.endswith(REPLACEMENT):
            continue  # the last token ended inside a multi-byte character: wait for the rest
        safe = len(text) - _held_back(text, stop)
        if safe > sent:
            yield text[sent:safe]
            sent = safe
    if len(text) > sent:  # generation ended: release what was held back
        yield text[sent:]
