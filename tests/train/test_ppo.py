"""PPO on a tiny model: a trivial verifiable reward ("emit token 5") rises; NaN rewards are skipped, then fatal."""

import pytest
import torch

from genforge.errors import ConfigError, TrainingError
from genforge.model.gpt import GPT, GPTConfig
from genforge.train.ppo import PPOConfig, train_ppo
from genforge.train.rollout import make_policy
from genforge.train.trainer import TrainConfig, read_metrics


class StubTok:
    """The little of a tokenizer that the RL stages use: ids 0 pad, 1 end; a prompt is a fixed 3-token chat head."""

    pad_id, end_id, vocab_size = 0, 1, 12

    def encode_chat(self, messages, add_generation_prompt=False):
        n = int(messages[-1]["content"])
        return [2, 3 + n % 3, 4], [0, 0, 0]

    def decode(self, ids):
        return " ".join(map(str, ids))


def tiny_policy(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return make_policy(GPT(GPTConfig(vocab_size=12, depth=1, width=32, head_dim=16, max_seq_len=32)))


def share_of_fives(prompts, responses, rows):
    return [sum(t == 5 for t in r) / max(1, len(r)) for r in responses]


def ppo_cfg(**kw) -> PPOConfig:
    train = TrainConfig(micro_batch=8, warmup_steps=0, lr=3e-3, min_lr_ratio=1.0, weight_decay=0.0, eval_every=0,
                        ckpt_every=0, log_every=1, progress=False, seed=0)
    base = dict(rollouts=12, rollout_prompts=16, epochs=2, max_new_tokens=8, kl_coef=0.0, train=train)
    return PPOConfig(**{**base, **kw})


def test_ppo_raises_a_trivial_verifiable_reward(tmp_path):
    torch.set_num_threads(1)
    prompts = [{"prompt": str(i)} for i in range(6)]
    result, history = train_ppo(tiny_policy(), StubTok(), prompts, share_of_fives, ppo_cfg(), tmp_path / "ppo")
    first, last = history[0]["score"], sum(h["score"] for h in history[-2:]) / 2
    assert first < 0.25 and last > 0.6, [round(h["score"], 2) for h in history]
    assert result["step"] == 12 * 2 * 2  # rollouts x epochs x (16 responses / minibatch of 8)
    logged = read_metrics(tmp_path / "ppo")
    for key in ("score", "kl", "entropy", "clip_frac", "value_loss", "explained_var", "policy_loss"):
        assert key in logged[-1], key
    assert (tmp_path / "ppo" / "checkpoint" / "value_head.safetensors").exists()


def test_kl_penalty_keeps_the_policy_near_the_reference(tmp_path):
    """Same run with a strong KL coefficient: less KL, and less reward, than without it."""
    torch.set_num_threads(1)
    prompts = [{"prompt": str(i)} for i in range(6)]
    _, free = train_ppo(tiny_policy(), StubTok(), prompts, share_of_fives, ppo_cfg(rollouts=6), tmp_path / "a")
    _, tied = train_ppo(tiny_policy(), StubTok(), prompts, share_of_fives, ppo_cfg(rollouts=6, kl_coef=1.0),
                        tmp_path / "b")
    assert tied[-1]["kl"] < free[-1]["kl"]
    assert free[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # the first rollout comes from the reference itself


def test_nan_reward_skips_the_step_then_stops(tmp_path):
    torch.set_num_threads(1)
    prompts = [{"prompt": str(i)} for i in range(4)]
    calls = []

    def flaky(p, responses, rows):  # NaN on the first call only
        calls.append(1)
        return [float("nan")] * len(responses) if len(calls) == 1 else share_of_fives(p, responses, rows)

    result, history = train_ppo(tiny_policy(), StubTok(), prompts, flaky, ppo_cfg(rollouts=2), tmp_path / "a")
    assert result["bad_steps"] == 1 and len(history) >= 2
    assert read_metrics(tmp_path / "a")[0].get("skipped") == 1

    def broken(p, responses, rows):
        return [float("nan")] * len(responses)

    with pytest.raises(TrainingError, match=r"returned NaN/inf in 3 rollouts \(max_nan_rewards=2\)"):
        train_ppo(tiny_policy(), StubTok(), prompts, broken, ppo_cfg(rollouts=2, max_nan_rewards=2), tmp_path / "b")


def test_rollout_size_must_fill_minibatches(tmp_path):
    with pytest.raises(ConfigError, match="multiple of train.micro_batch"):
        train_ppo(tiny_policy(), StubTok(), [{"prompt": "1"}], share_of_fives, ppo_cfg(rollout_prompts=12),
                  tmp_path / "c")


def test_resume_mid_rollout_is_exact(tmp_path):
    """Stop in the middle of a rollout's minibatch steps, resume, and land on the same weights as a straight run."""
    torch.set_num_threads(1)
    prompts = [{"prompt": str(i)} for i in range(6)]
    straight = tiny_policy()
    train_ppo(straight, StubTok(), prompts, share_of_fives, ppo_cfg(rollouts=3, kl_coef=0.1, kl_target=1.0),
              tmp_path / "a")
    first = ppo_cfg(rollouts=0, kl_coef=0.1, kl_target=1.0)
    first.train.max_steps = 6  # the second rollout has 4 steps; stop after 2 of them
    train_ppo(tiny_policy(), StubTok(), prompts, share_of_fives, first, tmp_path / "b")
    resumed = tiny_policy()
    _, history = train_ppo(resumed, StubTok(), prompts, share_of_fives,
                           ppo_cfg(rollouts=3, kl_coef=0.1, kl_target=1.0), tmp_path / "b")
    assert len(history) == 3  # the buffer and the statistics came back with the checkpoint
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
