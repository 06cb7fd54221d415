"""Alignment losses against values computed by hand (each number below is worked out in the comment)."""

import math

import pytest
import torch

from genforge.train.rl_losses import (
    KLController,
    bradley_terry_loss,
    dpo_loss,
    entropy_from_logits,
    explained_variance,
    gae,
    group_advantages,
    grpo_loss,
    k3_kl,
    kl_penalized_rewards,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    ranking_pairs,
)


def test_ranking_pairs_all_pairs_best_first():
    assert ranking_pairs([2, 0, 1]) == [(2, 0), (2, 1), (0, 1)]
    assert len(ranking_pairs(list(range(5)))) == 10


def test_bradley_terry_by_hand():
    # -log sigmoid(2 - 0) = log(1 + e^-2) = 0.126928; -log sigmoid(0 - 1) = log(1 + e) = 1.313262
    loss = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert loss.tolist() == pytest.approx([0.126928, 1.313262], abs=1e-6)
    # equal scores: log 2 (the model cannot tell the pair apart)
    assert bradley_terry_loss(torch.tensor([0.3]), torch.tensor([0.3])).item() == pytest.approx(math.log(2))


def test_dpo_closed_form():
    # beta 0.1; chosen: 0.1 * (-5 - -6) = 0.1; rejected: 0.1 * (-7 - -6) = -0.1; loss = log(1 + e^-0.2) = 0.598139
    loss, rc, rr = dpo_loss(torch.tensor([-5.0]), torch.tensor([-7.0]), torch.tensor([-6.0]), torch.tensor([-6.0]), 0.1)
    assert loss.item() == pytest.approx(0.598139, abs=1e-6)
    assert rc.item() == pytest.approx(0.1) and rr.item() == pytest.approx(-0.1)


def test_dpo_is_log2_when_policy_equals_reference():
    lp = torch.tensor([-3.0, -12.5, -0.7])
    lr = torch.tensor([-4.0, -1.5, -9.0])
    loss, _, _ = dpo_loss(lp, lr, lp.clone(), lr.clone(), beta=0.5)
    assert torch.allclose(loss, torch.full((3,), math.log(2)))


def test_dpo_gradient_raises_chosen_lowers_rejected():
    pc = torch.tensor([-5.0], requires_grad=True)
    pr = torch.tensor([-5.0], requires_grad=True)
    loss, _, _ = dpo_loss(pc, pr, torch.tensor([-5.0]), torch.tensor([-5.0]), 0.1)
    loss.sum().backward()
    # d/dpc = -beta * sigmoid(-0) = -0.05; d/dpr = +0.05
    assert pc.grad.item() == pytest.approx(-0.05) and pr.grad.item() == pytest.approx(0.05)


def test_ppo_clipped_objective_four_cases():
    # eps 0.2. ratio 1.5, A=+1 -> clipped 1.2 wins (-1.2); ratio 0.5, A=+1 -> unclipped (-0.5);
    # ratio 1.5, A=-1 -> unclipped (+1.5); ratio 0.5, A=-1 -> clipped 0.8 (+0.8). Mean = 0.6 / 4 = 0.15.
    ratio = torch.tensor([[1.5, 0.5, 1.5, 0.5]])
    old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    loss, stats = ppo_policy_loss(ratio.log(), old, adv, torch.ones(1, 4), clip=0.2)
    assert loss.item() == pytest.approx(0.15, abs=1e-6)
    assert stats["clip_frac"].item() == pytest.approx(0.5)


def test_ppo_loss_ignores_masked_tokens_and_gradient_stops_when_clipped():
    logp = torch.tensor([[math.log(1.5), 0.0]], requires_grad=True)
    loss, _ = ppo_policy_loss(logp, torch.zeros(1, 2), torch.tensor([[1.0, 100.0]]), torch.tensor([[1, 0]]))
    assert loss.item() == pytest.approx(-1.2)  # the masked token (A=100) does not count
    loss.backward()
    assert logp.grad.abs().sum().item() == 0.0  # clipped: no gradient pushes the ratio further


def test_value_loss_clipped_by_hand():
    # V=1, V_old=0.5, R=2, eps 0.2: clipped V = 0.7; max((1-2)^2, (0.7-2)^2) = 1.69; * 0.5 = 0.845
    loss, frac = ppo_value_loss(torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.tensor([[2.0]]),
                                torch.ones(1, 1), clip=0.2)
    assert loss.item() == pytest.approx(0.845) and frac.item() == 1.0


def test_gae_toy_trajectory_by_hand():
    # gamma 0.9, lambda 0.8 (gamma * lambda = 0.72)
    # row 0: r = [0, 0, 1], V = [0.5, 0.6, 0.7]
    #   d2 = 1 - 0.7 = 0.3                 A2 = 0.3
    #   d1 = 0.9 * 0.7 - 0.6 = 0.03       A1 = 0.03 + 0.72 * 0.3 = 0.246
    #   d0 = 0.9 * 0.6 - 0.5 = 0.04       A0 = 0.04 + 0.72 * 0.246 = 0.21712
    # row 1 (two tokens, then padding whose value 9.9 must be ignored): r = [0, 2], V = [1.0, 0.5]
    #   d1 = 2 - 0.5 = 1.5                 A1 = 1.5
    #   d0 = 0.9 * 0.5 - 1.0 = -0.55      A0 = -0.55 + 0.72 * 1.5 = 0.53
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [1.0, 0.5, 9.9]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert adv.tolist()[0] == pytest.approx([0.21712, 0.246, 0.3], abs=1e-6)
    assert adv.tolist()[1] == pytest.approx([0.53, 1.5, 0.0], abs=1e-6)
    assert ret.tolist()[0] == pytest.approx([0.71712, 0.846, 1.0], abs=1e-6)
    assert ret.tolist()[1] == pytest.approx([1.53, 2.0, 0.0], abs=1e-6)


def test_gae_lambda_one_gamma_one_is_monte_carlo_return_minus_value():
    rewards = torch.tensor([[0.1, -0.2, 1.0]])
    values = torch.tensor([[0.3, 0.1, -0.4]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    assert ret.tolist()[0] == pytest.approx([0.9, 0.8, 1.0], abs=1e-6)  # reward-to-go


def test_kl_penalized_rewards_score_on_last_token():
    # kl = logp - ref = [0.5, -1.0, pad]; rewards = -0.1 * kl, + score 2 on the last real token
    rewards, kl = kl_penalized_rewards(torch.tensor([2.0]), torch.tensor([[-1.0, -2.0, -3.0]]),
                                       torch.tensor([[-1.5, -1.0, 0.0]]), torch.tensor([[1, 1, 0]]), 0.1)
    assert rewards.tolist()[0] == pytest.approx([-0.05, 2.1, 0.0])
    assert kl.tolist()[0] == pytest.approx([0.5, -1.0, 0.0])


def test_adaptive_kl_controller():
    fixed = KLController(0.1)
    assert fixed.update(100.0, 50) == 0.1
    c = KLController(0.1, target=6.0, horizon=10000)
    # KL 12 is 100 % over target, clipped to +20 %: beta * (1 + 0.2 * 100 / 10000)
    assert c.update(12.0, 100) == pytest.approx(0.1 * 1.002)
    c = KLController(0.1, target=6.0, horizon=100)
    assert c.update(3.0, 10) == pytest.approx(0.1 * (1 - 0.2 * 0.1))  # KL below target lowers beta


def test_group_normalisation():
    # group 1: [1, 0, 0, 1], mean 0.5, sample std sqrt(1/3) = 0.57735 -> +-0.5 / (0.57735 + 1e-4)
    # group 2: all equal -> 0 (no learning signal)
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]), group_size=4)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    assert adv.tolist() == pytest.approx([a, -a, -a, a, 0, 0, 0, 0], abs=1e-6)


def test_k3_kl_by_hand_and_nonnegative():
    # pi = 0.5, pi_ref = 0.25: ratio 0.5 -> 0.5 - log 0.5 - 1 = 0.193147
    assert k3_kl(torch.tensor(math.log(0.5)), torch.tensor(math.log(0.25))).item() == pytest.approx(0.193147, abs=1e-6)
    assert (k3_kl(torch.randn(100), torch.randn(100)) >= 0).all()


def test_grpo_loss_by_hand():
    # seq 0 (A=+1): ratios [1.5, 1.0] -> min(1.5, 1.2) = 1.2 and 1.0 -> -(1.2 + 1.0) / 2 = -1.1
    # seq 1 (A=-1): one token, ratio 0.5 -> min(-0.5, -0.8) = -0.8 -> +0.8 (its padding does not count)
    # mean over sequences: (-1.1 + 0.8) / 2 = -0.15
    logp = torch.tensor([[math.log(1.5), 0.0, 0.0], [math.log(0.5), 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    loss, stats = grpo_loss(logp, torch.zeros(2, 3), logp.clone(), torch.tensor([1.0, -1.0]), mask, 0.2, beta=0.1)
    assert loss.item() == pytest.approx(-0.15, abs=1e-6)
    assert stats["kl"].item() == pytest.approx(0.0)
    # a KL term adds beta * mean k3 per sequence
    ref = torch.full((2, 3), math.log(0.5)) + logp * 0  # arbitrary reference
    loss_kl, _ = grpo_loss(logp, torch.zeros(2, 3), ref, torch.tensor([1.0, -1.0]), mask, 0.2, beta=0.1)
    k = k3_kl(logp, ref)
    expected = -0.15 + 0.1 * 0.5 * ((k[0, 0] + k[0, 1]) / 2 + k[1, 0]).item()
    assert loss_kl.item() == pytest.approx(expected, abs=1e-6)


def test_whiten_entropy_explained_variance():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    m = torch.tensor([[1, 1, 1, 0]])
    w = masked_whiten(x, m)
    assert w[0, :3].mean().item() == pytest.approx(0.0, abs=1e-6) and w[0, 3].item() == 0.0
    assert entropy_from_logits(torch.zeros(3, 8)).tolist() == pytest.approx([math.log(8)] * 3)
    r = torch.tensor([[1.0, 2.0, 3.0]])
    assert explained_variance(r, r, torch.ones(1, 3)).item() == pytest.approx(1.0)
    assert explained_variance(torch.full((1, 3), 2.0), r, torch.ones(1, 3)).item() == pytest.approx(0.0)


def test_dr_grpo_advantages_and_constant_length_norm():
    # Dr. GRPO (Liu et al. 2025): advantages only centred; each sequence's token sum divided by a constant
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]), group_size=4, scale=False)
    assert adv.tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])
    # seq 0 (A=+1, 2 tokens, ratios 1): -(1 + 1) / 4; seq 1 (A=+1, 1 token): -1 / 4; mean -0.375. With the
    # per-answer norm both give -1: the short answer's tokens get twice the weight of the long answer's
    logp, mask = torch.zeros(2, 3), torch.tensor([[1, 1, 0], [1, 0, 0]])
    loss, _ = grpo_loss(logp, logp.clone(), None, torch.tensor([1.0, 1.0]), mask, 0.2, norm_len=4)
    assert loss.item() == pytest.approx(-0.375)
    assert grpo_loss(logp, logp.clone(), None, torch.tensor([1.0, 1.0]), mask, 0.2)[0].item() == pytest.approx(-1.0)
