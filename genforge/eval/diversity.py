"""Output diversity: distinct-n and self-BLEU over a set of samples.

- distinct-n (Li et al. 2016): unique n-grams / all n-grams, pooled over the samples (`metrics.distinct_n`).
- self-BLEU (Zhu et al. 2018, Texygen): each sample scored by BLEU against all the OTHER samples as references,
  averaged. 100 means every sample could be any other; lower is more diverse. BLEU is sacrebleu's sentence BLEU
  (13a tokenisation, exponential smoothing), so the numbers match what a reader gets from sacrebleu directly.

Diversity rises with sampling temperature and is known to fall after preference tuning (Kirk et al. 2024,
"Understanding the effects of RLHF on LLM generalisation and diversity"); the eval stage measures both.
"""

from __future__ import annotations

from collections.abc import Sequence

from genforge.errors import DataError
from genforge.eval.metrics import distinct_n
from genforge.extras import require


def self_bleu(texts: Sequence[str]) -> float:
    """Mean sentence BLEU (0-100) of each text against all the others as references."""
    if len(texts) < 2:
        raise DataError(f"self_bleu needs at least 2 texts, got {len(texts)}")
    sacrebleu = require("sacrebleu", "eval")
    scores = [sacrebleu.sentence_bleu(t, [o for j, o in enumerate(texts) if j != i]).score
              for i, t in enumerate(texts)]
    return float(sum(scores) / len(scores))


def diversity(groups: Sequence[Sequence[str]], ns: Sequence[int] = (1, 2)) -> dict[str, float]:
    """Diversity of several samples per prompt, averaged over prompts (samples of different prompts are not
    compared with each other: a model that answers each prompt the same way every time is not diverse).

    groups: for each prompt, its samples. Returns {"distinct_1", "distinct_2", ..., "self_bleu"}.
    """
    if not groups:
        raise DataError("diversity: no samples")
    out = {f"distinct_{n}": sum(distinct_n(list(g), n) for g in groups) / len(groups) for n in ns}
    out["self_bleu"] = sum(self_bleu(list(g)) for g in groups) / len(groups)
    return out


def per_prompt(groups: Sequence[Sequence[str]], n: int = 2) -> dict[str, list[float]]:
    """Per-prompt distinct-n and self-BLEU lists (for paired bootstrap intervals across prompts)."""
    return {f"distinct_{n}": [distinct_n(list(g), n) for g in groups],
            "self_bleu": [self_bleu(list(g)) for g in groups]}
