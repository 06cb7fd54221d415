"""The exported tokenizer adds BOS exactly as genforge does: `AutoTokenizer(...)(text)` gives genforge's ids,
the chat template gets no second BOS, and greedy continuations agree between the two stacks."""

import copy

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from genforge.checkpoint import save_checkpoint
from genforge.infer.sampling import SamplingParams
from genforge.text import generate_text, render_prompt
from genforge.tokenizer import Tokenizer

TEXTS = ["The fox 1234 😀 東京", "", "  leading space", "a<|end|>b"]


def test_autotokenizer_adds_bos_like_genforge(tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer
    tok.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        assert hf(text)["input_ids"] == tok.encode(text, add_bos=True) == render_prompt(tok, text)
        assert hf.encode(text, add_special_tokens=False) == tok.encode(text)  # still possible without BOS
    assert hf(TEXTS[:2])["input_ids"] == [tok.encode(t, add_bos=True) for t in TEXTS[:2]]
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    ids = hf.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert list(ids) == tok.encode_chat(msgs, add_generation_prompt=True)[0]  # one BOS, not two
    back = Tokenizer.load(tmp_path)  # genforge reading the file back still adds BOS only when asked
    assert back.encode(TEXTS[0]) == tok.encode(TEXTS[0]) and back.encode_batch(TEXTS) == tok.encode_batch(TEXTS)


def test_greedy_continuation_equal_in_transformers_and_genforge(tiny_tokenizer, tiny_model, tmp_path):
    tok, model = tiny_tokenizer, copy.deepcopy(tiny_model)
    with torch.no_grad():  # an untrained model repeats one token; make its continuation depend on the prompt
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    save_checkpoint(tmp_path / "ck", model, tok)
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "ck")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "ck", dtype=torch.float32).eval()
    for text in ["the cat sat", "Bob lives in"]:
        enc = hf_tok(text, return_tensors="pt")
        out = hf.generate(**enc, max_new_tokens=8, do_sample=False, min_new_tokens=8, eos_token_id=None)
        theirs = hf_tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        ours = generate_text(model, tok, [text], SamplingParams(max_new_tokens=8), stop_ids=[])[0]
        assert ours == theirs
