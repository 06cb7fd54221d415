"""LoRA (and prompt tuning) adapters move between genforge and Hugging Face `peft` with equal logits."""

import copy
import json

import pytest
import torch

from genforge.checkpoint import load_model, save_checkpoint
from genforge.errors import CheckpointError
from genforge.model import peft as gpeft
from genforge.model.gpt import GPT, GPTConfig

peft_lib = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

CFG = GPTConfig(vocab_size=97, depth=2, width=64, head_dim=16, n_kv_head=2, max_seq_len=64)


def _ids():
    return torch.randint(0, CFG.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))


def _nonzero_lora(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in gpeft.lora_modules(model).values():
            for name in m.lora_B:
                m.lora_B[name].weight.copy_(torch.randn(m.lora_B[name].weight.shape, generator=g) * 0.2)


def _hf_logits(model, x):
    with torch.no_grad():
        return model(input_ids=x).logits


def test_genforge_lora_loads_in_peft_with_equal_logits(tmp_path):
    torch.manual_seed(0)
    base = GPT(CFG).eval()
    save_checkpoint(tmp_path / "base", base)
    model = gpeft.apply_lora(copy.deepcopy(base), r=4, alpha=12, target_modules=["q_proj", "v_proj", "down_proj"])
    _nonzero_lora(model)
    gpeft.save_lora(model, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"))
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM" and cfg["r"] == 4
    assert cfg["lora_alpha"] == 12 and sorted(cfg["target_modules"]) == ["down_proj", "q_proj", "v_proj"]
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys

    hf_base = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"))
    hf = peft_lib.PeftModel.from_pretrained(hf_base, str(tmp_path / "adapter")).eval()
    x = _ids()
    want = model(x).detach()
    assert not torch.allclose(want, base(x), atol=1e-3)  # the adapter does something
    torch.testing.assert_close(_hf_logits(hf, x), want, atol=1e-4, rtol=1e-4)


def test_peft_lora_loads_in_genforge_with_equal_logits(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf_cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                         tie_word_embeddings=False, rms_norm_eps=1e-5)
    hf_base = LlamaForCausalLM(hf_cfg).eval()
    hf_base.save_pretrained(str(tmp_path / "base"))
    lcfg = peft_lib.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "up_proj", "lm_head"],
                               lora_dropout=0.0, task_type="CAUSAL_LM",
                               alpha_pattern={"up_proj": 16})  # a per-module alpha, as peft allows
    hf = peft_lib.get_peft_model(hf_base, lcfg).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    hf.save_pretrained(str(tmp_path / "adapter"))
    x = _ids()
    want = _hf_logits(hf, x)

    model = gpeft.load_lora(load_model(tmp_path / "base"), tmp_path / "adapter")
    assert sorted(n.rsplit(".", 1)[-1] for n in gpeft.lora_modules(model)) == sorted(
        ["q_proj", "k_proj", "up_proj"] * 2 + ["lm_head"])
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, atol=1e-4, rtol=1e-4)
        with gpeft.use_adapter(model, None):  # and with no adapter selected, the plain base
            torch.testing.assert_close(model(x), load_model(tmp_path / "base")(x))


def test_adapter_for_another_base_is_refused(tmp_path):
    torch.manual_seed(0)
    small = GPT(GPTConfig(vocab_size=97, depth=2, width=32, head_dim=16, max_seq_len=64, tie_embeddings=False))
    model = gpeft.apply_lora(small, r=2, target_modules=["q_proj", "lm_head"])
    gpeft.save_lora(model, tmp_path / "a")
    # genforge-saved: the base fingerprint names the mismatch
    with pytest.raises(CheckpointError, match="width 32 vs 64"):
        gpeft.load_lora(GPT(CFG), tmp_path / "a")
    # peft-saved (no fingerprint): the shapes name it
    f = tmp_path / "a" / "adapter_model.safetensors"
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(f)), str(f))  # drop the metadata
    with pytest.raises(CheckpointError, match=r"lm_head does not fit the model: input size 32 vs 64"):
        gpeft.load_lora(GPT(GPTConfig(vocab_size=97, depth=2, width=64, head_dim=16, max_seq_len=64,
                                      tie_embeddings=False)), tmp_path / "a")
    with pytest.raises(CheckpointError, match=r"output size 97 vs 120 \(vocab size\)"):
        gpeft.load_lora(GPT(GPTConfig(vocab_size=120, depth=2, width=32, head_dim=16, max_seq_len=64,
                                      tie_embeddings=False)), tmp_path / "a")
    with pytest.raises(CheckpointError, match="lacks"):
        gpeft.load_lora(GPT(GPTConfig(vocab_size=97, depth=1, width=32, head_dim=16, max_seq_len=64,
                                      tie_embeddings=False)), tmp_path / "a")


def test_prompt_tuning_matches_peft(tmp_path):
    torch.manual_seed(0)
    base = GPT(CFG).eval()
    save_checkpoint(tmp_path / "base", base)
    pt = gpeft.PromptTuning(copy.deepcopy(base), 4, seed=1)
    gpeft.save_prompt_tuning(pt, tmp_path / "pt")
    hf_base = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"))
    hf = peft_lib.PeftModel.from_pretrained(hf_base, str(tmp_path / "pt")).eval()
    x = _ids()
    with torch.no_grad():
        got = hf(input_ids=x, attention_mask=torch.ones_like(x)).logits[:, 4:]  # peft returns virtual positions too
        torch.testing.assert_close(got, pt(x), atol=1e-4, rtol=1e-4)


def test_lora_with_trainable_token_rows_loads_in_peft_and_back(tmp_path):
    """Trained embedding rows (peft's trainable_token_indices) with a tied head: equal logits in peft and after a
    round trip; merging writes the rows into the (shared) embedding."""
    torch.manual_seed(0)
    base = GPT(CFG).eval()  # tie_embeddings: the head follows the trained rows
    save_checkpoint(tmp_path / "base", base)
    rows = [5, 3, 40]
    model = gpeft.apply_lora(copy.deepcopy(base), r=4, alpha=8, target_modules=["q_proj", "up_proj"],
                             trainable_token_indices=rows)
    _nonzero_lora(model)
    with torch.no_grad():
        model.embed_tokens.trainable_tokens_delta["default"].add_(torch.randn(3, CFG.width) * 0.5)
    gpeft.save_lora(model, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"))
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["trainable_token_indices"] == {"embed_tokens": rows}
    x = torch.tensor([[5, 3, 40, 7, 5, 1]])
    want = model(x).detach()
    lora_only = copy.deepcopy(model)
    with torch.no_grad():  # the rows matter: put their base values back and the logits change
        lora_only.embed_tokens.trainable_tokens_delta["default"].copy_(base.embed_tokens.weight[rows])
    assert not torch.allclose(lora_only(x), want, atol=1e-3)

    hf_base = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"))
    hf = peft_lib.PeftModel.from_pretrained(hf_base, str(tmp_path / "adapter")).eval()
    torch.testing.assert_close(_hf_logits(hf, x), want, atol=1e-4, rtol=1e-4)

    again = gpeft.load_lora(copy.deepcopy(base), tmp_path / "adapter")
    torch.testing.assert_close(again(x), want)
    merged = gpeft.merge_and_unload(again)
    assert isinstance(merged.embed_tokens, torch.nn.Embedding) and merged.lm_head.weight is merged.embed_tokens.weight
    torch.testing.assert_close(merged(x), want, atol=1e-5, rtol=1e-5)
