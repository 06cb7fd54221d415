"""Alignment losses as small functions of scores and log-probs (no models, no data: easy to test by hand).

Reward model: Bradley–Terry over every pair of a ranked list (Ouyang et al. 2022, eq. 1).
DPO: the sigmoid loss against a frozen reference (Rafailov et al. 2023, eq. 7).
PPO: per-token KL penalty to the reference (Ziegler et al. 2019, eq. 2 + the adaptive coefficient),
GAE (Schulman et al. 2016, eqs. 11–16), the clipped surrogate (Schulman et al. 2017, eq. 7) and a clipped
value loss (as in OpenAI baselines / TRL).
GRPO: group-normalised advantages, the k3 KL estimator and the per-sequence-normalised objective
(Shao et al. 2024, eqs. 3–4).

Shapes: B sequences, T response positions, G samples per prompt. `mask` (B, T) is 1 on response tokens
that count (right padding is 0). Log-probs are per token: logp[b, t] = log pi(y_t | x, y_<t).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------- helpers


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over positions where mask is 1 (all of them, or along `dim`)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked positions (population std); masked-out positions become 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution per position: (..., V) -> (...)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var[returns - values] / Var[returns]: 1 is a perfect critic, 0 no better than a constant."""
    var_r = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    diff = returns - values
    var_d = masked_mean((diff - masked_mean(diff, mask)) ** 2, mask)
    return 1.0 - var_d / var_r.clamp(min=1e-8)


# ---------------------------------------------------------------------------- reward model


def ranking_pairs(ranking: Sequence[int]) -> list[tuple[int, int]]:
    """All (better, worse) index pairs of a best-to-worst ranking: K items give K(K-1)/2 pairs."""
    return [(ranking[i], ranking[j]) for i in range(len(ranking)) for j in range(i + 1, len(ranking))]


def bradley_terry_loss(r_better: torch.Tensor, r_worse: torch.Tensor) -> torch.Tensor:
    """Per-pair loss -log sigmoid(r_w - r_l) (Bradley & Terry 1952; Ouyang et al. 2022, eq. 1): (P,) -> (P,)."""
    return -F.logsigmoid(r_better.float() - r_worse.float())


# ---------------------------------------------------------------------------- DPO


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO (Rafailov et al. 2023, eq. 7) from summed sequence log-probs (P,) each.

    Returns (loss per pair, chosen reward, rejected reward), where the implicit reward is
    beta * log(pi(y|x) / pi_ref(y|x)) (their eq. 5) and
    loss = -log sigmoid(reward_chosen - reward_rejected). When the policy equals the reference the loss is log 2.
    """
    chosen = beta * (policy_chosen.float() - ref_chosen.float())  # (P,)
    rejected = beta * (policy_rejected.float() - ref_rejected.float())  # (P,)
    return -F.logsigmoid(chosen - rejected), chosen.detach(), rejected.detach()


# ---------------------------------------------------------------------------- PPO


def kl_penalized_rewards(scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                         kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards r_t = -kl_coef * (log pi - log pi_ref)_t, plus the sequence score on the last token.

    Ziegler et al. 2019, eq. 2: R(x, y) = r(x, y) - beta * log(pi(y|x) / rho(y|x)), spread over tokens so
    that GAE can assign credit. scores (B,), logp/ref_logp/mask (B, T) -> (rewards (B, T), kl (B, T)).
    """
    mask = mask.to(logp.dtype)
    kl = (logp - ref_logp) * mask  # (B, T) the k1 estimator per token
    rewards = -kl_coef * kl
    last = (mask.sum(1).long() - 1).clamp(min=0)  # (B,) index of each row's last response token
    rewards = rewards.clone()
    rewards[torch.arange(len(scores)), last] += scores.to(rewards.dtype)
    return rewards * mask, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, eqs. 11–16) over right-padded rows.

    delta_t = r_t + gamma * V_{t+1} - V_t (V after the last token is 0),
    A_t = delta_t + gamma * lam * A_{t+1}; returns (advantages, returns = A + V), each (B, T), 0 on padding.
    """
    mask = mask.to(values.dtype)
    T = rewards.shape[1]
    adv = torch.zeros_like(values)
    next_adv = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(T)):
        m_next = mask[:, t + 1] if t + 1 < T else torch.zeros_like(mask[:, 0])  # 0 past each row's end
        delta = rewards[:, t] + gamma * next_value * m_next - values[:, t]
        adv[:, t] = delta + gamma * lam * m_next * next_adv
        next_adv, next_value = adv[:, t], values[:, t]
    adv = adv * mask
    return adv, (adv + values) * mask


def ppo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                    clip: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise, averaged over masked tokens.

    L = -min(rho * A, clip(rho, 1 - eps, 1 + eps) * A) with rho = exp(logp - old_logp).
    Stats: clip_frac (share of tokens where the clipped term is the active one), approx_kl (k3 of new vs old).
    """
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)  # (B, T)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_frac = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean(ratio - 1 - log_ratio, mask)
    return loss, {"clip_frac": clip_frac, "approx_kl": approx_kl}


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                   clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss 0.5 * max((V - R)^2, (clip(V, V_old +- eps) - R)^2), masked mean; plus its clip fraction."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    return loss, masked_mean((loss_clipped > loss_unclipped).float(), mask).detach()


class KLController:
    """The KL coefficient beta: fixed, or adapted toward a target KL (Ziegler et al. 2019, sec. 2.2).

    Adaptive: e = clip((KL - target) / target, -0.2, 0.2); beta <- beta * (1 + horizon_gain * e), where
    horizon_gain = n_steps / horizon (their K_beta = 0.1 per step).
    """

    def __init__(self, init: float, target: float | None = None, horizon: int = 10000):
        self.value, self.target, self.horizon = init, target, horizon

    def update(self, kl: float, n_steps: int) -> float:
        if self.target:
            error = max(-0.2, min(0.2, kl / self.target - 1.0))
            self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


# ---------------------------------------------------------------------------- GRPO


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4, scale: bool = True) -> torch.Tensor:
    """(r - mean(group)) / (std(group) + eps) per group of G consecutive samples (Shao et al. 2024, sec. 4.1.2).

    rewards (N*G,) -> (N*G,). A group where every sample got the same reward gets advantage 0 (no signal).
    std is the sample standard deviation (unbiased), as in the DeepSeekMath / TRL implementation. scale=False
    leaves out the division by std (Dr. GRPO, Liu et al. 2025: it up-weights groups that are almost all right or
    all wrong).
    """
    r = rewards.float().view(-1, group_size)  # (N, G)
    centred = r - r.mean(dim=1, keepdim=True)
    if not scale:
        return centred.view(-1)
    std = r.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(r[:, :1])
    return (centred / (std + eps)).view(-1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate pi_ref/pi - log(pi_ref/pi) - 1 >= 0 (Schulman 2020; Shao et al. eq. 4)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None, advantages: torch.Tensor,
              mask: torch.Tensor, clip: float = 0.2, beta: float = 0.0,
              norm_len: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO objective (Shao et al. 2024, eq. 3) as a loss: per sequence, the mean over its tokens of
    -[min(rho A, clip(rho) A) - beta * KL_k3], then the mean over sequences. advantages (B,) are per sequence.

    norm_len: divide each sequence's token sum by this constant instead of by its own length (Dr. GRPO, Liu et
    al. 2025): 1/|o_i| gives a short right answer bigger per-token updates than a long one, which teaches a
    small model to drop its reasoning where a guess is often right (a yes/no answer).
    """
    mask = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)  # (B, T)
    a = advantages[:, None].to(logp.dtype)  # (B, 1) one advantage for every token of the sequence
    surrogate = torch.minimum(ratio * a, torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * a)  # (B, T)
    per_token = -surrogate
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    if beta:
        per_token = per_token + beta * kl
    denom = mask.sum(1).clamp(min=1.0) if norm_len is None else torch.full_like(mask[:, 0], float(norm_len))
    per_seq = (per_token * mask).sum(1) / denom  # (B,) 1/|o_i| sum_t (or 1/norm_len sum_t)
    with torch.no_grad():
        clip_frac = masked_mean(((ratio - 1.0).abs() > clip).float(), mask)
        kl_mean = masked_mean(kl, mask)
    return per_seq.mean(), {"clip_frac": clip_frac, "kl": kl_mean}
