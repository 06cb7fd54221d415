"""Prompt search by reinforcement learning: a small generator policy proposes instruction prefixes, the reward is
the target model's task score with that instruction, and the policy is trained with the project's GRPO loss.

This is RLPrompt (Deng et al. 2022) cut to what a CPU affords in seconds. RLPrompt's actor is a frozen small LM
with a trainable MLP that picks prompt tokens; here the actor is the minimal policy of the same kind: `slots`
independent categorical choices over a phrase vocabulary (instruction phrases, the prompt variants, the trigger
phrases), so a prompt is a short sequence of phrases and log pi(prompt) is the sum over its slots. The update is
`train.rl_losses.grpo_loss` with group-normalised advantages (`group_advantages`, Shao et al. 2024): each step
samples a group of prompts, scores each on a minibatch of dev items, and raises the log-probability of the
prompts that scored above the group's mean. With one slot this is REINFORCE with a mean baseline over phrases.

The comparison that matters is against APE (`prompting.prompt_search`) at an equal number of target-model calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from genforge.train.rl_losses import group_advantages, grpo_loss

# The default phrase vocabulary: instruction pieces of the world's own phrasings, the prompt variants and the
# machine-found trigger. "" lets a slot say nothing (so shorter prompts are reachable).
PHRASES = ("", "Answer the question.", "Think step by step.", "Let's think step by step.",
           "Take a deep breath and work on this problem step-by-step.", "Give only the final answer.",
           "End with 'The answer is X.'", "Explain your reasoning first.", "Be brief.", "Read carefully.",
           "This is very important to my career.", "Answer by starting with 'Analysis:'.")


class PromptPolicy(nn.Module):
    """`slots` categorical distributions over `n_phrases` phrases; logits (slots, n_phrases) start at 0 (uniform)."""

    def __init__(self, slots: int, n_phrases: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(slots, n_phrases))

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, slots) phrase indices."""
        probs = torch.softmax(self.logits.detach(), -1)  # (slots, V)
        return torch.stack([torch.multinomial(p, n, replacement=True, generator=generator) for p in probs], 1)

    def logprobs(self, idx: torch.Tensor) -> torch.Tensor:
        """(n, slots) log pi(phrase_k | slot k) of the chosen phrases."""
        logp = torch.log_softmax(self.logits, -1)  # (slots, V)
        return logp.gather(1, idx.T).T

    def greedy(self) -> torch.Tensor:
        return self.logits.argmax(-1)


def render(phrases: Sequence[str], idx: Sequence[int]) -> str:
    """The instruction: the chosen phrases in slot order, empty ones and immediate repeats dropped."""
    out: list[str] = []
    for i in idx:
        p = phrases[int(i)]
        if p and (not out or out[-1] != p):
            out.append(p)
    return " ".join(out)


@dataclass
class RLPromptConfig:
    slots: int = 2  # phrases per instruction
    steps: int = 12  # policy updates
    group: int = 6  # prompts sampled per step (the GRPO group)
    lr: float = 0.5  # Adam on the logits
    epochs: int = 2  # gradient steps per group (PPO-style reuse; the clip keeps them close to the sampler)
    clip: float = 0.2
    seed: int = 0


def rl_prompt_search(score: Callable[[list[str], int], list[float]], phrases: Sequence[str] = PHRASES,
                     cfg: RLPromptConfig | None = None) -> dict:
    """Train the policy; `score(instructions, step)` returns each instruction's task score on that step's minibatch.

    Each step scores the distinct instructions of its group once (so a collapsed policy costs fewer calls).
    Returns {"curve": mean reward per step, "best": the instruction with the highest reward seen (earliest on
    ties), "best_reward", "greedy": the policy's most likely instruction at the end, "evaluated": distinct
    instructions scored per step, "probs": final per-slot probabilities}.
    """
    cfg = cfg or RLPromptConfig()
    gen = torch.Generator().manual_seed(cfg.seed)
    policy = PromptPolicy(cfg.slots, len(phrases))
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    curve, evaluated, best, best_reward = [], [], "", float("-inf")
    for step in range(cfg.steps):
        idx = policy.sample(cfg.group, gen)  # (G, slots)
        texts = [render(phrases, row.tolist()) for row in idx]
        unique = list(dict.fromkeys(texts))
        got = dict(zip(unique, score(unique, step)))
        rewards = torch.tensor([got[t] for t in texts], dtype=torch.float32)  # (G,)
        for t in unique:
            if got[t] > best_reward:
                best, best_reward = t, got[t]
        curve.append(float(rewards.mean()))
        evaluated.append(len(unique))
        adv = group_advantages(rewards, cfg.group)  # (G,)
        old = policy.logprobs(idx).detach()  # (G, slots)
        mask = torch.ones_like(old)
        for _ in range(cfg.epochs):
            loss, _ = grpo_loss(policy.logprobs(idx), old, None, adv, mask, clip=cfg.clip)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {"curve": curve, "best": best, "best_reward": best_reward,
            "greedy": render(phrases, policy.greedy().tolist()), "evaluated": evaluated,
            "probs": torch.softmax(policy.logits.detach(), -1).tolist()}
