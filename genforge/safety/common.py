"""What the safety measurements share: a chat model's replies to conversations, with an optional prefill."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

from genforge.infer.sampling import SamplingParams
from genforge.text import generate_text
from genforge.tokenizer import Tokenizer

Conversation = list[dict]


def replies(model: nn.Module, tok: Tokenizer, conversations: Sequence[Conversation | str], *, prefill: str = "",
            max_new_tokens: int = 48, temperature: float = 0.0, seed: int = 0, batch_size: int = 16) -> list[str]:
    """The assistant's next reply to each conversation (a str is one user turn). `prefill` starts the reply
    ("Absolutely! Here's"): the model continues it, and the returned text includes it."""
    texts = [tok.render_chat([{"role": "user", "content": c}] if isinstance(c, str) else list(c),
                             add_generation_prompt=True) + prefill for c in conversations]
    room = model.config.max_seq_len - max_new_tokens - 1
    ids = [tok.encode(t) for t in texts]
    # a conversation longer than the context keeps its end (the request, the assistant tag), as eval's fit_prompt does
    texts = [t if len(i) <= room else tok.decode(i[-room:], skip_special=False) for t, i in zip(texts, ids)]
    out: list[str] = []
    for b, i in enumerate(range(0, len(texts), batch_size)):
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed + b)
        out += generate_text(model, tok, texts[i:i + batch_size], params, add_bos=False,
                             stop_ids=[tok.end_id, tok.eos_id])
    return [prefill + o for o in out]
