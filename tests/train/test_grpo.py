"""GRPO on a tiny model: a binary verifiable reward rises; uniform groups carry no gradient; the KL term binds."""

import pytest
import torch

from genforge.errors import ConfigError
from genforge.model.gpt import GPT, GPTConfig
from genforge.train.grpo import GRPOConfig, GRPORollouts, make_loss_fn, train_grpo
from genforge.train.rollout import Reference, encode_prompt, make_policy
from genforge.train.trainer import TrainConfig


class StubTok:
    """ids 0 pad, 1 end; prompt n is [2, 3 + n % 3, 4]: the 'question' is its middle token."""

    pad_id, end_id, vocab_size = 0, 1, 12

    def encode_chat(self, messages, add_generation_prompt=False):
        n = int(messages[-1]["content"])
        return [2, 3 + n % 3, 4], [0, 0, 0]


def tiny_policy(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return make_policy(GPT(GPTConfig(vocab_size=12, depth=1, width=32, head_dim=16, max_seq_len=32)))


def correct(prompts, responses, rows):
    """A toy 'arithmetic' check: the first answer token must be the question token + 4."""
    return [1.0 if r and r[0] == p[1] + 4 else 0.0 for p, r in zip(prompts, responses)]


def grpo_cfg(**kw) -> GRPOConfig:
    train = TrainConfig(micro_batch=16, warmup_steps=0, lr=1e-2, min_lr_ratio=1.0, weight_decay=0.0, eval_every=0,
                        ckpt_every=0, log_every=1, progress=False, seed=0)
    base = dict(rollouts=15, rollout_prompts=4, group_size=16, epochs=1, max_new_tokens=4, beta=0.0, train=train)
    return GRPOConfig(**{**base, **kw})


def test_grpo_raises_a_verifiable_reward(tmp_path):
    torch.set_num_threads(1)
    prompts = [{"prompt": str(i)} for i in range(6)]
    result, history = train_grpo(tiny_policy(), StubTok(), prompts, correct, grpo_cfg(), tmp_path / "g")
    scores = [h["score"] for h in history]
    assert scores[0] < 0.3 and sum(scores[-3:]) / 3 > 0.7, [round(s, 2) for s in scores]
    assert result["step"] == 15 * 4  # rollouts x (64 responses / minibatch of 16)
    assert (tmp_path / "g" / "checkpoint" / "model.safetensors").exists()


def test_groups_are_consecutive_and_uniform_groups_give_no_gradient(tmp_path):
    torch.set_num_threads(1)
    policy = tiny_policy()
    cfg = grpo_cfg(rollout_prompts=2, group_size=8)
    prompts = [{"prompt": str(i)} for i in range(6)]
    ids = [encode_prompt(StubTok(), r["prompt"]) for r in prompts]
    source = GRPORollouts(policy, None, ids, prompts, lambda p, r, rows: [1.0] * len(r), cfg, cfg.train,
                          pad_id=0, stop_id=1, group_size=8)
    batch = source.get_batch(0, 0, 0, 1)
    heads = source.buffer["input_ids"][:, :3].view(2, 8, 3)  # prompt columns of the 2 groups
    assert (heads == heads[:, :1]).all()  # 8 consecutive samples of one prompt
    assert (batch["advantages"] == 0).all() and source.history[0]["zero_std_groups"] == 1.0
    loss, _, _ = make_loss_fn(cfg)(policy, batch)
    loss.backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in policy.parameters())


def test_kl_term_keeps_policy_closer_and_group_size_checked(tmp_path):
    torch.set_num_threads(1)
    prompts = [{"prompt": str(i)} for i in range(6)]
    _, free = train_grpo(tiny_policy(), StubTok(), prompts, correct, grpo_cfg(rollouts=8, beta=1e-6), tmp_path / "a")
    _, tied = train_grpo(tiny_policy(), StubTok(), prompts, correct, grpo_cfg(rollouts=8, beta=2.0), tmp_path / "b")
    assert tied[-1]["kl"] < free[-1]["kl"]
    assert isinstance(Reference(tiny_policy()).frozen, torch.nn.Module)
    with pytest.raises(ConfigError, match="group_size must be >= 2"):
        train_grpo(tiny_policy(), StubTok(), prompts, correct, grpo_cfg(group_size=1), tmp_path / "c")
    with pytest.raises(ConfigError, match="grpo.epochs=0"):  # the stage's `grpo.epochs` reaches this check
        train_grpo(tiny_policy(), StubTok(), prompts, correct, grpo_cfg(epochs=0), tmp_path / "d")
