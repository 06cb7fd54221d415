"""Parity against the reference: transformers' LlamaForCausalLM loads our checkpoints with equal logits,
and `genforge import` loads HF's with equal logits (grouped-query attention, tied and untied heads)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from genforge.checkpoint import import_hf, load_checkpoint, save_checkpoint
from genforge.errors import CheckpointError
from genforge.model.gpt import GPT, GPTConfig


@pytest.mark.parametrize("tie", [True, False])
def test_our_checkpoint_loads_in_transformers(tmp_path, tie):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=97, depth=2, width=64, head_dim=16, n_kv_head=2, max_seq_len=64,
                          tie_embeddings=tie)).eval()
    save_checkpoint(tmp_path / "ck", model)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "ck", dtype=torch.float32).eval()
    ids = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("tie,kv", [(True, 2), (False, 1), (False, 4)])
def test_import_hf_llama(tmp_path, tie, kv):
    torch.manual_seed(1)
    hf_cfg = LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv, head_dim=16, max_position_embeddings=64,
                         rope_theta=500.0, rms_norm_eps=1e-6, tie_word_embeddings=tie)
    hf = LlamaForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # non-trivial norm weights so a mapping mistake shows up
        for n, p in hf.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "gf")
    model, _, meta = load_checkpoint(tmp_path / "gf")
    assert model.config.n_kv_head == kv and model.config.tie_embeddings == tie
    assert "imported_from" in meta
    ids = torch.randint(0, 101, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-4, rtol=0)


def test_missing_and_corrupt_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope")
    model = GPT(GPTConfig(vocab_size=50, depth=1, width=32, head_dim=16, max_seq_len=16))
    ck = save_checkpoint(tmp_path / "ck", model)
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(ck)
    (ck / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt JSON"):
        load_checkpoint(ck)
