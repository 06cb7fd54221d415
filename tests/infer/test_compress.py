import copy

import pytest
import torch
import torch.nn as nn

from genforge.errors import ConfigError
from genforge.infer.compress import (
    Int8Linear,
    model_size_bytes,
    prune_magnitude,
    quantize_int8,
    sparsity,
    to_bf16,
)
from genforge.infer.engine import generate
from genforge.infer.sampling import SamplingParams
from genforge.model.gpt import GPT, GPTConfig

CFG = GPTConfig(vocab_size=97, depth=2, width=64, head_dim=16, max_seq_len=64)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPT(CFG).eval()


def test_int8_linear_error_bound():
    torch.manual_seed(0)
    lin = nn.Linear(256, 128, bias=True)
    nn.init.normal_(lin.weight, 0, 0.02)
    q = Int8Linear.from_linear(lin)
    assert q.weight.dtype == torch.int8 and q.scale.shape == (128,)
    assert (lin.weight - q.dequantize()).abs().le(q.scale[:, None] / 2 + 1e-9).all()
    x = torch.randn(32, 256)
    y, yq = lin(x), q(x)
    # the stated bound: |y_i - y'_i| <= s_i / 2 * ||x||_1 for every row and output
    bound = q.scale[None, :] / 2 * x.abs().sum(-1, keepdim=True)
    assert ((y - yq).abs() <= bound + 1e-6).all()
    # relative matmul error of Gaussian weights: < 1 % (about 0.7 % measured)
    rel = ((y - lin.bias) - (yq - lin.bias)).norm() / (y - lin.bias).norm()
    assert rel < 0.01, rel


def test_quantized_model_close_and_smaller(model):
    ids = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        ref = model(ids)
    fp32 = model_size_bytes(model)
    q = quantize_int8(copy.deepcopy(model))
    assert isinstance(q.layers[0].self_attn.q_proj, Int8Linear)
    with torch.no_grad():
        out = q(ids)
    assert (out - ref).norm() / ref.norm() < 0.02
    assert model_size_bytes(q) < 0.6 * fp32  # the embedding (tied head) stays fp32
    assert generate(q, [[1, 2, 3]], SamplingParams(max_new_tokens=5))  # the engine runs it


def test_bf16(model):
    ids = torch.randint(0, 97, (1, 12))
    with torch.no_grad():
        ref = model(ids)
        out = to_bf16(copy.deepcopy(model))(ids).float()
    assert (out - ref).norm() / ref.norm() < 0.05
    assert len(generate(to_bf16(copy.deepcopy(model)), [[4, 5]], SamplingParams(max_new_tokens=4))[0]) == 4


@pytest.mark.parametrize("structured, expect", [(None, 0.5), ("heads", 0.25), ("neurons", 0.5)])
def test_pruned_weights_zero_through_training_and_checkpoint(model, tmp_path, structured, expect):
    from genforge.checkpoint import load_checkpoint, save_checkpoint

    prune_magnitude(model, 0.5, structured)
    zeros = {n: (p == 0) for n, p in model.named_parameters() if "layers" in n}
    s = sparsity(model)
    assert s > 0.05
    if structured is None:
        assert abs(s - expect) < 0.01
    attn = model.layers[0].self_attn
    if structured == "heads":  # half of the 4 heads: their 16 query rows each and 16 output columns all zero
        assert int((attn.q_proj.weight.abs().sum(1) == 0).sum()) == 16 * 2
    # a few AdamW steps with weight decay: pruned entries stay exactly zero
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        ids = torch.randint(0, 97, (2, 16))
        loss = nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    params = dict(model.named_parameters())
    for n, z in zeros.items():
        assert (params[n][z] == 0).all(), n
    assert (params["layers.0.mlp.up_proj.weight"] != 0).any()
    save_checkpoint(tmp_path / "ckpt", model)
    loaded, _, _ = load_checkpoint(tmp_path / "ckpt")
    lp = dict(loaded.named_parameters())
    for n, z in zeros.items():
        assert (lp[n][z] == 0).all(), n
    assert sparsity(loaded) == sparsity(model)
    assert model_size_bytes(loaded, nonzero_only=True) < model_size_bytes(loaded)


def test_prune_errors(model):
    with pytest.raises(ConfigError):
        prune_magnitude(model, 1.0)
    with pytest.raises(ConfigError):
        prune_magnitude(model, 0.5, structured="rows")
