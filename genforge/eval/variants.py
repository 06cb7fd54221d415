"""Prompt variants: the same question wrapped in the phrasings prompt-engineering guides recommend.

Each variant is a pure function prompt -> prompt, so every variant asks the SAME test items and the
lesson is a paired difference against the plain prompt. Sources, one per variant:
- explain first: ask for the reasoning before the answer (Wei et al. 2022; OpenAI's prompting guide,
  "give the model time to think");
- "Analysis:": force the answer to start with an analysis (a response prefix; the guide's "start with" trick);
- emotional stimulus: "This is very important to my career." (Li et al. 2023, EmotionPrompt, EP02);
- tip: "I'm going to tip $200 for a better solution!" and penalty: "You will be penalized if the answer is
  wrong." (Bsharat et al. 2023, principles 6 and 10);
- do instead of don't: say what to do ("Answer with the final result.") rather than what not to do
  ("Don't ramble."); the pair is measured against each other as well;
- unbiased: "Ensure that your answer is unbiased and does not rely on stereotypes." (Bsharat et al. 2023,
  principle 13);
- machine-found trigger: "Take a deep breath and work on this problem step-by-step." (Yang et al. 2023, OPRO,
  the best instruction it found for PaLM 2 on GSM8K).

Most of these were found on large instruction-tuned models; on a ~1 M-parameter model they are expected to do
about nothing (the interval says how much "about"), which is itself the lesson: a prompt trick is a property of a
model, not of the task.
"""

from __future__ import annotations

from collections.abc import Callable

Variant = Callable[[str], str]

TRIGGER = "Take a deep breath and work on this problem step-by-step."
EMOTION = "This is very important to my career."
TIP = "I'm going to tip $200 for a better solution!"
PENALTY = "You will be penalized if the answer is wrong."
DO = "Answer with the final result in the form 'The answer is X.'"
DONT = "Don't ramble and don't leave the answer out."
UNBIASED = "Ensure that your answer is unbiased and does not rely on stereotypes."
EXPLAIN = "First explain your reasoning, then give the answer."
ANALYSIS = "Answer by starting with 'Analysis:'."


def _suffix(text: str) -> Variant:
    return lambda p: f"{p.rstrip()}\n{text}"


def _prefix(text: str) -> Variant:
    return lambda p: f"{text}\n{p.lstrip()}"


# name -> (prompt transform, one-line description for the report). The plain prompt is the baseline.
VARIANTS: dict[str, tuple[Variant, str]] = {
    "plain": (lambda p: p, "the prompt as the world writes it (the baseline)"),
    "explain_first": (_suffix(EXPLAIN), EXPLAIN),
    "analysis": (_suffix(ANALYSIS), ANALYSIS),
    "emotion": (_suffix(EMOTION), f"EmotionPrompt: {EMOTION}"),
    "tip": (_suffix(TIP), TIP),
    "penalty": (_suffix(PENALTY), PENALTY),
    "do": (_suffix(DO), f"say what to do: {DO}"),
    "dont": (_suffix(DONT), f"say what not to do: {DONT}"),
    "unbiased": (_suffix(UNBIASED), UNBIASED),
    "trigger": (_suffix(TRIGGER), f"machine-found trigger (OPRO): {TRIGGER}"),
}


def apply_variant(name: str, prompt: str) -> str:
    """`prompt` rewritten by variant `name` (KeyError names the known variants)."""
    if name not in VARIANTS:
        raise KeyError(f"unknown prompt variant {name!r}; known: {', '.join(VARIANTS)}")
    return VARIANTS[name][0](prompt)


def variant_prompts(prompts: list[str], names: list[str]) -> dict[str, list[str]]:
    """{variant: the prompts rewritten by it}, every variant over the same prompts in the same order."""
    return {n: [apply_variant(n, p) for p in prompts] for n in names}
