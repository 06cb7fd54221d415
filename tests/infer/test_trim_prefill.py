"""`Engine(trim_prefill=True)`: prefill in length groups gives the padded prefill's cache and logits."""

import torch

from genforge.infer.engine import DecodeSession, Engine
from genforge.infer.sampling import SamplingParams
from genforge.model.gpt import GPT, GPTConfig


def _model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, width=32, depth=2, n_head=4, n_kv_head=2, max_seq_len=128)).eval()


def _prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(1, 64, (n,), generator=g).tolist() for n in (3, 70, 5, 4, 2, 6)]


def test_trimmed_prefill_matches_padded_logits_and_cache():
    model, prompts = _model(), _prompts()
    params = SamplingParams(max_new_tokens=8)
    plain = DecodeSession(Engine(model), prompts, params)
    trimmed = DecodeSession(Engine(model, trim_prefill=True), prompts, params)
    assert torch.allclose(trimmed.logits, plain.logits, atol=1e-5)
    ok = plain.key_ok[None, :, None, :plain.P, None]  # real columns; padding columns may differ (masked)
    assert torch.allclose((trimmed.cache.k[..., :plain.P, :] * ok), (plain.cache.k[..., :plain.P, :] * ok), atol=1e-5)
    assert trimmed.cache.pos == plain.cache.pos == plain.P


def test_trimmed_prefill_decodes_the_same_tokens():
    model, prompts = _model(), _prompts()
    params = SamplingParams(max_new_tokens=12)
    assert Engine(model, trim_prefill=True).generate(prompts, params) == Engine(model).generate(prompts, params)
    sampled = SamplingParams(max_new_tokens=12, temperature=1.0, seed=3)
    assert (Engine(model, trim_prefill=True).generate(prompts, sampled) == Engine(model).generate(prompts, sampled))
