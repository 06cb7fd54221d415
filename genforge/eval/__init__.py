"""Evaluation: metrics, prompting strategies, LLM-as-judge, needle in a haystack, contamination, the harness.

Modules (imported on use, so `import genforge.eval` stays cheap):
  lm            the `LM` interface (generate, loglikelihood), `GenforgeLM`, `StubLM`
  metrics       exact match, ROUGE, BLEU, perplexity / bits-per-byte, multiple choice, option-order test
  prompting     few-shot, chain of thought, self-consistency, least-to-most, self-verification,
                tree of thoughts, automatic prompt search
  judge         pairwise LLM-as-judge (genforge model or OpenAI-compatible endpoint) with bias measurements
  needle        needle-in-a-haystack grid and heatmap
  contamination n-gram overlap between eval items and a training corpus; contamination by asking
  variants      prompt variants (explain first, "Analysis:", emotion, tip, penalty, do/don't, unbiased, trigger)
  wrong_labels  in-context classification with correct / random / flipped demonstration labels
  rl_prompt     prompt search by reinforcement learning (a phrase policy trained with GRPO)
  diversity     distinct-n and self-BLEU
  composite     a BIG-bench-style suite score over several tasks
  tasks         the task registry (world tasks and user JSONL)
  harness       `evaluate`, `main`, `report_rows`, and the `genforge eval` command
  compare       two runs side by side (and judged pairwise)
"""
