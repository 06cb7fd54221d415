"""Turning next-token logits into a token: penalties, temperature, top-k, top-p (nucleus).

The order is the one Hugging Face and vLLM use: penalties on raw logits, then temperature,
then top-k, then top-p, then sample. Every function works on a batch: logits (B, V).

References: temperature/top-k (Fan et al. 2018), nucleus sampling (Holtzman et al. 2020),
repetition penalty (Keskar et al. 2019, CTRL, sec. 4.1), frequency/presence penalties
(the OpenAI API definition: logit - count * frequency - [count > 0] * presence).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from genforge.infer.watermark import WatermarkConfig, WatermarkLogitsProcessor

NEG_INF = float("-inf")
# Temperatures in (0, GREEDY_BELOW) sample greedily. Below it, logits / T can overflow fp32
# (T = 1e-300 gives inf, then NaN probabilities) and softmax is one-hot anyway for any logit gap
# above ~0.01; treating the request as greedy honours it instead of failing.
GREEDY_BELOW = 1e-4


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits per row (ties at the k-th value are kept); others become -inf.

    k <= 0 or k >= V leaves logits unchanged.
    """
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1) the k-th largest value
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most-likely tokens whose probability reaches p.

    A token is kept when the probability mass of the tokens strictly more likely than it
    (in sorted order) is still below p (Holtzman et al. 2020, eq. 2); the top token is always
    kept. p >= 1 leaves logits unchanged.
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = probs.cumsum(-1) - probs  # (B, V): mass of the tokens ranked above each one
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocab order
    return logits.masked_fill(drop, NEG_INF)


def token_counts(prev_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(B, L) ids (negative entries are ignored, e.g. padding) -> (B, V) occurrence counts."""
    valid = prev_ids >= 0
    counts = torch.zeros(prev_ids.shape[0], vocab_size, dtype=torch.float32, device=prev_ids.device)
    return counts.scatter_add_(1, prev_ids.clamp(min=0), valid.float())


def penalize(logits: torch.Tensor, seen: torch.Tensor | None, counts: torch.Tensor | None,
             repetition: float = 1.0, frequency: float = 0.0, presence: float = 0.0) -> torch.Tensor:
    """Apply penalties given `seen` (B, V) bool (for repetition) and `counts` (B, V) (frequency/presence).

    Repetition (CTRL): a seen token's logit is divided by r if positive, multiplied by r if
    negative, so r > 1 always makes it less likely. Frequency/presence (OpenAI): subtract
    `frequency * count + presence * [count > 0]`.
    """
    if repetition != 1.0 and seen is not None:
        penalized = torch.where(logits > 0, logits / repetition, logits * repetition)
        logits = torch.where(seen, penalized, logits)
    if (frequency != 0.0 or presence != 0.0) and counts is not None:
        logits = logits - frequency * counts.to(logits.dtype) - presence * (counts > 0).to(logits.dtype)
    return logits


def apply_penalties(logits: torch.Tensor, prev_ids: torch.Tensor | list[list[int]], repetition: float = 1.0,
                    frequency: float = 0.0, presence: float = 0.0) -> torch.Tensor:
    """Penalise tokens that occur in prev_ids (B, L) (negative ids are ignored); see `penalize`."""
    if repetition == 1.0 and frequency == 0.0 and presence == 0.0:
        return logits
    if not torch.is_tensor(prev_ids):
        width = max((len(r) for r in prev_ids), default=0)
        prev_ids = torch.tensor([list(r) + [-1] * (width - len(r)) for r in prev_ids],
                                dtype=torch.long, device=logits.device).view(len(prev_ids), width)
    counts = token_counts(prev_ids, logits.shape[-1])
    return penalize(logits, counts > 0, counts, repetition, frequency, presence)


def probs_from_logits(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int = 0,
                      top_p: float = 1.0) -> torch.Tensor:
    """The sampling distribution (B, V) in fp32 after temperature, top-k and top-p.

    temperature 0 (or below GREEDY_BELOW) gives the one-hot argmax distribution (greedy), which is
    what speculative decoding needs to treat greedy as a special case of sampling.
    """
    logits = logits.float()
    if temperature < GREEDY_BELOW:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    logits = top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
    return torch.softmax(logits, dim=-1)


def sample_from_probs(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row from probs (B, V) -> (B,)."""
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def sample_next(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B,) from logits (B, V); temperature 0 (or below GREEDY_BELOW) means argmax."""
    if temperature < GREEDY_BELOW:
        return logits.argmax(-1)
    probs = probs_from_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    return sample_from_probs(probs, generator)


@dataclass
class SamplingParams:
    """How tokens are chosen: one typed object from the server and the CLIs to the sampler.

    Field names follow the OpenAI / vLLM vocabulary where one exists. The text layer reads
    `stop` (strings are matched on text, not ids); the engine reads the rest.
    """

    max_new_tokens: int = 64  # tokens to generate at most
    temperature: float = 0.0  # 0 = greedy (argmax; so is anything below 1e-4); >0 divides the logits
    top_k: int = 0  # keep the k most likely tokens (0 = off)
    top_p: float = 1.0  # nucleus sampling: smallest set with this much probability (1 = off)
    seed: int | None = None  # seeds the sampler's generator (None = nondeterministic)
    repetition_penalty: float = 1.0  # CTRL-style: divide positive logits of seen tokens (1 = off)
    frequency_penalty: float = 0.0  # OpenAI: subtract count * this from seen tokens' logits
    presence_penalty: float = 0.0  # OpenAI: subtract this once from every seen token's logit
    stop: list[str] = field(default_factory=list)  # stop strings (output is cut before the first)
    logprobs: bool = False  # also return each chosen token's log-probability
    watermark: bool = False  # bias sampling toward a keyed green list (Kirchenbauer et al. 2023)
    watermark_key: int = 15485863  # the watermark's secret key (the detector needs the same)
    watermark_gamma: float = 0.25  # green fraction of the vocabulary
    watermark_delta: float = 2.0  # logit bonus of green tokens (strength)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    @property
    def penalties(self) -> tuple[float, float, float]:
        """(repetition, frequency, presence), the arguments `penalize` takes after seen/counts."""
        return self.repetition_penalty, self.frequency_penalty, self.presence_penalty

    def watermark_config(self) -> WatermarkConfig | None:
        """The watermark these settings ask for (None when off)."""
        if not self.watermark:
            return None
        return WatermarkConfig(gamma=self.watermark_gamma, delta=self.watermark_delta, key=self.watermark_key)


class LogitsProcessor(Protocol):
    """Anything that reshapes the next-token scores: processor(input_ids (B, L), scores (B, V)) -> (B, V).

    input_ids are each row's tokens so far (prompt + output), right-aligned and left-padded with 0.
    The call order of a Hugging Face LogitsProcessor, so the same objects work with HF generate.
    """

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor: ...


def logits_processors(params: SamplingParams, vocab_size: int,
                      extra: Sequence[LogitsProcessor] = ()) -> list[LogitsProcessor]:
    """The processors `params` asks for (today: the watermark), followed by the caller's `extra` ones."""
    wm = params.watermark_config()
    built: list[LogitsProcessor] = [WatermarkLogitsProcessor(wm, vocab_size)] if wm is not None else []
    return built + list(extra)
