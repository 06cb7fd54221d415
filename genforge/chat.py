"""`genforge chat`: talk to a checkpoint (optionally with an adapter) in the terminal.

Replies stream token by token. The conversation is re-rendered with the chat template every turn;
when the rendered history plus `max_new_tokens` would not fit the model's context, the oldest
turns are dropped (the system message stays). `/reset` forgets the conversation, `/quit` (or EOF)
ends it. `respond` is the batch, non-interactive form used by evaluation.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import torch
import torch.nn as nn

from genforge.errors import CheckpointError
from genforge.tokenizer import Tokenizer

Conversation = list[dict]


def _stop_ids(tokenizer: Tokenizer) -> list[int]:
    # a chat model ends its turn with <|end|>; a base model may end the document with <|eos|>
    return [tokenizer.end_id, tokenizer.eos_id]


def respond(model: nn.Module, tokenizer: Tokenizer, prompts: list[str] | list[Conversation], *, system: str = "",
            max_new_tokens: int = 64, temperature: float = 0.0, batch_size: int = 32,
            seed: int | None = None) -> list[str]:
    """The assistant's reply to each prompt (a user message, or a whole conversation), greedy by default."""
    from genforge.infer.engine import generate

    convs = [[{"role": "user", "content": p}] if isinstance(p, str) else list(p) for p in prompts]
    if system:
        convs = [[{"role": "system", "content": system}] + c for c in convs]
    ids = [tokenizer.encode_chat(c, add_generation_prompt=True)[0] for c in convs]
    model.eval()
    out: list[str] = []
    for start in range(0, len(ids), batch_size):
        rows = generate(model, ids[start:start + batch_size], max_new_tokens=max_new_tokens, temperature=temperature,
                        stop_ids=_stop_ids(tokenizer), seed=None if seed is None else seed + start)
        out += [tokenizer.decode(r).strip() for r in rows]
    return out


class ChatSession:
    """One conversation with a model: history, context-window trimming and streamed replies."""

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, *, system: str = "", max_new_tokens: int = 128,
                 temperature: float = 0.7, top_p: float = 0.9, seed: int | None = None, watermark=None):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.watermark = watermark  # a WatermarkConfig biases every reply toward its green lists
        self.system, self.max_new_tokens = system, max_new_tokens
        self.temperature, self.top_p, self.seed = temperature, top_p, seed
        self.max_len: int = model.config.max_seq_len
        self.history: Conversation = []
        self.dropped_turns = 0

    def reset(self) -> None:
        self.history = []

    def _messages(self, history: Conversation) -> Conversation:
        return ([{"role": "system", "content": self.system}] if self.system else []) + history

    def prompt_ids(self, user: str) -> list[int] | None:
        """Token ids for the next reply, dropping the oldest turns until they fit; None if the message alone cannot."""
        pending = self.history + [{"role": "user", "content": user}]
        drops = 0
        while True:
            ids, _ = self.tokenizer.encode_chat(self._messages(pending), add_generation_prompt=True)
            if len(ids) + self.max_new_tokens <= self.max_len:
                self.history = pending[:-1]
                self.dropped_turns += drops
                return ids
            if len(pending) == 1:
                return None
            # drop the oldest exchange: everything up to the next user message
            cut = next((i for i in range(1, len(pending)) if pending[i]["role"] == "user"), len(pending) - 1)
            pending = pending[cut:]
            drops += 1

    def send(self, user: str) -> Iterator[str]:
        """Stream the reply to `user` as text pieces; the finished exchange joins the history."""
        from genforge.infer.engine import stream

        ids = self.prompt_ids(user)
        if ids is None:
            raise CheckpointError(f"message of {len(self.tokenizer.encode(user))} tokens does not fit the "
                                  f"{self.max_len}-token context with room for {self.max_new_tokens} new tokens")
        new: list[int] = []
        shown = ""
        with torch.inference_mode():
            for tok in stream(self.model, ids, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                              top_p=self.top_p, stop_ids=_stop_ids(self.tokenizer), seed=self.seed,
                              watermark=self.watermark):
                new.append(tok)
                text = self.tokenizer.decode(new)
                # byte-level BPE: a token may end mid-character; wait until the character is complete
                if text.endswith("\ufffd"):
                    continue
                if len(text) > len(shown):
                    yield text[len(shown):]
                    shown = text
        text = self.tokenizer.decode(new)
        if len(text) > len(shown):
            yield text[len(shown):]
        self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": text.strip()}]


def chat_loop(session: ChatSession, input: TextIO | None = None, output: TextIO | None = None,
              prompt: str = "you> ", reply: str = "bot> ") -> int:
    """Read lines from `input` (stdin), stream replies to `output` (stdout); returns the number of exchanges."""
    input, output = input or sys.stdin, output or sys.stdout
    output.write("genforge chat: /reset clears the conversation, /quit exits\n")
    turns = 0
    while True:
        output.write(prompt)
        output.flush()
        line = input.readline()
        if not line:  # EOF
            output.write("\n")
            break
        text = line.strip()
        if not text:
            continue
        if text == "/quit":
            break
        if text == "/reset":
            session.reset()
            output.write("[conversation cleared]\n")
            continue
        before = session.dropped_turns
        try:
            output.write(reply)
            for piece in session.send(text):
                output.write(piece)
                output.flush()
            output.write("\n")
            turns += 1
        except CheckpointError as e:
            output.write(f"\n[{e}]\n")
        if session.dropped_turns > before:
            output.write(f"[dropped {session.dropped_turns - before} oldest turn(s) to fit the context window]\n")
    return turns


def load_for_chat(checkpoint: str | Path, adapter: str | Path = "") -> tuple[nn.Module, Tokenizer]:
    """Model (+ adapter) and tokenizer; the adapter folder's tokenizer is used if the checkpoint has none."""
    from genforge.checkpoint import load_checkpoint
    from genforge.model.peft import load_adapter

    model, tok, _ = load_checkpoint(checkpoint)
    if adapter:
        model = load_adapter(model, adapter)
        if tok is None and (Path(adapter) / "tokenizer.json").exists():
            tok = Tokenizer.load(adapter)
    if tok is None:
        raise CheckpointError(f"{checkpoint}: no tokenizer.json; chat needs the checkpoint's tokenizer")
    return model.eval(), tok
