"""The one interface evaluation talks to: a language model that generates and scores text.

Everything in `genforge.eval` (metrics, prompting strategies, judge, needle, harness) goes through
`LM.generate` and `LM.loglikelihood`, the two requests lm-evaluation-harness also reduces every
task to. `GenforgeLM` adapts a genforge model + tokenizer; `StubLM` is a scripted stand-in for
tests, so strategies can be checked without training anything.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from genforge.errors import ConfigError

# (log P(continuation | context) summed over its tokens, number of continuation tokens,
#  whether greedy decoding would have produced exactly this continuation)
LogLik = tuple[float, int, bool]
GREEDY_BATCH = 64  # prompts per greedy generation batch (see GenforgeLM.generate)


@runtime_checkable
class LM(Protocol):
    """What evaluation needs from a model."""

    def generate(self, prompts: list[str], *, max_new_tokens: int = 64, temperature: float = 0.0,
                 stop: Sequence[str] = (), n: int = 1, seed: int | None = None) -> list[list[str]]:
        """n completions per prompt (each without the prompt, cut at the first stop string)."""
        ...

    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[LogLik]:
        """For each (context, continuation): (logprob_sum, n_tokens, is_greedy)."""
        ...


class GenforgeLM:
    """A genforge `GPT` + `Tokenizer` behind the `LM` interface.

    chat: wrap each prompt in the chat template as one user turn (for SFT'd models). Scoring then
    conditions on the rendered chat prefix ending in the assistant tag.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, chat: bool = False, batch_size: int = 16):
        self.model, self.tokenizer, self.chat, self.batch_size = model, tokenizer, chat, batch_size
        self.max_len: int = model.config.max_seq_len
        self.truncated = 0  # prompts cut from the left to fit the context (see fit_prompt)
        self._engine = None

    # ---- generation ---------------------------------------------------------------------------
    def generate(self, prompts: list[str], *, max_new_tokens: int = 64, temperature: float = 0.0,
                 stop: Sequence[str] = (), n: int = 1, seed: int | None = None) -> list[list[str]]:
        """n completions per prompt via `genforge.text.generate_text`."""
        from genforge.infer.engine import Engine  # imported late: inference is a sibling package
        from genforge.infer.sampling import SamplingParams
        from genforge.text import generate_text

        if temperature <= 0.0 and n > 1:
            # greedy decoding is deterministic: decode once and repeat instead of n identical runs
            return [outs * n for outs in self.generate(prompts, max_new_tokens=max_new_tokens, stop=stop, seed=seed)]
        if self._engine is None:
            self._engine = Engine(self.model)
        flat = [self.fit_prompt(p, max_new_tokens) for p in prompts for _ in range(n)]
        order = list(range(len(flat)))
        size = self.batch_size
        if temperature <= 0.0:
            # a greedy row's answer does not depend on its batch, and finished rows leave the engine's batch, so
            # greedy requests go in wide batches of similar prompt length (a decode step's fixed cost is shared, and
            # less left padding is prefilled); a sampled batch keeps `batch_size` and the callers' order, since its
            # seed (seed + batch index) and random draws belong to the batch
            size = max(size, GREEDY_BATCH)
            order.sort(key=lambda i: len(self.tokenizer.encode(flat[i])))
        outs: list[str] = [""] * len(flat)
        for b, start in enumerate(range(0, len(flat), size)):
            idx = order[start:start + size]
            params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, stop=list(stop),
                                    seed=None if seed is None else seed + b)
            for i, text in zip(idx, generate_text(self._engine, self.tokenizer, [flat[i] for i in idx], params,
                                                  chat=self.chat)):
                outs[i] = text
        return [outs[i * n:(i + 1) * n] for i in range(len(prompts))]

    def fit_prompt(self, prompt: str, max_new_tokens: int) -> str:
        """The prompt, cut from the left if it leaves no room to generate in the model's context.

        lm-evaluation-harness truncates the same way (the end of a prompt, where the question is,
        matters most). Each cut is counted in `self.truncated` so results can report it.
        """
        room = self.max_len - min(max_new_tokens, self.max_len // 4) - 8  # 8: BOS and chat-template tokens
        ids = self.tokenizer.encode(prompt)
        if len(ids) <= room:
            return prompt
        self.truncated += 1
        return self.tokenizer.decode(ids[-room:])

    # ---- scoring ------------------------------------------------------------------------------
    def _context_ids(self, context: str) -> list[int]:
        from genforge.text import render_prompt

        return render_prompt(self.tokenizer, context, chat=self.chat)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of context and continuation, encoded separately.

        As lm-evaluation-harness does, trailing spaces of the context move to the continuation, so
        "Answer: " + "Paris" is scored as "Answer:" + " Paris" (the way BPE saw it in training).
        """
        stripped = context.rstrip(" ")
        continuation = context[len(stripped):] + continuation
        return self._context_ids(stripped), self.tokenizer.encode(continuation)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    @torch.inference_mode()
    def _token_logprobs(self, seqs: list[list[int]], n_targets: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """For each id sequence, (log-probs, greedy-match flags) of its last n_targets tokens.

        Sequences are sorted by length and right-padded into batches: causal attention means padding
        after a sequence never changes the logits of its real positions, so no mask is needed.
        """
        self.model.eval()
        device = next(self.model.parameters()).device
        pad = getattr(self.tokenizer, "pad_id", 0)
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        out: list = [None] * len(seqs)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            T = max(len(seqs[i]) for i in idx) - 1
            x = torch.full((len(idx), T), pad, dtype=torch.long)
            for r, i in enumerate(idx):
                x[r, :len(seqs[i]) - 1] = torch.tensor(seqs[i][:-1])
            logp = F.log_softmax(self.model(x.to(device)).float(), dim=-1)  # (B, T, V)
            for r, i in enumerate(idx):
                L, k = len(seqs[i]), n_targets[i]
                target = torch.tensor(seqs[i][L - k:], device=device)  # (k,)
                rows = logp[r, L - 1 - k:L - 1]  # (k, V): position t predicts token t+1
                out[i] = (rows.gather(-1, target[:, None]).squeeze(-1).cpu(), (rows.argmax(-1) == target).cpu())
        return out

    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[LogLik]:
        """Sum of log P(continuation tokens | context) from one forward over context+continuation."""
        seqs, n_targets = [], []
        for context, continuation in pairs:
            ctx, cont = self.encode_pair(context, continuation)
            if not cont:
                raise ConfigError(f"empty continuation for context {context[:40]!r}: nothing to score")
            cont = cont[-self.max_len:]
            # keep the whole continuation and as much context (from the right) as the window allows
            seqs.append((ctx + cont)[-(self.max_len + 1):])
            n_targets.append(len(cont))
        res = self._token_logprobs(seqs, n_targets)
        return [(float(lp.sum()), len(lp), bool(g.all())) for lp, g in res]

    def loglikelihood_rolling(self, texts: list[str]) -> list[tuple[float, int]]:
        """(logprob_sum, n_tokens) of each whole text, predicting every token after <|bos|>.

        Long texts are cut into disjoint windows of max_seq_len predictions; each window conditions
        only on itself (cheaper than a sliding window, slightly pessimistic at window starts).
        """
        out = []
        for text in texts:
            ids = self.tokenizer.encode(text, add_bos=True)
            seqs, n_targets = [], []
            for s in range(0, len(ids) - 1, self.max_len):
                window = ids[s:s + self.max_len + 1]
                seqs.append(window)
                n_targets.append(len(window) - 1)
            res = self._token_logprobs(seqs, n_targets) if seqs else []
            out.append((float(sum(lp.sum() for lp, _ in res)), sum(len(lp) for lp, _ in res)))
        return out


class StubLM:
    """A scripted LM for tests.

    respond(prompt, sample_index, rng) -> text: what to "generate" (default: echo nothing).
    score(context, continuation) -> logprob: what `loglikelihood` returns (default: -len(continuation)).
    Every generate call is recorded in `calls` as (prompts, kwargs) so tests can count work.
    """

    def __init__(self, respond: Callable[[str, int, random.Random], str] | None = None,
                 score: Callable[[str, str], float] | None = None, chat: bool = False):
        self.respond = respond or (lambda prompt, i, rng: "")
        self.score = score or (lambda context, continuation: -float(len(continuation)))
        self.chat = chat
        self.calls: list[tuple[list[str], dict]] = []

    def generate(self, prompts: list[str], *, max_new_tokens: int = 64, temperature: float = 0.0,
                 stop: Sequence[str] = (), n: int = 1, seed: int | None = None) -> list[list[str]]:
        self.calls.append((list(prompts), dict(max_new_tokens=max_new_tokens, temperature=temperature,
                                               stop=tuple(stop), n=n, seed=seed)))
        rng = random.Random(seed)
        from genforge.text import cut_at_stop

        return [[cut_at_stop(self.respond(p, i, rng), stop)[0] for i in range(n)] for p in prompts]

    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[LogLik]:
        return [(self.score(c, x), max(1, len(x.split())), False) for c, x in pairs]

    def loglikelihood_rolling(self, texts: list[str]) -> list[tuple[float, int]]:
        return [(self.score("", t), max(1, len(t.split()))) for t in texts]

    def count_tokens(self, text: str) -> int:
        return len(text.split())
