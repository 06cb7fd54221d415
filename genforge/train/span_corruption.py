"""T5's span-corruption objective (Raffel et al. 2020, sec. 3.1.4 and 3.3.4): drop `corruption_rate` of the tokens
in spans of mean length `mean_span`; the input keeps the rest with one sentinel per dropped span, the target lists
each sentinel followed by the tokens it replaced, and ends with one more sentinel.

Example (sentinels <0>, <1>, <2>):  "the old baker saw a red cat" ->
    input  "the old <0> a red <1>"      target "<0> baker saw <1> cat <2>"

Why spans and sentinels rather than BERT's masks: the target is short (only the dropped tokens), so the
decoder learns to generate, and a span can hide several words at once, as a translation or a summary must produce.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from genforge.errors import ConfigError


@dataclass
class SpanConfig:
    corruption_rate: float = 0.15  # share of tokens dropped
    mean_span: float = 3.0  # mean length of a dropped span

    def __post_init__(self) -> None:
        if not 0 < self.corruption_rate < 1:
            raise ConfigError(f"span.corruption_rate must be in (0, 1), got {self.corruption_rate}")
        if self.mean_span < 1:
            raise ConfigError(f"span.mean_span must be >= 1, got {self.mean_span}")


def _segment(rng: random.Random, n_items: int, n_segments: int) -> list[int]:
    """Split n_items into n_segments positive lengths, uniformly over the ways to do so."""
    cuts = sorted(rng.sample(range(1, n_items), n_segments - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, n_items])]


def noise_mask(n: int, cfg: SpanConfig, rng: random.Random) -> list[bool]:
    """Which of n positions are dropped: round(n * rate) of them (at least 1) in round(noise / mean_span) spans,
    interleaved with kept runs, starting with a kept run (as T5's `random_spans_noise_mask`)."""
    if n < 2:
        return [False] * n
    n_noise = min(max(1, round(n * cfg.corruption_rate)), n - 1)
    n_spans = max(1, min(round(n_noise / cfg.mean_span), n_noise, n - n_noise))
    noise_lens = _segment(rng, n_noise, n_spans)
    keep_lens = _segment(rng, n - n_noise, n_spans)
    mask: list[bool] = []
    for k, z in zip(keep_lens, noise_lens):
        mask += [False] * k + [True] * z
    return mask


def corrupt_spans(ids: list[int], sentinels: list[int], cfg: SpanConfig | None = None,
                  rng: random.Random | None = None) -> tuple[list[int], list[int]]:
    """(input ids, target ids) of one sequence. sentinels: ids <0>, <1>, ... (at least spans + 1 of them)."""
    cfg = cfg or SpanConfig()
    rng = rng or random.Random(0)
    mask = noise_mask(len(ids), cfg, rng)
    inp: list[int] = []
    tgt: list[int] = []
    span = -1
    for i, (t, m) in enumerate(zip(ids, mask)):
        if m:
            if i == 0 or not mask[i - 1]:  # a new span starts
                span += 1
                if span + 1 >= len(sentinels):
                    raise ConfigError(f"span corruption needs more than {len(sentinels)} sentinels for "
                                      f"{len(ids)} tokens; add sentinels or shorten the windows")
                inp.append(sentinels[span])
                tgt.append(sentinels[span])
            tgt.append(t)
        else:
            inp.append(t)
    tgt.append(sentinels[span + 1])
    return inp, tgt
