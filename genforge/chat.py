"""`genforge chat`: talk to a checkpoint (optionally with an adapter) in the terminal.

Replies stream token by token. The conversation is re-rendered with the chat template every turn;
when the rendered history plus `max_new_tokens` would not fit the model's context, the oldest
turns are dropped (the system message stays). `/reset` forgets the conversation, `/quit` (or EOF)
ends it. `respond` is the batch, non-interactive form used by evaluation. Rendering, streaming and
stop handling are the text layer's (`genforge.text`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TextIO

import torch.nn as nn

from genforge.errors import CheckpointError
from genforge.infer.engine import Engine
from genforge.infer.sampling import SamplingParams
from genforge.text import Conversation, generate_text, render_prompt, stream_text
from genforge.tokenizer import Tokenizer


def respond(model: nn.Module, tokenizer: Tokenizer, prompts: list[str] | list[Conversation],
            params: SamplingParams | None = None, *, system: str = "", batch_size: int = 32) -> list[str]:
    """The assistant's reply to each prompt (a user message, or a whole conversation), greedy by default.

    Batches of `batch_size` prompts; a seeded params gets seed + index of the batch's first prompt.
    """
    params = params or SamplingParams()
    engine = Engine(model)
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        p = params if params.seed is None else replace(params, seed=params.seed + start)
        out += generate_text(engine, tokenizer, prompts[start:start + batch_size], p, chat=True, system=system)
    return [t.strip() for t in out]


class ChatSession:
    """One conversation with a model: history, context-window trimming and streamed replies."""

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, params: SamplingParams | None = None, *,
                 system: str = ""):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.params = params or SamplingParams(max_new_tokens=128, temperature=0.7, top_p=0.9)
        self.system = system
        self.max_len: int = model.config.max_seq_len
        self.engine = Engine(self.model)
        self.history: Conversation = []
        self.dropped_turns = 0

    def reset(self) -> None:
        self.history = []

    def _messages(self, history: Conversation) -> Conversation:
        return ([{"role": "system", "content": self.system}] if self.system else []) + history

    def fit_history(self, user: str) -> Conversation | None:
        """The conversation for the next reply, oldest turns dropped until it fits; None if the message alone cannot."""
        pending = self.history + [{"role": "user", "content": user}]
        drops = 0
        while True:
            ids = render_prompt(self.tokenizer, self._messages(pending))
            if len(ids) + self.params.max_new_tokens <= self.max_len:
                self.history = pending[:-1]
                self.dropped_turns += drops
                return self._messages(pending)
            if len(pending) == 1:
                return None
            # drop the oldest exchange: everything up to the next user message
            cut = next((i for i in range(1, len(pending)) if pending[i]["role"] == "user"), len(pending) - 1)
            pending = pending[cut:]
            drops += 1

    def send(self, user: str) -> Iterator[str]:
        """Stream the reply to `user` as text pieces; the finished exchange joins the history."""
        conv = self.fit_history(user)
        if conv is None:
            raise CheckpointError(f"message of {len(self.tokenizer.encode(user))} tokens does not fit the "
                                  f"{self.max_len}-token context with room for {self.params.max_new_tokens} new tokens")
        pieces = []
        for piece in stream_text(self.engine, self.tokenizer, conv, self.params):
            pieces.append(piece)
            yield piece
        self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": "".join(pieces).strip()}]


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
