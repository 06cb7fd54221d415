"""More prophets: Medusa-style heads, several prophets at once; all greedy-identical to plain greedy decoding."""

import torch

from genforge.infer.engine import generate
from genforge.infer.sampling import SamplingParams
from genforge.infer.speculative import (
    HeadsProphet,
    ModelProphet,
    MultiProphet,
    MultiTokenHeads,
    NGramProphet,
    speculative_generate,
)
from genforge.model.gpt import GPT, GPTConfig
from genforge.train.prophets import train_heads
from genforge.train.trainer import TrainConfig


def _model(seed, depth=2, width=64):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=50, depth=depth, width=width, head_dim=16, max_seq_len=128, init_std=0.1)).eval()


def _prompts():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(1, 50, (n,), generator=g).tolist() for n in (1, 6, 15)]


def test_every_prophet_is_greedy_identical(tmp_path):
    target, draft = _model(0), _model(1, depth=1, width=32)
    # heads trained a little on the target's own greedy text, so they propose non-trivially
    text = generate(target, [p for p in _prompts()], SamplingParams(max_new_tokens=60))
    windows = torch.tensor([(p + t)[:32] for p, t in zip(_prompts(), text) if len(p + t) >= 32])
    heads = train_heads(target, windows, TrainConfig(max_steps=30, micro_batch=4, lr=3e-3, warmup_steps=3,
                                                     eval_every=0, progress=False, resume=False), tmp_path / "h")
    hp = HeadsProphet(target, heads)
    multi = MultiProphet([NGramProphet(), HeadsProphet(target, MultiTokenHeads(64, 3)), ModelProphet(draft)])
    params = SamplingParams(max_new_tokens=30)
    for prompt in _prompts():
        ref = generate(target, [prompt], params)[0]
        for prophet in (hp, multi, NGramProphet()):
            out, stats = speculative_generate(target, prophet, prompt, params, k=3)
            assert out == ref, type(prophet).__name__
            assert stats["proposed"] >= stats["accepted"]
    assert sum(multi.chosen) > 0
    hp.close()
    assert not hp._hooks


def test_heads_prophet_accepts_on_repetitive_target_text(tmp_path):
    """On text the heads were trained on, their drafts get accepted (more than one token per target call)."""
    target = _model(0)
    prompt = [1, 2, 3]
    text = generate(target, [prompt], SamplingParams(max_new_tokens=100))[0]
    seq = torch.tensor(prompt + text)
    windows = seq.unfold(0, 24, 4)
    heads = train_heads(target, windows, TrainConfig(max_steps=200, micro_batch=8, lr=1e-2, warmup_steps=10,
                                                     eval_every=0, progress=False, resume=False), tmp_path / "h")
    out, stats = speculative_generate(target, HeadsProphet(target, heads), prompt,
                                      SamplingParams(max_new_tokens=60), k=3)
    assert out == text[:60]
    assert stats["acceptance_rate"] > 0.3 and stats["tokens_per_target_call"] > 1.5
