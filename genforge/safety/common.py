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


def reply_logprobs(model: nn.Module, tok: Tokenizer, conversations: Sequence[Conversation | str],
                   continuations: Sequence[str], *, prefill: str | Sequence[str] = "",
                   batch_size: int = 32) -> list[float]:
    """log P(continuation | the rendered conversation + prefill) per row, summed over the continuation's tokens:
    how likely the model is to reply that way, whether or not greedy decoding would (a likelihood reading of an
    attack when the model never writes the attacked reply)."""
    from genforge.eval.lm import GenforgeLM

    prefills = [prefill] * len(conversations) if isinstance(prefill, str) else list(prefill)
    seqs, n_targets = [], []
    room = model.config.max_seq_len
    for c, cont, pre in zip(conversations, continuations, prefills):
        text = tok.render_chat([{"role": "user", "content": c}] if isinstance(c, str) else list(c),
                               add_generation_prompt=True) + pre
        target = tok.encode(cont)
        seq = tok.encode(text) + target
        seqs.append(seq[-(room + 1):])  # a long conversation keeps its end, as `replies` does
        n_targets.append(len(target))
    lm = GenforgeLM(model, tok, batch_size=batch_size)
    return [float(lp.sum()) for lp, _ in lm._token_logprobs(seqs, n_targets)]
