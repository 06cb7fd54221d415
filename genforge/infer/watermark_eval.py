"""Measuring a watermark: detection rate by length, false positives, robustness, quality cost.

Kirchenbauer et al. 2023 (sec. 6-7). Generates with the engine, so it lives apart from
`watermark.py` (which the engine imports for the logits processor).
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn as nn

from genforge.infer.engine import Engine
from genforge.infer.sampling import SamplingParams
from genforge.infer.watermark import WatermarkConfig, WatermarkLogitsProcessor, detect, substitute


def perplexity(model: nn.Module, prompts: list[list[int]], outputs: list[list[int]]) -> float:
    """exp(mean NLL) of the output tokens given their prompts, under `model`."""
    nll, n = 0.0, 0
    with torch.no_grad():
        for p, o in zip(prompts, outputs):
            if not o:
                continue
            seq = torch.tensor([p + o])
            logp = torch.log_softmax(model(seq)[0, len(p) - 1:-1].float(), -1)  # (len(o), V)
            nll -= logp.gather(1, torch.tensor(o)[:, None]).sum().item()
            n += len(o)
    return math.exp(nll / max(n, 1))


def watermark_report(model: nn.Module, prompts: list[list[int]], cfg: WatermarkConfig | None = None, *,
                     max_new_tokens: int = 200, lengths: tuple[int, ...] = (16, 32, 64, 128, 200),
                     substitution_rates: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5), temperature: float = 1.0,
                     top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> dict:
    """Measure the watermark on `prompts` (token id lists): everything the report card shows.

    Returns a dict with
    - detection_rate_by_length {T: fraction of watermarked outputs flagged using their first T tokens},
      and mean_z_by_length;
    - false_positive_rate (unwatermarked outputs flagged) and their mean z;
    - robustness {rate: detection rate after replacing that fraction of tokens at random};
    - ppl_unwatermarked / ppl_watermarked: perplexity of each under the unwatermarked model
      (the quality cost of the watermark, sec. 6).
    Both generations use the same prompts, sampling settings and seed.
    """
    cfg = cfg or WatermarkConfig()
    V = model.config.vocab_size
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            seed=seed)
    engine = Engine(model)
    marked = engine.generate(prompts, params, logits_processors=[WatermarkLogitsProcessor(cfg, V)])
    plain = engine.generate(prompts, params)

    def score(p, o):
        return detect(p[-cfg.context:] + o, V, cfg)

    def rate(results):
        return sum(r["watermarked"] for r in results) / max(len(results), 1)

    def mean_z(results):
        return sum(r["z"] for r in results) / max(len(results), 1)

    by_len = {}
    for T in lengths:
        rs = [score(p, o[:T]) for p, o in zip(prompts, marked) if len(o) >= T]
        if rs:
            by_len[T] = (rate(rs), mean_z(rs))
    plain_scores = [score(p, o) for p, o in zip(prompts, plain)]
    marked_scores = [score(p, o) for p, o in zip(prompts, marked)]
    rng = random.Random(seed)
    robust = {}
    for r in substitution_rates:
        rs = [score(p, substitute(o, r, V, rng)) for p, o in zip(prompts, marked)]
        robust[r] = (rate(rs), mean_z(rs))
    return {
        "config": cfg.__dict__.copy(),
        "n_texts": len(prompts),
        "mean_tokens": sum(map(len, marked)) / max(len(marked), 1),
        "detection_rate": rate(marked_scores),
        "mean_z_watermarked": mean_z(marked_scores),
        "detection_rate_by_length": {T: v[0] for T, v in by_len.items()},
        "mean_z_by_length": {T: v[1] for T, v in by_len.items()},
        "false_positive_rate": rate(plain_scores),
        "mean_z_unwatermarked": mean_z(plain_scores),
        "robustness": {r: v[0] for r, v in robust.items()},
        "robustness_mean_z": {r: v[1] for r, v in robust.items()},
        "ppl_unwatermarked": perplexity(model, prompts, plain),
        "ppl_watermarked": perplexity(model, prompts, marked),
    }
