"""A green-list watermark for generated text, and its detector (Kirchenbauer et al. 2023).

"A Watermark for Large Language Models" (ICML 2023), Algorithm 2 ("soft" red list):
before sampling token t, hash the previous `context` token(s) with a secret key, use the hash
to seed a random permutation of the vocabulary, call its first gamma*|V| entries the green list
G_t, and add delta to the logits of green tokens. Text written this way holds many more green
tokens than the gamma fraction that unwatermarked text holds by chance.

Detection needs only the key and the tokens, not the model (sec. 4): with T scored tokens of
which |s|_G are green, z = (|s|_G - gamma T) / sqrt(T gamma (1 - gamma)) (eq. 3), a one-sided
z-test against "no watermark". The paper flags z > 4 (false-positive rate 3e-5).

Where we depart: the hash is splitmix64 over (key, context tokens) rather than the paper's
key * previous token, so a context of several tokens and token id 0 are handled alike.

Entropy-aware variant (SWEET, Lee et al. 2023, "Who Wrote this Code? Watermarking for Code
Generation", sec. 3): with `entropy_threshold` > 0 the bonus is added only where the model's
next-token entropy is at least the threshold, and the detector scores only those positions. A
low-entropy position (the world's templated prose has many) can barely be steered, so it only
dilutes z in plain KGW and, where it is steered, costs perplexity. The price: detection needs the
model to recompute the entropies (`watermark_eval.token_entropies`).

This module needs no engine (the engine imports it through `sampling.logits_processors`); measuring
the watermark with generations lives in `watermark_eval.py`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache

import torch

from genforge.errors import ConfigError

MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class WatermarkConfig:
    """Watermark parameters (Kirchenbauer et al. 2023, sec. 3)."""

    gamma: float = 0.25  # fraction of the vocabulary that is green
    delta: float = 2.0  # logit bonus of green tokens (watermark strength; quality cost grows with it)
    key: int = 15485863  # the secret: without it the green lists cannot be recomputed
    context: int = 1  # how many previous tokens seed the green list
    z_threshold: float = 4.0  # detect() flags text with z above this
    entropy_threshold: float = 0.0  # nats; > 0: watermark and score only positions at least this uncertain (SWEET)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def context_seed(key: int, context: tuple[int, ...]) -> int:
    """A 63-bit generator seed from the key and the context tokens."""
    h = _splitmix64(key & MASK64)
    for t in context:
        h = _splitmix64(h ^ (t & MASK64))
    return h >> 1


@lru_cache(maxsize=8192)
def green_mask(context: tuple[int, ...], vocab_size: int, gamma: float, key: int) -> torch.Tensor:
    """(V,) bool: the green list that follows `context` (first gamma*V of a keyed permutation)."""
    g = torch.Generator().manual_seed(context_seed(key, context))
    perm = torch.randperm(vocab_size, generator=g)
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[perm[:int(gamma * vocab_size)]] = True
    return mask


class WatermarkLogitsProcessor:
    """Adds delta to the green-list logits of each row; call as processor(input_ids (B, L), scores (B, V)).

    Same call order as a Hugging Face LogitsProcessor, so it can also be passed to HF generate.
    """

    def __init__(self, cfg: WatermarkConfig, vocab_size: int):
        self.cfg, self.vocab_size, self.context = cfg, vocab_size, cfg.context

    def green(self, context: tuple[int, ...]) -> torch.Tensor:
        return green_mask(tuple(context), self.vocab_size, self.cfg.gamma, self.cfg.key)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        ctx = input_ids[:, -self.context:].tolist()
        bonus = torch.stack([self.green(tuple(c)) for c in ctx]).to(scores.device)  # (B, V) bool
        if self.cfg.entropy_threshold > 0:
            bonus &= (entropy(scores) >= self.cfg.entropy_threshold)[:, None]  # only uncertain rows (SWEET)
        return scores + self.cfg.delta * bonus.to(scores.dtype)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits) over the last dim: (..., V) -> (...)."""
    logp = torch.log_softmax(logits.float(), -1)
    return -(logp.exp() * logp).sum(-1)


def detect(token_ids: list[int], vocab_size: int, cfg: WatermarkConfig | None = None,
           entropies: list[float] | None = None) -> dict:
    """z-score of green tokens in token_ids (eq. 3); the first `context` tokens only seed the first list.

    Pass the last `context` prompt tokens followed by the generated tokens to score all of them.
    entropies: for the entropy-aware variant, the model's next-token entropy before each of
    token_ids[context:] (see `watermark_eval.token_entropies`); positions below the threshold are not scored.
    """
    cfg = cfg or WatermarkConfig()
    c = cfg.context
    positions = range(c, len(token_ids))
    if cfg.entropy_threshold > 0:
        if entropies is None or len(entropies) != len(positions):
            raise ConfigError(f"detect: an entropy-aware watermark (entropy_threshold {cfg.entropy_threshold}) "
                              f"needs the model's entropy at each of the {len(positions)} scored tokens; "
                              "use watermark_eval.detect_with_model")
        positions = [i for i, h in zip(positions, entropies) if h >= cfg.entropy_threshold]
    scored = len(positions)
    green = sum(bool(green_mask(tuple(token_ids[i - c:i]), vocab_size, cfg.gamma, cfg.key)[token_ids[i]])
                for i in positions)
    if scored == 0:
        return {"z": 0.0, "p_value": 1.0, "green": 0, "scored": 0, "watermarked": False}
    z = (green - cfg.gamma * scored) / math.sqrt(scored * cfg.gamma * (1 - cfg.gamma))
    p_value = 0.5 * math.erfc(z / math.sqrt(2))  # one-sided: P(Z >= z) under no watermark
    return {"z": z, "p_value": p_value, "green": green, "scored": scored, "watermarked": z > cfg.z_threshold}


def substitute(tokens: list[int], rate: float, vocab_size: int, rng: random.Random) -> list[int]:
    """Replace a `rate` fraction of positions with uniformly random tokens (the paper's attack, sec. 7)."""
    out = list(tokens)
    for i in rng.sample(range(len(out)), round(rate * len(out))):
        out[i] = rng.randrange(vocab_size)
    return out
