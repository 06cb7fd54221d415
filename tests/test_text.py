"""The text layer: prompt rendering, the one streaming detokeniser, generate_text == joined stream_text."""

import pytest
import torch

from genforge.infer.engine import Engine, generate
from genforge.infer.sampling import SamplingParams
from genforge.model.gpt import GPT, GPTConfig
from genforge.text import (
    StreamDecoder,
    cut_at_stop,
    detokenize,
    generate_text,
    render_prompt,
    stop_ids_for,
    stream_text,
)
from genforge.tokenizer import TokenizerConfig, train_tokenizer


@pytest.fixture(scope="module")
def tok_model():
    texts = ["the cat sat on the mat. " * 3, "a dog ran to the park! ", "Q: what is 2+2? A: 4\n",
             "héllo wörld 你好 🙂"] * 20
    tok = train_tokenizer(texts, TokenizerConfig(vocab_size=300))
    torch.manual_seed(1)
    m = GPT(GPTConfig(vocab_size=tok.vocab_size, depth=2, width=64, head_dim=16, max_seq_len=128, init_std=0.2,
                      tie_embeddings=False))
    with torch.no_grad():
        m.lm_head.weight[:len(tok.special_ids)] = 0.0  # special tokens get logit 0, below the max: no early EOS
    return tok, m.eval()


def _multibyte_split(tok):
    """Ids of a string whose tokens split a multi-byte character (byte-level BPE) -- the hard case."""
    for s in ["你好", "🙂", "好你", "ö你🙂"]:
        ids = tok.encode(s)
        if any(tok.decode(ids[:i]).endswith("\ufffd") for i in range(1, len(ids))):
            return s, ids
    pytest.skip("tokenizer merged every multi-byte character into one token")


def test_stream_decoder_holds_partial_characters(tok_model):
    tok, _ = tok_model
    s, ids = _multibyte_split(tok)
    dec = StreamDecoder(tok)
    deltas = [dec.push(t) for t in ids] + [dec.flush()]
    assert "".join(deltas) == s
    assert all("\ufffd" not in d for d in deltas)  # never hands out half a character


def test_stream_decoder_stop_string_split_across_tokens(tok_model):
    tok, _ = tok_model
    text = "the cat sat on the mat. a dog"
    ids = tok.encode(text)
    # a stop string that spans a token boundary
    bounds, pos = [], 0
    for t in ids:
        pos += len(tok.decode([t]))
        bounds.append(pos)
    b = next(b for b in bounds if 2 <= b < len(text) - 3)
    stop = text[b - 2:b + 2]
    dec = StreamDecoder(tok, [stop])
    deltas = []
    for t in ids:
        deltas.append(dec.push(t))
        if dec.stopped:
            break
    deltas.append(dec.flush())
    assert dec.stopped and "".join(deltas) == text[:text.find(stop)]
    # the held-back prefix of the stop string is released when the row ends without the stop
    dec = StreamDecoder(tok, ["the mat. Z"])
    out = "".join([dec.push(t) for t in ids] + [dec.flush()])
    assert out == text and not dec.stopped
    assert detokenize(tok, ids, [stop]) == cut_at_stop(text, [stop])[0]


def test_generate_text_equals_joined_stream(tok_model):
    tok, m = tok_model
    prompts = ["the cat", "Q: what", "héllo"]
    params = SamplingParams(max_new_tokens=20)
    plain = generate_text(m, tok, prompts, params)
    ids = generate(m, [tok.encode(p, add_bos=True) for p in prompts], params, stop_ids=[tok.eos_id])
    assert plain == [tok.decode(o) for o in ids]
    for p, want in zip(prompts, plain):
        assert "".join(stream_text(m, tok, p, params)) == want
    # a stop string taken from the middle of the greedy output cuts it there, in both
    s = plain[0]
    i = next(i for i in range(2, len(s) - 2) if "\ufffd" not in s[i:i + 2])
    stop = s[i:i + 2]
    cut_params = SamplingParams(max_new_tokens=20, stop=[stop])
    engine = Engine(m)
    cut = generate_text(engine, tok, prompts, cut_params)
    assert cut[0] == s[:s.find(stop)]
    assert stop not in cut[1] and plain[1].startswith(cut[1])
    for p, want in zip(prompts, cut):
        assert "".join(stream_text(engine, tok, p, cut_params)) == want
    # sampled, seeded: the same text both ways
    sampled = SamplingParams(max_new_tokens=20, temperature=1.0, seed=4)
    assert "".join(stream_text(m, tok, "the", sampled)) == generate_text(m, tok, ["the"], sampled)[0]


def test_render_prompt_chat_and_plain(tok_model, tmp_path):
    from transformers import AutoTokenizer

    tok, m = tok_model
    tok.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "the cat?"}]
    for prompt, system, msgs in [("hi", "", [{"role": "user", "content": "hi"}]),
                                 ("hi", "Be brief.", [{"role": "system", "content": "Be brief."},
                                                      {"role": "user", "content": "hi"}]),
                                 (conv, "", conv)]:
        want = hf.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
        want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
        assert render_prompt(tok, prompt, chat=True, system=system) == list(want)
    assert render_prompt(tok, "the cat") == [tok.bos_id] + tok.encode("the cat")
    # a user typing "<|end|>" gets plain bytes, not a forged end of turn
    assert tok.end_id not in render_prompt(tok, "a<|end|>b", chat=True)[:-3]
    assert stop_ids_for(tok, True) == [tok.end_id, tok.eos_id] and stop_ids_for(tok, False) == [tok.eos_id]


def test_chat_generation_stops_at_end_of_turn(tok_model):
    tok, m = tok_model
    chat_ids = render_prompt(tok, "hi", chat=True)
    full = generate(m, [chat_ids], SamplingParams(max_new_tokens=10))[0]
    # pretend the 4th generated token is <|eos|>: chat generation must stop right before it
    old = tok.eos_id
    try:
        tok.eos_id = full[3]
        k = full.index(full[3])
        assert generate_text(m, tok, ["hi"], SamplingParams(max_new_tokens=10), chat=True) == [tok.decode(full[:k])]
        conv = [{"role": "user", "content": "hi"}]
        assert generate_text(m, tok, [conv], SamplingParams(max_new_tokens=10)) == [tok.decode(full[:k])]
    finally:
        tok.eos_id = old
