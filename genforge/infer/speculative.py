"""Speculative decoding: a cheap "prophet" proposes k tokens, the target checks them in one pass.

Leviathan et al. 2023 ("Fast Inference from Transformers via Speculative Decoding", Algorithm 1)
and Chen et al. 2023 ("Accelerating LLM Decoding with Speculative Sampling", Algorithm 2):

1. the prophet proposes x_1..x_k with distributions q_1..q_k;
2. the target scores prefix + x_1..x_k in one forward, giving p_1..p_{k+1};
3. x_i is accepted with probability min(1, p_i(x_i) / q_i(x_i)), left to right;
4. at the first rejection, a replacement is drawn from norm(max(0, p_i - q_i)); if all k are
   accepted, a bonus token is drawn from p_{k+1}.

The accepted tokens are distributed exactly as samples from the target (Leviathan et al.,
Appendix A.1; tested statistically). Greedy decoding is the special case of one-hot p and q:
accept while the proposal agrees with the target's argmax, so the output equals plain greedy.

Two prophets:
- `ModelProphet`: a small draft model (e.g. one distilled from the target) sampling from its own
  distributions q_i, with its own KV cache;
- `NGramProphet`: no model at all. Prompt lookup decoding (Saxena 2023, "Prompt Lookup Decoding"):
  find the latest earlier occurrence of the sequence's last n tokens and propose what followed it;
  when the sequence has none, an n-gram table of a corpus (the way REST, He et al. 2023, drafts
  from a datastore) proposes the most frequent continuation. Its proposals are deterministic, so
  q_i is one-hot: x_i is accepted with probability p_i(x_i) and a rejection resamples from p_i
  without x_i, which keeps sampling exact. Proposing costs microseconds, so on a small model,
  where a forward costs mostly fixed per-call overhead, every accepted token is nearly free.

Two more (the issue's "prophets" list):
- `HeadsProphet`: multi-token heads in the style of Medusa (Cai et al. 2024): head i maps the target's own
  last hidden state to the token i+1 places after the one the target is about to emit, so drafting costs
  k small matrix products and no extra forward (the hidden state is read from the verification pass with a
  forward hook). A non-autoregressive draft: all k guesses come from one state at once.
- `MultiProphet`: several prophets at once. Each round every prophet proposes; once the target has
  answered, each proposal's would-be accepted run (its agreement with what was actually emitted) is scored,
  and the next round uses the prophet with the longest recent runs (an exponential average).

The target keeps a KV cache; rejected positions are dropped with `KVCache.crop`. Each cache holds
a prefix of the sequence, and every call feeds it the tokens it has not seen yet.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import torch
import torch.nn as nn

from genforge.errors import ConfigError
from genforge.infer.sampling import SamplingParams, probs_from_logits, sample_from_probs
from genforge.model.gpt import KVCache


def _feed(model: nn.Module, cache: KVCache, seq: list[int], device: torch.device) -> torch.Tensor:
    """Feed seq[cache.pos:] (the tokens the cache lacks); return their logits (n, V)."""
    new = torch.tensor([seq[cache.pos:]], dtype=torch.long, device=device)  # (1, n)
    return model(new, cache=cache)[0]


class Prophet(Protocol):
    """Proposes draft tokens for `speculative_generate`."""

    def start(self, prompt: list[int], max_len: int) -> None:
        """Prepare for one generation of at most max_len tokens in all."""

    def propose(self, seq: list[int], k: int, dist: dict, gen: torch.Generator | None
                ) -> tuple[list[int], list[torch.Tensor] | None]:
        """Up to k tokens to follow seq, and their distributions q_i (V,) (None: deterministic proposals).

        dist: the sampling settings (temperature, top_k, top_p; temperature 0 = greedy).
        """

    def keep(self, n: int) -> None:
        """The sequence's first n tokens were accepted; forget state beyond them."""


class ModelProphet:
    """A draft language model as the prophet: samples k tokens autoregressively, with its own KV cache."""

    def __init__(self, draft: nn.Module):
        self.model, self.cache = draft, None

    def start(self, prompt: list[int], max_len: int) -> None:
        p = next(self.model.parameters())
        self.cache = KVCache(self.model.config, 1, max_len=min(max_len, self.model.config.max_seq_len),
                             device=p.device, dtype=p.dtype)

    def propose(self, seq: list[int], k: int, dist: dict, gen: torch.Generator | None
                ) -> tuple[list[int], list[torch.Tensor] | None]:
        device = next(self.model.parameters()).device
        drafts: list[int] = []
        qs: list[torch.Tensor] = []
        for _ in range(k):
            logits = _feed(self.model, self.cache, seq + drafts, device)[-1:]  # (1, V)
            q = probs_from_logits(logits, **dist)  # (1, V); one-hot argmax when greedy
            drafts.append(int(q.argmax()) if dist["temperature"] == 0 else int(sample_from_probs(q, gen)))
            qs.append(q[0])
        return drafts, qs

    def keep(self, n: int) -> None:
        self.cache.crop(n)


class NGramProphet:
    """Model-free drafts: prompt lookup in the sequence so far, then an optional corpus n-gram table.

    max_ngram..min_ngram: suffix lengths tried for the in-sequence match, longest first.
    table: {context tuple (table_n tokens): most frequent next token}, built by `from_corpus`.
    """

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1, table: dict[tuple[int, ...], int] | None = None,
                 table_n: int = 3):
        if not 1 <= min_ngram <= max_ngram:
            raise ConfigError(f"NGramProphet: need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.max_ngram, self.min_ngram, self.table, self.table_n = max_ngram, min_ngram, table or {}, table_n

    @classmethod
    def from_corpus(cls, sequences: Iterable[Sequence[int]], n: int = 3, **kwargs) -> NGramProphet:
        """A prophet whose fallback table maps every n-token context of `sequences` to its commonest successor."""
        counts: dict[tuple[int, ...], Counter] = {}
        for s in sequences:
            s = list(s)
            for i in range(n, len(s)):
                counts.setdefault(tuple(s[i - n:i]), Counter())[s[i]] += 1
        table = {ctx: c.most_common(1)[0][0] for ctx, c in counts.items()}
        return cls(table=table, table_n=n, **kwargs)

    def start(self, prompt: list[int], max_len: int) -> None:
        pass

    def keep(self, n: int) -> None:
        pass

    def _lookup(self, seq: list[int], k: int) -> list[int]:
        """The (up to k) tokens that followed the latest earlier occurrence of seq's longest matching suffix."""
        L = len(seq)
        for n in range(min(self.max_ngram, L - 1), self.min_ngram - 1, -1):
            tail = seq[L - n:]
            for start in range(L - n - 1, -1, -1):  # latest earlier occurrence first
                if seq[start:start + n] == tail:
                    # copy what followed, overlapping like LZ77: a loop of period p < k is proposed whole
                    out: list[int] = []
                    for i in range(k):
                        j = start + n + i
                        out.append(seq[j] if j < L else out[j - L])
                    return out
        return []

    def propose(self, seq: list[int], k: int, dist: dict, gen: torch.Generator | None
                ) -> tuple[list[int], list[torch.Tensor] | None]:
        drafts = self._lookup(seq, k)
        n = self.table_n
        while len(drafts) < k and self.table:
            ctx = tuple((seq + drafts)[-n:])
            nxt = self.table.get(ctx) if len(ctx) == n else None
            if nxt is None:
                break
            drafts.append(nxt)
        return drafts, None


class MultiTokenHeads(nn.Module):
    """k Medusa-style heads over a decoder's final hidden state h (C,): head i gives h + SiLU(W_i h), read
    through the target's own output layer, to predict the token i+2 places ahead of h's position (the target's
    head already predicts i+1). Trained by `genforge.train.prophets.train_heads`."""

    def __init__(self, width: int, k: int = 3):
        super().__init__()
        self.k = k
        self.proj = nn.ModuleList(nn.Linear(width, width) for _ in range(k))
        for p in self.proj:  # start as the identity residual: every head first guesses the next token
            nn.init.zeros_(p.weight)
            nn.init.zeros_(p.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., C) -> per-head hidden states (k, ..., C) to feed the target's lm_head."""
        return torch.stack([hidden + torch.nn.functional.silu(p(hidden)) for p in self.proj])


class HeadsProphet:
    """Drafts from `MultiTokenHeads` over the target's last hidden state, read from its verification pass."""

    def __init__(self, target: nn.Module, heads: MultiTokenHeads):
        self.target, self.heads = target, heads
        self._pending: torch.Tensor | None = None  # final-norm output (T, C) of the call in progress
        self._hidden: torch.Tensor | None = None  # (T, C) final states of the target's latest cached call
        self._end = 0  # absolute position after that call's last token
        self._hooks: list = []

    def start(self, prompt: list[int], max_len: int) -> None:
        if not self._hooks:
            # two forward hooks: the final norm's output (the state lm_head reads), and the whole forward, whose
            # cache position then says which absolute positions those rows were
            self._hooks = [self.target.norm.register_forward_hook(self._on_norm),
                           self.target.register_forward_hook(self._on_forward, with_kwargs=True)]
        self._hidden, self._end = None, 0

    def _on_norm(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._pending = output[0] if output.dim() == 3 and output.shape[0] == 1 else None

    def _on_forward(self, module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
        cache = kwargs.get("cache")
        if isinstance(cache, KVCache) and self._pending is not None:
            self._hidden, self._end = self._pending, cache.pos
        self._pending = None

    def close(self) -> None:
        """Remove the hooks from the target."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def propose(self, seq: list[int], k: int, dist: dict, gen: torch.Generator | None
                ) -> tuple[list[int], list[torch.Tensor] | None]:
        q = len(seq) - 2  # the last accepted position: the target's own head there emitted seq[-1]
        if self._hidden is None or k < 1 or not (self._end - len(self._hidden) <= q < self._end):
            return [], None
        h = self._hidden[q - (self._end - len(self._hidden))]  # (C,)
        with torch.no_grad():
            logits = self.target.lm_head(self.heads(h)[:k])  # (k, V): head i guesses seq[-1]'s (i+1)-th successor
        return logits.argmax(-1).tolist(), None

    def keep(self, n: int) -> None:
        pass


class MultiProphet:
    """Several prophets: use the one whose proposals would have been accepted longest recently (EMA of the run)."""

    def __init__(self, prophets: Sequence[Prophet], decay: float = 0.7):
        if not prophets:
            raise ConfigError("MultiProphet needs at least one prophet")
        self.prophets, self.decay = list(prophets), decay
        self.score = [0.0] * len(self.prophets)
        self.last: list[tuple[int, list[int]]] = []  # (len(seq) at proposal, proposal) per prophet
        self.chosen: list[int] = [0] * len(self.prophets)  # rounds each prophet was used (for reports)

    def start(self, prompt: list[int], max_len: int) -> None:
        for p in self.prophets:
            p.start(prompt, max_len)
        self.last = []

    def propose(self, seq: list[int], k: int, dist: dict, gen: torch.Generator | None
                ) -> tuple[list[int], list[torch.Tensor] | None]:
        # score last round's proposals against what the target actually emitted after them
        for i, (at, drafts) in enumerate(self.last):
            emitted = seq[at:]
            run = 0
            while run < min(len(drafts), len(emitted)) and drafts[run] == emitted[run]:
                run += 1
            self.score[i] = self.decay * self.score[i] + (1 - self.decay) * run
        proposals = [p.propose(seq, k, dist, gen) for p in self.prophets]
        self.last = [(len(seq), d) for d, _ in proposals]
        order = sorted(range(len(self.prophets)), key=lambda i: -self.score[i])
        best = next((i for i in order if proposals[i][0]), order[0])
        self.chosen[best] += 1
        return proposals[best]

    def keep(self, n: int) -> None:
        for p in self.prophets:
            p.keep(n)


def speculative_generate(target: nn.Module, draft: nn.Module | Prophet, prompt: list[int],
                         params: SamplingParams | None = None, *, k: int = 4,
                         stop_ids: Sequence[int] = (),
                         stop_fn: Callable[[list[int]], bool] | None = None) -> tuple[list[int], dict]:
    """New tokens for one prompt (stop token excluded) and stats.

    draft: a draft model (wrapped in a `ModelProphet`) or any `Prophet` (e.g. `NGramProphet()`).
    stats: acceptance_rate (accepted / proposed tokens), n_target_calls, n_draft_calls (draft
    forwards; 0 for a model-free prophet), tokens_per_target_call, proposed, accepted.
    params' temperature/top_k/top_p shape both p and q, so the output follows the target's
    *filtered* distribution, as plain sampling with the same settings. Penalties, logprobs and
    watermarks are not supported here (ConfigError if asked for).
    stop_fn(tokens_so_far) is called after every accepted token (so a server can stream them as each target
    call accepts them); True ends the generation there (the token that triggered it is kept).
    """
    params = params or SamplingParams()
    if params.penalties != (1.0, 0.0, 0.0) or params.watermark or params.logprobs:
        raise ConfigError("speculative decoding supports temperature/top_k/top_p/seed only; "
                          "drop the penalties, watermark and logprobs or decode without a draft")
    if k < 1:
        raise ConfigError(f"speculative k must be >= 1, got {k}")
    if not prompt:
        raise ConfigError("speculative_generate: the prompt needs at least one token (e.g. the BOS id)")
    ctx = target.config.max_seq_len
    models = [target]
    if isinstance(draft, nn.Module):
        if target.config.vocab_size != draft.config.vocab_size:
            raise ConfigError(f"draft vocab ({draft.config.vocab_size}) != target vocab "
                              f"({target.config.vocab_size}); the draft must share the target's tokenizer")
        ctx = min(ctx, draft.config.max_seq_len)
        models.append(draft)
        prophet: Prophet = ModelProphet(draft)
    else:
        prophet = draft
    if len(prompt) > ctx:
        raise ConfigError(f"prompt of {len(prompt)} tokens is longer than the context ({ctx})")
    max_new_tokens = min(params.max_new_tokens, ctx - len(prompt))
    device = next(target.parameters()).device
    gen = torch.Generator(device=device).manual_seed(params.seed) if params.seed is not None else None
    greedy = params.greedy
    dist = dict(temperature=0.0 if greedy else params.temperature, top_k=params.top_k, top_p=params.top_p)
    stop = set(stop_ids)

    modes = [m.training for m in models]
    for m in models:
        m.eval()
    cache_len = min(len(prompt) + max_new_tokens + k + 1, ctx)
    t_cache = KVCache(target.config, 1, max_len=cache_len, device=device, dtype=next(target.parameters()).dtype)
    prophet.start(prompt, cache_len)
    seq, out = list(prompt), []
    n_target = n_draft = proposed = accepted = 0
    finished = False
    try:
        with torch.inference_mode():
            while len(out) < max_new_tokens and not finished:
                # 1. the prophet proposes up to kk tokens (the target must fit prefix + kk drafts)
                kk = min(k, ctx - len(seq))
                drafts, qs = prophet.propose(seq, kk, dist, gen) if kk else ([], None)
                drafts = drafts[:kk]
                kk = len(drafts)
                n_draft += kk if qs is not None else 0
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
                        # q_i(x_i) > 0 since x_i was drawn from q_i; a deterministic proposal has q_i(x_i) = 1
                        qx = torch.stack(qs)[rows, x] if qs is not None else torch.ones(kk, device=device)
                        ok = (torch.rand(kk, generator=gen, device=device) < p[rows, x] / qx).tolist()
                        n = ok.index(False) if False in ok else kk
                    # 4. first rejection: resample from norm(max(0, p - q)); all accepted: bonus from p_{kk+1}
                    dist_next = p[n]
                    if n < kk:
                        if qs is not None:
                            residual = (p[n] - qs[n]).clamp(min=0)
                        else:  # q one-hot at x: max(0, p - q) is p with x removed
                            residual = p[n].clone()
                            residual[drafts[n]] = 0.0
                        if residual.sum() > 0:  # empty only if p == q up to rounding
                            dist_next = residual
                    nxt = int(sample_from_probs(dist_next[None], gen))
                proposed += kk
                accepted += n
                # caches keep only the accepted prefix (the target has seen seq + drafts[:n] validly)
                t_cache.crop(len(seq) + n)
                prophet.keep(len(seq) + n)
                for t in drafts[:n] + [nxt]:
                    if t in stop or len(out) >= max_new_tokens:
                        finished = True
                        break
                    out.append(t)
                    seq.append(t)
                    if stop_fn is not None and stop_fn(out):
                        finished = True
                        break
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    stats = {
        "acceptance_rate": accepted / max(proposed, 1),
        "proposed": proposed,
        "accepted": accepted,
        "n_target_calls": n_target,
        "n_draft_calls": n_draft,
        "tokens_per_target_call": len(out) / max(n_target, 1),
    }
    return out, stats
