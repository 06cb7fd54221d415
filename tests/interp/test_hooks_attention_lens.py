"""Hooks, recomputed attention weights and the logit lens, against the model itself and against nnsight on
the same checkpoint loaded by transformers."""

import pytest
import torch

from genforge.errors import ConfigError
from genforge.interp.attention import attention_weights, check_reconstruction
from genforge.interp.hooks import capture, features_at, residual_stream
from genforge.interp.logit_lens import agreement_by_layer, logit_lens
from genforge.model.gpt import GPT, GPTConfig


@pytest.fixture
def model():
    torch.manual_seed(0)
    # grouped-query heads (4 query, 2 kv) and a large init so attention is far from uniform
    cfg = GPTConfig(vocab_size=97, depth=3, width=64, head_dim=16, n_kv_head=2, max_seq_len=64, init_std=0.2)
    m = GPT(cfg).eval()
    with torch.no_grad():  # non-trivial norm gains so a lens that skips the final norm would differ
        for n, p in m.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.3)
    return m


def test_residual_stream_ends_in_the_models_logits(model):
    ids = torch.randint(0, 97, (2, 12))
    hs = residual_stream(model, ids)
    assert hs.shape == (4, 2, 12, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.lm_head(model.norm(hs[-1])), model(ids))
        torch.testing.assert_close(hs[0], model.embed_tokens(ids))
    lens = logit_lens(model, ids)
    torch.testing.assert_close(lens[-1], torch.log_softmax(model(ids), -1).detach(), atol=1e-5, rtol=0)
    same, nxt = agreement_by_layer(model, ids)
    assert same.shape == nxt.shape == (4, 2, 11) and same[-1].all()


def test_capture_any_module_and_remove_hooks(model):
    ids = torch.randint(0, 97, (1, 8))
    with capture(model, ["layers.1.mlp", "norm"]) as seen:
        model(ids)
        model(ids)
    assert len(seen["layers.1.mlp"]) == 2 and seen["norm"][0].shape == (1, 8, 64)
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ConfigError, match="no module 'layers.9.mlp'"):
        with capture(model, ["layers.9.mlp"]):
            pass


def test_features_at_right_padding_equals_unpadded(model):
    seqs = [[1, 5, 9, 11], [1, 7], [1, 3, 3, 3, 3, 8]]
    f = features_at(model, seqs, [-1, -1, 2], batch_size=2)
    assert f.shape == (4, 3, 64)
    alone = residual_stream(model, torch.tensor([seqs[1]]))[:, 0, -1]
    torch.testing.assert_close(f[:, 1], alone, atol=1e-5, rtol=0)


def test_attention_weights_reproduce_the_module_output(model):
    ids = torch.randint(0, 97, (2, 16))
    w = attention_weights(model, ids)
    assert w.shape == (3, 2, 4, 16, 16)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 2, 4, 16))
    assert float(w.triu(1).abs().max()) == 0.0  # causal
    assert check_reconstruction(model, ids) < 1e-5
    # padded batch: the mask path too
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, :5] = 0
    assert check_reconstruction(model, ids, mask) < 1e-5


def test_a_wrong_recomputation_is_caught(model, monkeypatch):
    """The check can fail: scaling by the wrong head size breaks the reconstruction."""
    import genforge.interp.attention as att

    monkeypatch.setattr(att.math, "sqrt", lambda d: 1.0)
    assert check_reconstruction(model, torch.randint(0, 97, (1, 10))) > 1e-3


def test_logit_lens_equals_nnsight_on_the_hf_loaded_checkpoint(model, tmp_path):
    """The same checkpoint in transformers' LlamaForCausalLM, residuals read by nnsight, decoded through HF's
    final norm and head: every layer's lens equals ours."""
    from nnsight import NNsight  # the interp extra (part of dev)
    from transformers import LlamaForCausalLM

    from genforge.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "ck", model)
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "ck", dtype=torch.float32).eval()
    ids = torch.randint(0, 97, (2, 14))
    traced = NNsight(hf)
    saved = []
    with traced.trace(ids):
        saved.append(traced.model.embed_tokens.output.save())
        for layer in traced.model.layers:
            saved.append(layer.output.save())
    with torch.no_grad():
        theirs = torch.stack([torch.log_softmax(hf.lm_head(hf.model.norm(h if torch.is_tensor(h) else h[0])), -1)
                              for h in saved])
    ours = logit_lens(model, ids)
    assert ours.shape == theirs.shape == (4, 2, 14, 97)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    assert (ours[0] - ours[-1]).abs().max() > 0.1  # the layers do differ: the comparison is not vacuous
