"""Imported families are usable, not just loadable: full and LoRA fine-tuning through `run_sft` lower the loss,
the results generate, and a LoRA adapter trained on an imported model loads in `peft` on the original Hugging
Face checkpoint with equal logits and equal greedy tokens."""

import pytest
import torch
import transformers

from genforge.checkpoint import import_hf, load_checkpoint, save_checkpoint
from genforge.data.sft_data import SFTData, encode_conversations
from genforge.infer.engine import Engine
from genforge.infer.sampling import SamplingParams
from genforge.model import peft as gpeft
from genforge.text import generate_text
from genforge.train.sft import PEFTConfig, SFTConfig, make_val_fn, run_sft
from genforge.train.trainer import TrainConfig
from tests.model.test_hf_families import make_hf

peft_lib = pytest.importorskip("peft")

CONVS = [[{"role": "user", "content": f"What is {a} plus {b}?"}, {"role": "assistant", "content": f"{a + b}."}]
         for a, b in [(1, 2), (3, 4), (5, 1), (2, 2), (7, 1), (4, 4), (6, 3), (8, 0)]]
FAMILIES = ["llama-head_dim-bias", "mistral-sliding", "qwen2-bias", "qwen3-qknorm", "gemma", "gemma2", "phi3"]


def _loss(model, tok) -> float:
    enc = encode_conversations(tok, CONVS, 64)
    with torch.no_grad():
        return make_val_fn(SFTData(enc.examples, 8, tok.pad_id))(model)["val_loss"]


def _sft(model, tok, out, method):
    cfg = SFTConfig(init_from="", out_dir=str(out),
                    train=TrainConfig(max_steps=15, micro_batch=8, warmup_steps=2, eval_every=0, ckpt_every=0,
                                      log_every=100, progress=False),
                    peft=PEFTConfig(method=method, r=4, alpha=8.0))
    return run_sft(model, tok, CONVS, cfg)[0]


@pytest.mark.parametrize("name", FAMILIES)
def test_full_finetune_and_generate(tmp_path, tiny_tokenizer, name):
    tok = tiny_tokenizer
    make_hf(tmp_path, name, vocab_size=tok.vocab_size)
    import_hf(tmp_path / "hf", tmp_path / "gf")
    model, _, _ = load_checkpoint(tmp_path / "gf")
    before = _loss(model, tok)
    trained = _sft(model.train(), tok, tmp_path / "sft", "full").eval()
    assert _loss(trained, tok) < before - 1.0  # measured drops: 2.9 (Gemma 2) to 6.1 nats
    # the saved fine-tune is a checkpoint of the same family that transformers loads with equal logits
    ft, _, _ = load_checkpoint(tmp_path / "sft" / "checkpoint")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "sft" / "checkpoint", dtype=torch.float32)
    ids = torch.tensor([tok.encode("What is 3 plus 4?", add_bos=True)])
    with torch.no_grad():
        torch.testing.assert_close(ft(ids), hf.eval()(ids).logits, atol=1e-4, rtol=0)
    assert isinstance(generate_text(ft, tok, ["What is 3 plus 4?"], SamplingParams(max_new_tokens=6)), list)


@pytest.mark.parametrize("name", FAMILIES)
def test_lora_finetune_loads_in_peft_on_the_original_checkpoint(tmp_path, tiny_tokenizer, name):
    tok = tiny_tokenizer
    make_hf(tmp_path, name, vocab_size=tok.vocab_size)
    import_hf(tmp_path / "hf", tmp_path / "gf")
    model, _, _ = load_checkpoint(tmp_path / "gf")
    # Phi-3 fuses q/k/v and gate/up, which genforge splits: its adapters target the split (Llama-layout) export
    base = tmp_path / "hf"
    if name == "phi3":
        base = save_checkpoint(tmp_path / "base", model)
    before = _loss(model, tok)
    lora = _sft(model.train(), tok, tmp_path / "sft", "lora").eval()
    assert _loss(lora, tok) < before - 1.0  # measured drops: 2.1 (Gemma 2) to 5.2 nats
    gpeft.save_lora(lora, tmp_path / "adapter", base_model_name_or_path=str(base))
    hf = peft_lib.PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), str(tmp_path / "adapter")).eval()
    prompt = tok.encode("What is 3 plus 4?", add_bos=True)
    with torch.no_grad():
        torch.testing.assert_close(lora(torch.tensor([prompt])), hf(input_ids=torch.tensor([prompt])).logits,
                                   atol=1e-4, rtol=0)
        ref = hf.generate(input_ids=torch.tensor([prompt]), max_new_tokens=6, min_new_tokens=6, do_sample=False,
                          eos_token_id=None, pad_token_id=tok.pad_id)[0, len(prompt):].tolist()
    assert Engine(lora).generate([prompt], SamplingParams(max_new_tokens=6))[0] == ref


def test_phi3_lora_loads_in_peft_on_the_original_fused_checkpoint(tmp_path, tiny_tokenizer):
    """Adapters on the split q/k/v and gate/up become one fused-rank adapter per fused matrix (exact)."""
    from genforge.checkpoint.hf_phi3 import save_lora_phi3

    tok = tiny_tokenizer
    make_hf(tmp_path, "phi3", vocab_size=tok.vocab_size)
    import_hf(tmp_path / "hf", tmp_path / "gf")
    model, _, _ = load_checkpoint(tmp_path / "gf")
    # q, v, up and down only: k and gate get zero blocks in the fused adapters
    lora = gpeft.apply_lora(model, r=4, alpha=12, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in gpeft.lora_modules(lora).values():
            m.lora_B["default"].weight.copy_(torch.randn(m.lora_B["default"].weight.shape, generator=g) * 0.2)
    save_lora_phi3(lora, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "hf"))
    hf = peft_lib.PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32),
        str(tmp_path / "adapter")).eval()
    assert type(hf.base_model.model).__name__ == "Phi3ForCausalLM"
    ids = torch.tensor([tok.encode("What is 3 plus 4?", add_bos=True)])
    with torch.no_grad():
        want = lora.eval()(ids)
        with gpeft.use_adapter(lora, None):
            assert not torch.allclose(want, lora(ids), atol=1e-3)  # the adapter does something
        torch.testing.assert_close(hf(input_ids=ids).logits, want, atol=1e-4, rtol=0)
