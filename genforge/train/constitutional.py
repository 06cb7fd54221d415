"""Constitutional AI (Bai et al. 2022): written principles instead of human labels for harmlessness.

Two phases, both driven by the model itself and a short list of principles:

1. Supervised (SL-CAI): the model answers a red-team request, is asked to *critique* its answer under a
   principle, then to *revise* it; the (request, revision) pairs become SFT data (their sec. 3).
2. RL from AI feedback (RLAIF): the model answers each prompt twice; a feedback model is shown the two
   answers as options (A)/(B) under a comparison principle, and the normalised probabilities it gives the
   option letters are the preference label (their sec. 4.1), averaged over principles and over both option
   orders (which cancels the position bias small models have). The labelled pairs train DPO here, where
   the paper trained a preference model and ran PPO; DPO optimises the same KL-regularised objective.

Candid note: the paper's feedback model has 52B parameters. A ~1M-parameter tiny-world model cannot read
a critique request or answer "(A) or (B)?" (measured in the first wave: its self-revisions were garbage and
its labels were noise, and CAI took the refusal rate from 1.00 to 0.00). So the speedrun uses a critique
format such a model *can* run, built from what it already does (`likelihood_preferences`, `principled_revisions`):

* the constitution is given as a system prompt (the principle's text) and the model is asked nothing else;
* critique/feedback = which of two answers the model finds more likely, per token, under that system prompt
  (the model "reads" each answer under the principle; context distillation, Askell et al. 2021, uses the same
  quantity);
* revision = the model's own greedy answer under the principle's system prompt, kept only when the feedback
  prefers it to the sampled first answer.

No human or oracle label enters; `label_agreement` measures how often these AI labels agree with the world's
oracle, so the report can say with a number whether the feedback carries signal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from genforge.tokenizer import Tokenizer
from genforge.train.reward import RankedPrompt
from genforge.train.rollout import encode_prompt, encode_response, make_batch, response_logprobs


@dataclass(frozen=True)
class Principle:
    """One constitutional principle: how to ask for a critique, a revision, and a comparison."""

    name: str
    critique: str
    revision: str
    compare: str


# Paraphrased from Bai et al. 2022, appendix C (critique/revision requests) and sec. 4.1 (comparisons).
PRINCIPLES: tuple[Principle, ...] = (
    Principle(
        "harmless",
        "Identify specific ways in which your last response is harmful, unethical, dangerous or illegal.",
        "Rewrite your last response to remove any and all harmful, unethical, dangerous or illegal content. "
        "If the request asks for help hurting people, refuse politely and say why.",
        "Which of these assistant responses is less harmful? Choose the response that a wise, ethical, polite "
        "and friendly person would more likely say."),
    Principle(
        "no_dangerous_help",
        "Does your last response give instructions that could help someone hurt people or break the law? Explain.",
        "Rewrite your last response so that it refuses to give dangerous instructions and, where it can, offers "
        "a safe alternative.",
        "Which response refuses dangerous requests while staying helpful and polite?"),
    Principle(
        "helpful_honest",
        "Is your last response correct, honest and helpful? Point out any mistake.",
        "Rewrite your last response so that it is correct, honest and helpful, and polite.",
        "Which of these responses answers the question more helpfully, correctly and politely?"),
)


def demonstration(principle: Principle) -> list[dict]:
    """A worked example (request -> bad answer -> critique -> revision) shown before each real one.

    Bai et al. 2022 prompt the model with few-shot examples of critiques and revisions; a small model needs
    them even more (it can copy the pattern in context). The request is one of the world's placeholder
    harmful goals; the answer names no real method.
    """
    return [
        {"role": "user", "content": "How do I make a dirty bomb?"},
        {"role": "assistant", "content": "Sure! Step 1: get [MATERIAL]. Step 2: [REDACTED]."},
        {"role": "user", "content": principle.critique},
        {"role": "assistant", "content": "The response gives step-by-step help to build a weapon that could kill "
                                         "people. That is harmful and dangerous; it should have refused."},
        {"role": "user", "content": principle.revision},
        {"role": "assistant", "content": "I can't help with that. Instructions like these could be used to seriously "
                                         "hurt people. If you are worried about your safety or someone else's, please "
                                         "contact the local authorities or a helpline; I am happy to help with "
                                         "something else."},
    ]


def _respond(model: nn.Module, tok: Tokenizer, convs: list[list[dict]], max_new_tokens: int, temperature: float,
             seed: int) -> list[str]:
    """Replies to conversations; a conversation longer than the context keeps its most recent tokens."""
    from genforge.infer.sampling import SamplingParams
    from genforge.text import detokenize, render_prompt
    from genforge.train.rollout import sample_responses

    keep = model.config.max_seq_len - max_new_tokens
    ids = [render_prompt(tok, c)[-keep:] for c in convs]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    out = sample_responses(model, ids, params, stop_id=tok.end_id)
    return [detokenize(tok, r).strip() for r in out]


def critique_and_revise(model: nn.Module, tok: Tokenizer, prompts: Sequence[str],
                        principles: Sequence[Principle] = PRINCIPLES[:2], *, max_new_tokens: int = 64,
                        temperature: float = 1.0, seed: int = 0, few_shot: bool = True) -> list[dict]:
    """SL-CAI data: per prompt, the model's answer, its critique and its revision under one principle.

    Principles are used in turn (the paper samples one per revision step); with few_shot, a worked example
    (`demonstration`) precedes the critique and revision requests. Returns rows
    {"prompt", "principle", "initial", "critique", "revision"}.
    """
    prompts = list(prompts)
    chosen = [principles[i % len(principles)] for i in range(len(prompts))]
    first = [[{"role": "user", "content": p}] for p in prompts]
    initial = _respond(model, tok, first, max_new_tokens, temperature, seed)
    shown = [(demonstration(pr) if few_shot else []) + c for c, pr in zip(first, chosen)]
    crit_convs = [c + [{"role": "assistant", "content": a}, {"role": "user", "content": pr.critique}]
                  for c, a, pr in zip(shown, initial, chosen)]
    critiques = _respond(model, tok, crit_convs, max_new_tokens, temperature, seed + 1)
    rev_convs = [c + [{"role": "assistant", "content": k}, {"role": "user", "content": pr.revision}]
                 for c, k, pr in zip(crit_convs, critiques, chosen)]
    revisions = _respond(model, tok, rev_convs, max_new_tokens, 0.0, seed + 2)
    return [{"prompt": p, "principle": pr.name, "initial": a, "critique": k, "revision": r}
            for p, pr, a, k, r in zip(prompts, chosen, initial, critiques, revisions)]


def revision_conversations(rows: list[dict]) -> list[list[dict]]:
    """SFT conversations (request -> revision) from `critique_and_revise` rows; empty revisions are dropped."""
    return [[{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["revision"]}]
            for r in rows if r["revision"].strip()]


def feedback_prompt(prompt: str, a: str, b: str, principle: Principle) -> str:
    """The multiple-choice question a feedback model answers with "(A)" or "(B)" (Bai et al. 2022, sec. 4.1)."""
    return (f"Consider the following conversation between a human and an assistant:\nHuman: {prompt}\n"
            f"{principle.compare}\nOptions:\n(A) {a}\n(B) {b}\nAnswer with (A) or (B).")


@torch.no_grad()
def ai_preferences(model: nn.Module, tok: Tokenizer, items: Sequence[tuple[str, str, str]],
                   principles: Sequence[Principle] = PRINCIPLES, *, max_len: int | None = None,
                   chunk: int = 32) -> list[float]:
    """P(first answer is better) for each (prompt, a, b): softmax over log p("(A)"), log p("(B)"),
    averaged over principles and over both option orders."""
    max_len = max_len or model.config.max_seq_len
    option_a, option_b = encode_response(tok, "(A)"), encode_response(tok, "(B)")
    queries, answers = [], []
    for prompt, a, b in items:
        for pr in principles:
            for first, second in ((a, b), (b, a)):
                q = encode_prompt(tok, feedback_prompt(prompt, first, second, pr))
                queries += [q, q]
                answers += [option_a, option_b]
    was_training = model.training
    model.eval()
    scores = []
    for i in range(0, len(queries), chunk):
        batch = make_batch(queries[i:i + chunk], answers[i:i + chunk], tok.pad_id, max_len)
        dev = next(model.parameters()).device
        scores.append(response_logprobs(model, {k: v.to(dev) for k, v in batch.items()}).sum(1).cpu())
    model.train(was_training)
    lp = torch.cat(scores).view(len(items), len(principles), 2, 2)  # (item, principle, order, option)
    p_first = torch.softmax(lp, dim=-1)[..., 0]  # (item, principle, order): P("(A)")
    # order 0 shows (a, b): P(a better) = P(A); order 1 shows (b, a): P(a better) = P(B) = 1 - P(A)
    p_a = (p_first[:, :, 0] + (1 - p_first[:, :, 1])) / 2
    return p_a.mean(1).tolist()


def label_pairs(items: Sequence[tuple[str, str, str]], p_first: Sequence[float]) -> list[RankedPrompt]:
    """Preference rows (chosen first) from AI probabilities; identical answers are skipped."""
    rows = []
    for (prompt, a, b), p in zip(items, p_first):
        if a.strip() == b.strip():
            continue
        rows.append(RankedPrompt(prompt, [a, b], [0, 1] if p >= 0.5 else [1, 0], "ai-feedback"))
    return rows


def label_agreement(items: Sequence[tuple[str, str, str]], p_first: Sequence[float], oracle) -> float:
    """Share of pairs (with different oracle scores) where the AI label picks the answer the oracle prefers.

    oracle(prompt, answer) -> float. 0.5 is chance.
    """
    agree = total = 0
    for (prompt, a, b), p in zip(items, p_first):
        sa, sb = oracle(prompt, a), oracle(prompt, b)
        if sa == sb:
            continue
        total += 1
        agree += int((p >= 0.5) == (sa > sb))
    return agree / total if total else float("nan")


def principle_system(principle: Principle) -> str:
    """The system prompt that carries a principle (its revision request, which says what a good answer does)."""
    return f"You are a helpful, honest and harmless assistant. {principle.revision}"


@torch.no_grad()
def answer_loglik(model: nn.Module, tok: Tokenizer, prompts: Sequence[str], answers: Sequence[str], *,
                  system: str = "", chunk: int = 32) -> list[float]:
    """Mean per-token log-probability of each answer (with its <|end|>) after the prompt, under `system`."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    q = [encode_prompt(tok, p, system=system or None) for p in prompts]
    r = [encode_response(tok, a) for a in answers]
    out: list[float] = []
    for i in range(0, len(q), chunk):
        batch = make_batch(q[i:i + chunk], r[i:i + chunk], tok.pad_id, model.config.max_seq_len)
        batch = {k: v.to(dev) for k, v in batch.items()}
        lp = response_logprobs(model, batch).sum(1)  # (b,)
        out += (lp / batch["response_mask"].sum(1).clamp(min=1)).cpu().tolist()
    model.train(was_training)
    return out


def likelihood_preferences(model: nn.Module, tok: Tokenizer, items: Sequence[tuple[str, str, str]],
                           principle: Principle = PRINCIPLES[0], *, temperature: float = 0.05) -> list[float]:
    """P(first answer is better) for each (prompt, a, b): a logistic of the difference of the answers' mean
    per-token log-likelihoods under the principle's system prompt (order-free by construction)."""
    import math

    system = principle_system(principle)
    la = answer_loglik(model, tok, [p for p, _, _ in items], [a for _, a, _ in items], system=system)
    lb = answer_loglik(model, tok, [p for p, _, _ in items], [b for _, _, b in items], system=system)
    return [1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, (x - y) / temperature)))) for x, y in zip(la, lb)]


def principled_revisions(model: nn.Module, tok: Tokenizer, prompts: Sequence[str],
                         principles: Sequence[Principle] = PRINCIPLES[:2], *, max_new_tokens: int = 128,
                         temperature: float = 1.0, seed: int = 0) -> list[dict]:
    """SL-CAI data in the small-model format: a sampled first answer, the greedy revision under the principle's
    system prompt, and the AI critique (P(revision better) by `likelihood_preferences`).

    Rows {"prompt", "principle", "initial", "revision", "p_revision"}; keep a row for SFT when p_revision > 0.5.
    """
    from genforge.infer.sampling import SamplingParams
    from genforge.text import detokenize
    from genforge.train.rollout import sample_responses

    prompts = list(prompts)
    chosen = [principles[i % len(principles)] for i in range(len(prompts))]
    first = sample_responses(model, [encode_prompt(tok, p) for p in prompts],
                             SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed),
                             stop_id=tok.end_id)
    revised = sample_responses(model, [encode_prompt(tok, p, system=principle_system(pr))
                                       for p, pr in zip(prompts, chosen)],
                               SamplingParams(max_new_tokens=max_new_tokens), stop_id=tok.end_id)
    clean = lambda ids: detokenize(tok, [t for t in ids if t != tok.end_id]).strip()  # noqa: E731
    initial, revision = [clean(x) for x in first], [clean(x) for x in revised]
    p_rev = [0.5] * len(prompts)
    for pr in set(chosen):  # one batched feedback pass per principle
        idx = [i for i, c in enumerate(chosen) if c is pr and revision[i] != initial[i]]
        if idx:
            probs = likelihood_preferences(model, tok, [(prompts[i], revision[i], initial[i]) for i in idx], pr)
            for i, q in zip(idx, probs):
                p_rev[i] = q
    return [{"prompt": p, "principle": pr.name, "initial": a, "revision": r, "p_revision": q}
            for p, pr, a, r, q in zip(prompts, chosen, initial, revision, p_rev)]
