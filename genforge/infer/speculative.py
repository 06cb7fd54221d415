"""Speculative decoding: a small draft model proposes k tokens, the target checks them in one pass.

Leviathan et al. 2023 ("Fast Inference from Transformers via Speculative Decoding", Algorithm 1)
and Chen et al. 2023 ("Accelerating LLM Decoding with Speculative Sampling", Algorithm 2):

1. the draft samples x_1..x_k autoregressively from its distributions q_1..q_k;
2. the target scores prefix + x_1..x_k in one forward, giving p_1..p_{k+1};
3. x_i is accepted with probability min(1, p_i(x_i) / q_i(x_i)), left to right;
4. at the first rejection, a replacement is drawn from norm(max(0, p_i - q_i)); if all k are
   accepted, a bonus token is drawn from p_{k+1}.

The accepted tokens are distributed exactly as samples from the target (Leviathan et al.,
Appendix A.1; tested statistically). Greedy decoding is the special case of one-hot p and q:
accept while the draft agrees with the target's argmax, so the output equals plain greedy.

Both models keep a KV cache; rejected positions are dropped with `KVCache.crop`. Each model's
cache holds a prefix of the sequence, and every call feeds it the tokens it has not seen yet.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from genforge.errors import ConfigError
from genforge.infer.sampling import SamplingParams, probs_from_logits, sample_from_probs
from genforge.model.gpt import KVCache


def _feed(model: nn.Module, cache: KVCache, seq: list[int], device: torch.device) -> torch.Tensor:
    """Feed seq[cache.pos:] (the tokens the cache lacks); return their logits (n, V)."""
    new = torch.tensor([seq[cache.pos:]], dtype=torch.long, device=device)  # (1, n)
    return model(new, cache=cache)[0]


def speculative_generate(target: nn.Module, draft: nn.Module, prompt: list[int], params: SamplingParams | None = None,
                         *, k: int = 4, stop_ids: Sequence[int] = ()) -> tuple[list[int], dict]:
    """New tokens for one prompt (stop token excluded) and stats.

    stats: acceptance_rate (accepted / proposed draft tokens), n_target_calls, n_draft_calls,
    tokens_per_target_call, proposed, accepted. params' temperature/top_k/top_p shape both p and q,
    so the output follows the target's *filtered* distribution, as plain sampling with the same
    settings. Penalties, logprobs and watermarks are not supported here (ConfigError if asked for).
    """
    params = params or SamplingParams()
    if params.penalties != (1.0, 0.0, 0.0) or params.watermark or params.logprobs:
        raise ConfigError("speculative decoding supports temperature/top_k/top_p/seed only; "
                          "drop the penalties, watermark and logprobs or decode without a draft")
    max_new_tokens, temperature, seed = params.max_new_tokens, params.temperature, params.seed
    if k < 1:
        raise ConfigError(f"speculative k must be >= 1, got {k}")
    if not prompt:
        raise ConfigError("speculative_generate: the prompt needs at least one token (e.g. the BOS id)")
    if target.config.vocab_size != draft.config.vocab_size:
        raise ConfigError(f"draft vocab ({draft.config.vocab_size}) != target vocab ({target.config.vocab_size}); "
                          "the draft must share the target's tokenizer")
    ctx = min(target.config.max_seq_len, draft.config.max_seq_len)
    if len(prompt) > ctx:
        raise ConfigError(f"prompt of {len(prompt)} tokens is longer than the context ({ctx})")
    max_new_tokens = min(max_new_tokens, ctx - len(prompt))
    device = next(target.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    dist = dict(temperature=temperature, top_k=params.top_k, top_p=params.top_p)
    greedy = params.greedy
    stop = set(stop_ids)

    modes = (target.training, draft.training)
    target.eval(), draft.eval()
    cache_len = len(prompt) + max_new_tokens + k + 1
    t_cache = KVCache(target.config, 1, max_len=min(cache_len, target.config.max_seq_len), device=device,
                      dtype=next(target.parameters()).dtype)
    d_cache = KVCache(draft.config, 1, max_len=min(cache_len, draft.config.max_seq_len), device=device,
                      dtype=next(draft.parameters()).dtype)
    seq, out = list(prompt), []
    n_target = n_draft = proposed = accepted = 0
    finished = False
    try:
        with torch.inference_mode():
            while len(out) < max_new_tokens and not finished:
                kk = min(k, ctx - len(seq))  # the target must fit prefix + kk drafts
                # 1. the draft proposes kk tokens; qs[i] is its distribution for drafts[i]
                drafts, qs = [], []
                for _ in range(kk):
                    logits = _feed(draft, d_cache, seq + drafts, device)[-1:]  # (1, V)
                    if greedy:
                        drafts.append(int(logits.argmax()))
                    else:
                        q = probs_from_logits(logits, **dist)  # (1, V)
                        drafts.append(int(sample_from_probs(q, gen)))
                        qs.append(q[0])
                n_draft += kk
                # 2. the target scores every draft in one pass: row i is its view at drafts[i], row kk the bonus
                t_logits = _feed(target, t_cache, seq + drafts, device)[-(kk + 1):]  # (kk+1, V)
                n_target += 1
                if greedy:
                    # 3-4 (greedy): accept while the draft matches the target's argmax; the argmax follows
                    best = t_logits.argmax(-1).tolist()
                    n = 0
                    while n < kk and best[n] == drafts[n]:
                        n += 1
                    nxt = best[n]
                else:
                    # 3. accept x_i with probability min(1, p_i(x_i) / q_i(x_i)), left to right
                    p = probs_from_logits(t_logits, **dist)  # (kk+1, V)
                    n = kk
                    if kk:
                        rows, x = torch.arange(kk, device=device), torch.tensor(drafts, device=device)
                        ratio = p[rows, x] / torch.stack(qs)[rows, x]  # q_i(x_i) > 0: x_i was drawn from q_i
                        ok = (torch.rand(kk, generator=gen, device=device) < ratio).tolist()
                        n = ok.index(False) if False in ok else kk
                    # 4. first rejection: resample from norm(max(0, p - q)); all accepted: bonus from p_{kk+1}
                    dist_next = p[n]
                    if n < kk:
                        residual = (p[n] - qs[n]).clamp(min=0)
                        if residual.sum() > 0:  # empty only if p == q up to rounding
                            dist_next = residual
                    nxt = int(sample_from_probs(dist_next[None], gen))
                proposed += kk
                accepted += n
                # caches keep only the accepted prefix (the target has seen seq + drafts[:n] validly)
                t_cache.crop(len(seq) + n)
                d_cache.crop(len(seq) + n)
                for t in drafts[:n] + [nxt]:
                    if t in stop or len(out) >= max_new_tokens:
                        finished = True
                        break
                    out.append(t)
                    seq.append(t)
    finally:
        target.train(modes[0]), draft.train(modes[1])
    stats = {
        "acceptance_rate": accepted / max(proposed, 1),
        "proposed": proposed,
        "accepted": accepted,
        "n_target_calls": n_target,
        "n_draft_calls": n_draft,
        "tokens_per_target_call": len(out) / max(n_target, 1),
    }
    return out, stats
