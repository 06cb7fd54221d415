"""Measuring a watermark: detection rate by length, false positives, robustness, quality cost.

Kirchenbauer et al. 2023 (sec. 6-7). Generates with the engine, so it lives apart from
`watermark.py` (which the engine imports for the logits processor). Per-text numbers are returned
beside the rates so that a caller can put bootstrap intervals on them.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn as nn

from genforge.infer.engine import Engine
from genforge.infer.sampling import SamplingParams
from genforge.infer.watermark import WatermarkConfig, WatermarkLogitsProcessor, detect, entropy, substitute


def score_texts(model: nn.Module, prompts: list[list[int]], outputs: list[list[int]]
                ) -> tuple[list[float], list[list[float]]]:
    """Per text: the mean NLL (nats/token) of the output given its prompt, and the model's next-token
    entropy before each output token (what an entropy-aware detector needs). One forward per text."""
    nlls, ents = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for p, o in zip(prompts, outputs):
                if not o:
                    nlls.append(0.0)
                    ents.append([])
                    continue
                logits = model(torch.tensor([p + o]))[0, len(p) - 1:-1].float()  # (len(o), V)
                logp = torch.log_softmax(logits, -1)
                nlls.append(-logp.gather(1, torch.tensor(o)[:, None]).mean().item())
                ents.append(entropy(logits).tolist())
    finally:
        model.train(was_training)
    return nlls, ents


def token_entropies(model: nn.Module, prompt: list[int], output: list[int]) -> list[float]:
    """The model's next-token entropy (nats) before each token of output."""
    return score_texts(model, [prompt], [output])[1][0]


def detect_with_model(model: nn.Module, prompt: list[int], output: list[int], cfg: WatermarkConfig) -> dict:
    """`detect` on prompt's last `context` tokens + output, with the entropies an entropy-aware config needs."""
    ents = token_entropies(model, prompt, output) if cfg.entropy_threshold > 0 else None
    return detect(prompt[-cfg.context:] + output, model.config.vocab_size, cfg, ents)


def perplexity(model: nn.Module, prompts: list[list[int]], outputs: list[list[int]]) -> float:
    """exp(mean NLL) of the output tokens given their prompts, under `model` (token-weighted)."""
    nlls, _ = score_texts(model, prompts, outputs)
    n = sum(map(len, outputs))
    return math.exp(sum(x * len(o) for x, o in zip(nlls, outputs)) / max(n, 1))


def watermark_report(model: nn.Module, prompts: list[list[int]], cfg: WatermarkConfig | None = None, *,
                     max_new_tokens: int = 200, lengths: tuple[int, ...] = (16, 32, 64, 128, 200),
                     substitution_rates: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5), temperature: float = 1.0,
                     top_k: int = 0, top_p: float = 1.0, seed: int = 0, batch_size: int = 64) -> dict:
    """Measure the watermark on `prompts` (token id lists, one text each; repeat a prompt for several texts).

    Returns a dict with
    - detection_rate_by_length {T: fraction of watermarked outputs flagged using their first T tokens},
      and mean_z_by_length;
    - false_positive_rate (unwatermarked outputs flagged) and their mean z;
    - robustness {rate: detection rate after replacing that fraction of tokens at random};
    - ppl_unwatermarked / ppl_watermarked: perplexity of each under the unwatermarked model
      (the quality cost of the watermark, sec. 6);
    - per_text: lists over texts (flagged at full length, z, NLL per token, scored positions) for
      both generations, for bootstrap intervals.
    Both generations use the same prompts, sampling settings and seed. An entropy-aware config
    (cfg.entropy_threshold > 0) is scored with the model's own entropies, recomputed on each text
    (after a substitution attack too, as a detector would see the edited text).
    """
    cfg = cfg or WatermarkConfig()
    V = model.config.vocab_size
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            seed=seed)
    engine = Engine(model)
    marked, plain = [], []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        marked += engine.generate(chunk, params, logits_processors=[WatermarkLogitsProcessor(cfg, V)])
        plain += engine.generate(chunk, params)
    aware = cfg.entropy_threshold > 0
    nll_m, ent_m = score_texts(model, prompts, marked)
    nll_p, ent_p = score_texts(model, prompts, plain)

    def score(p, o, ents=None):
        if aware and ents is None:
            ents = token_entropies(model, p, o)
        return detect(p[-cfg.context:] + o, V, cfg, ents[:len(o)] if aware else None)

    def rate(results):
        return sum(r["watermarked"] for r in results) / max(len(results), 1)

    def mean_z(results):
        return sum(r["z"] for r in results) / max(len(results), 1)

    by_len = {}
    for T in lengths:
        rs = [score(p, o[:T], e) for p, o, e in zip(prompts, marked, ent_m) if len(o) >= T]
        if rs:
            by_len[T] = (rate(rs), mean_z(rs))
    plain_scores = [score(p, o, e) for p, o, e in zip(prompts, plain, ent_p)]
    marked_scores = [score(p, o, e) for p, o, e in zip(prompts, marked, ent_m)]
    rng = random.Random(seed)
    robust = {}
    for r in substitution_rates:
        rs = [score(p, substitute(o, r, V, rng)) for p, o in zip(prompts, marked)]
        robust[r] = (rate(rs), mean_z(rs))

    def ppl(nlls, outs):
        n = sum(map(len, outs))
        return math.exp(sum(x * len(o) for x, o in zip(nlls, outs)) / max(n, 1))

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
        "ppl_unwatermarked": ppl(nll_p, plain),
        "ppl_watermarked": ppl(nll_m, marked),
        "per_text": {
            "flagged_watermarked": [float(r["watermarked"]) for r in marked_scores],
            "flagged_unwatermarked": [float(r["watermarked"]) for r in plain_scores],
            "z_watermarked": [r["z"] for r in marked_scores],
            "z_unwatermarked": [r["z"] for r in plain_scores],
            "scored_watermarked": [r["scored"] for r in marked_scores],
            "nll_watermarked": nll_m,
            "nll_unwatermarked": nll_p,
            "tokens_watermarked": [len(o) for o in marked],
        },
    }
