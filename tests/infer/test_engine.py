import copy

import pytest
import torch

from genforge.errors import ConfigError
from genforge.infer.engine import Engine, decode_step, decode_step_pure, generate, stream
from genforge.infer.sampling import apply_penalties
from genforge.infer.text import generate_text, stream_text
from genforge.model.gpt import GPT, GPTConfig, KVCache
from genforge.tokenizer import TokenizerConfig, train_tokenizer

CFG = GPTConfig(vocab_size=97, depth=2, width=64, head_dim=16, n_kv_head=2, max_seq_len=64, init_std=0.1,
                tie_embeddings=False)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(CFG).eval()


def _prompts(lengths, seed=0, vocab=97):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (n,), generator=g).tolist() for n in lengths]


def _greedy_reference(model, prompt, n, penalties=None):
    """Full recomputation every step: the oracle for the cached engine."""
    seq = list(prompt)
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([seq]))[:, -1]
            if penalties:
                rep, freq, pres = penalties
                logits = apply_penalties(logits, [seq], repetition=rep)
                logits = apply_penalties(logits, [out], frequency=freq, presence=pres)
            t = int(logits.argmax(-1))
            seq.append(t)
            out.append(t)
    return out


def test_cached_logits_equal_full_recompute(model):
    seq = torch.tensor(_prompts([20])[0])[None]
    with torch.no_grad():
        full = model(seq)  # (1, 20, V)
        # reference path: prefill 8 then one token at a time through GPT.forward + KVCache
        cache = KVCache(model.config, 1, max_len=32)
        steps = [model(seq[:, :8], cache=cache)] + [model(seq[:, i:i + 1], cache=cache) for i in range(8, 20)]
        assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
        # static decode step (the path the engine and torch.compile use)
        cache = KVCache(model.config, 1, max_len=32)
        model(seq[:, :8], cache=cache)
        key_ok = torch.ones(1, 32, dtype=torch.bool)
        for i in range(8, 20):
            logits = decode_step(model, seq[:, i:i + 1], torch.tensor([[i]]), torch.tensor([i]), cache.k, cache.v,
                                 key_ok)
            assert torch.allclose(logits, full[:, i], atol=1e-5)
        # side-effect-free step (the compiled one): same logits; the caller writes the new key/value
        cache = KVCache(model.config, 1, max_len=32)
        model(seq[:, :8], cache=cache)
        for i in range(8, 20):
            col = torch.tensor([i])
            logits, k, v = decode_step_pure(model, seq[:, i:i + 1], torch.tensor([[i]]), col, cache.k, cache.v, key_ok)
            cache.k.index_copy_(3, col, k)
            cache.v.index_copy_(3, col, v)
            assert torch.allclose(logits, full[:, i], atol=1e-5)


def test_greedy_generate_matches_full_recompute(model):
    prompt = _prompts([7])[0]
    ref = _greedy_reference(model, prompt, 15)
    assert generate(model, [prompt], max_new_tokens=15) == [ref]
    assert Engine(model, static=False).generate([prompt], max_new_tokens=15) == [ref]
    assert len(set(ref)) > 3  # the test model is not degenerate


@pytest.mark.parametrize("static", [True, False])
def test_batched_generation_equals_per_prompt(model, static):
    prompts = _prompts([3, 11, 1, 7, 11], seed=1)
    engine = Engine(model, static=static)
    batched = engine.generate(prompts, max_new_tokens=12)
    single = [engine.generate([p], max_new_tokens=12)[0] for p in prompts]
    assert batched == single
    assert batched[1] == _greedy_reference(model, prompts[1], 12)


def test_temperature_zero_deterministic_and_seeded_sampling(model):
    prompts = _prompts([4, 9], seed=2)
    assert generate(model, prompts, max_new_tokens=10) == generate(model, prompts, max_new_tokens=10)
    a = generate(model, prompts, max_new_tokens=10, temperature=1.0, seed=3)
    b = generate(model, prompts, max_new_tokens=10, temperature=1.0, seed=3)
    c = generate(model, prompts, max_new_tokens=10, temperature=1.0, seed=4)
    assert a == b and a != c
    greedy = generate(model, prompts, max_new_tokens=10)
    assert generate(model, prompts, max_new_tokens=10, temperature=0.9, top_k=1, seed=5) == greedy


def test_stop_ids_end_rows_and_are_excluded(model):
    prompts = _prompts([5, 8], seed=3)
    full = generate(model, prompts, max_new_tokens=12)
    stop = full[0][4]
    first = full[0].index(stop)
    assert first > 0
    out = generate(model, prompts, max_new_tokens=12, stop_ids=[stop])
    assert out[0] == full[0][:first]
    cut = full[1].index(stop) if stop in full[1] else len(full[1])
    assert out[1] == full[1][:cut]


def test_penalties_match_reference(model):
    prompt = _prompts([6], seed=4)[0]
    for pen in [(1.8, 0.0, 0.0), (1.0, 0.7, 0.0), (1.0, 0.0, 2.0), (1.3, 0.2, 0.5)]:
        ref = _greedy_reference(model, prompt, 14, penalties=pen)
        out = generate(model, [prompt], max_new_tokens=14, repetition_penalty=pen[0], frequency_penalty=pen[1],
                       presence_penalty=pen[2])
        assert out == [ref], pen
    # a large presence penalty forbids repeating any generated token
    out = generate(model, [prompt], max_new_tokens=20, presence_penalty=100.0)[0]
    assert len(set(out)) == len(out)


def test_logprobs_and_stream(model):
    prompt = _prompts([5], seed=5)[0]
    toks, lps = generate(model, [prompt], max_new_tokens=6, logprobs=True)
    seq = prompt + toks[0]
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([seq]))[0], -1)
    for i, (t, lp) in enumerate(zip(toks[0], lps[0])):
        assert abs(ref[len(prompt) - 1 + i, t].item() - lp) < 1e-4
    assert list(stream(model, prompt, max_new_tokens=6)) == toks[0]
    sampled = list(Engine(model).stream(prompt, max_new_tokens=6, temperature=1.0, seed=9))
    assert sampled == generate(model, [prompt], max_new_tokens=6, temperature=1.0, seed=9)[0]


def test_limits_modes_and_errors(model):
    out = generate(model, [_prompts([60])[0]], max_new_tokens=50)[0]
    assert len(out) == 4  # generation stops at the context limit (64)
    with pytest.raises(ConfigError):
        generate(model, [[]])
    with pytest.raises(ConfigError):
        generate(model, [_prompts([65])[0]])
    assert generate(model, []) == []
    model.train()
    it = stream(model, [1, 2, 3], max_new_tokens=3)
    next(it)
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()  # no mode leaks out of a yield
    list(it)
    assert model.training
    model.eval()


@pytest.fixture(scope="module")
def tok_model():
    texts = ["the cat sat on the mat. " * 3, "a dog ran to the park! ", "Q: what is 2+2? A: 4\n",
             "héllo wörld 你好"] * 20
    tok = train_tokenizer(texts, TokenizerConfig(vocab_size=300))
    torch.manual_seed(1)
    m = GPT(GPTConfig(vocab_size=tok.vocab_size, depth=2, width=64, head_dim=16, max_seq_len=128, init_std=0.2,
                          tie_embeddings=False))
    with torch.no_grad():
        m.lm_head.weight[:len(tok.special_ids)] = 0.0  # special tokens get logit 0, below the max: no early EOS
    return tok, m.eval()


def test_text_stop_strings_and_streaming(tok_model):
    tok, m = tok_model
    prompts = ["the cat", "Q: what"]
    plain = generate_text(m, tok, prompts, max_new_tokens=20)
    assert all(isinstance(s, str) for s in plain)
    ids = generate(m, [tok.encode(p, add_bos=True) for p in prompts], max_new_tokens=20, stop_ids=[tok.eos_id])
    assert plain == [tok.decode(o) for o in ids]
    # a stop string taken from the middle of the greedy output cuts it there
    s = plain[0]
    i = next(i for i in range(2, len(s) - 2) if "\ufffd" not in s[i:i + 2])
    stop = s[i:i + 2]
    cut = generate_text(m, tok, prompts, max_new_tokens=20, stop=[stop])
    assert cut[0] == s[:s.find(stop)]
    assert stop not in cut[1] and plain[1].startswith(cut[1])
    for p, expected in zip(prompts, cut):
        deltas = list(stream_text(m, tok, p, max_new_tokens=20, stop=[stop]))
        assert "".join(deltas) == expected
    assert "".join(stream_text(m, tok, "héllo", max_new_tokens=20)) == generate_text(m, tok, ["héllo"],
                                                                                     max_new_tokens=20)[0]


def test_text_chat_wraps_and_stops_at_end(tok_model):
    from genforge.infer.text import _stop_ids, encode_prompt

    tok, m = tok_model
    chat_ids = tok.encode(tok.render_chat([{"role": "user", "content": "hi"}], add_generation_prompt=True))
    assert encode_prompt(tok, "hi", chat=True) == chat_ids
    assert _stop_ids(tok, True, None) == [tok.eos_id, tok.end_id] and _stop_ids(tok, False, None) == [tok.eos_id]
    # a user typing "<|end|>" gets plain bytes, not a forged end of turn
    assert tok.end_id not in encode_prompt(tok, "a<|end|>b", chat=True)[:-3]
    full = generate(m, [chat_ids], max_new_tokens=10)[0]
    # pretend the 4th generated token is <|eos|>: chat generation must stop right before it
    old = tok.eos_id
    try:
        tok.eos_id = full[3]
        k = full.index(full[3])
        assert generate_text(m, tok, ["hi"], chat=True, max_new_tokens=10) == [tok.decode(full[:k])]
    finally:
        tok.eos_id = old


def test_compiled_engine_matches_eager(model):
    from genforge.infer.compress import quantize_int8

    prompts = _prompts([3, 9, 5], seed=7)
    eager = Engine(model).generate(prompts, max_new_tokens=10)
    compiled = Engine(model, compile=True)
    assert compiled.generate(prompts, max_new_tokens=10) == eager
    assert compiled.generate(prompts, max_new_tokens=10) == eager  # second call: guard-free fast path
    # int8 at batch 1 takes the fused int8 reduction path, which only exists under torch.compile
    q = quantize_int8(copy.deepcopy(model), include_head=True)
    assert Engine(q, compile=True).generate(prompts[:1], max_new_tokens=10) == Engine(q).generate(
        prompts[:1], max_new_tokens=10)
