import copy

import pytest
import torch

from genforge.errors import ConfigError
from genforge.infer.engine import DecodeSession, Engine, compiled_step, compiled_steps, generate, stream
from genforge.infer.sampling import SamplingParams, apply_penalties
from genforge.model.gpt import GPT, GPTConfig, KVCache, StaticKV

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
            logits = model.decode_step(seq[:, i:i + 1], torch.tensor([[i]]),
                                       StaticKV(cache.k, cache.v, torch.tensor([i]), key_ok))
            assert torch.allclose(logits, full[:, i], atol=1e-5)
        # side-effect-free step (the compiled one): same logits; the caller writes the new key/value
        cache = KVCache(model.config, 1, max_len=32)
        model(seq[:, :8], cache=cache)
        for i in range(8, 20):
            col = torch.tensor([i])
            logits, k, v, greedy = compiled_step(model, seq[:, i:i + 1], torch.tensor([[i]]), col, cache.k, cache.v,
                                                 key_ok)
            cache.k.index_copy_(3, col, k)
            cache.v.index_copy_(3, col, v)
            assert torch.allclose(logits, full[:, i], atol=1e-5)
            assert torch.equal(greedy, logits.argmax(-1))


def test_greedy_generate_matches_full_recompute(model):
    prompt = _prompts([7])[0]
    ref = _greedy_reference(model, prompt, 15)
    assert generate(model, [prompt], SamplingParams(max_new_tokens=15)) == [ref]
    assert Engine(model, static=False).generate([prompt], SamplingParams(max_new_tokens=15)) == [ref]
    assert len(set(ref)) > 3  # the test model is not degenerate


@pytest.mark.parametrize("static", [True, False])
def test_batched_generation_equals_per_prompt(model, static):
    prompts = _prompts([3, 11, 1, 7, 11], seed=1)
    engine = Engine(model, static=static)
    batched = engine.generate(prompts, SamplingParams(max_new_tokens=12))
    single = [engine.generate([p], SamplingParams(max_new_tokens=12))[0] for p in prompts]
    assert batched == single
    assert batched[1] == _greedy_reference(model, prompts[1], 12)


def test_temperature_zero_deterministic_and_seeded_sampling(model):
    prompts = _prompts([4, 9], seed=2)
    ten = SamplingParams(max_new_tokens=10)
    assert generate(model, prompts, ten) == generate(model, prompts, ten)
    a = generate(model, prompts, SamplingParams(max_new_tokens=10, temperature=1.0, seed=3))
    b = generate(model, prompts, SamplingParams(max_new_tokens=10, temperature=1.0, seed=3))
    c = generate(model, prompts, SamplingParams(max_new_tokens=10, temperature=1.0, seed=4))
    assert a == b and a != c
    greedy = generate(model, prompts, SamplingParams(max_new_tokens=10))
    assert generate(model, prompts, SamplingParams(max_new_tokens=10, temperature=0.9, top_k=1, seed=5)) == greedy


def test_stop_ids_end_rows_and_are_excluded(model):
    prompts = _prompts([5, 8], seed=3)
    full = generate(model, prompts, SamplingParams(max_new_tokens=12))
    stop = full[0][4]
    first = full[0].index(stop)
    assert first > 0
    out = generate(model, prompts, SamplingParams(max_new_tokens=12), stop_ids=[stop])
    assert out[0] == full[0][:first]
    cut = full[1].index(stop) if stop in full[1] else len(full[1])
    assert out[1] == full[1][:cut]


@pytest.mark.parametrize("params", [SamplingParams(max_new_tokens=16),
                                    SamplingParams(max_new_tokens=16, temperature=1.0, seed=7, repetition_penalty=1.3,
                                                   frequency_penalty=0.2, logprobs=True)])
def test_finished_rows_leave_the_batch_without_changing_any_row(model, monkeypatch, params):
    """Rows that end early leave the eager batch (`DecodeSession.keep`); every row's tokens (and, seeded, its
    random draws) stay what they are with all rows kept to the end."""
    prompts = _prompts([3, 11, 1, 7, 11, 5, 9, 2], seed=4)
    ends = [2, 16, 5, 9, 1, 12, 3, 16]  # each row stops after this many tokens

    def stop_fn(row, tokens):
        return len(tokens) >= ends[row]

    kept: list[int] = []
    keep = DecodeSession.keep
    monkeypatch.setattr(DecodeSession, "keep", lambda self, index: (kept.append(len(index)), keep(self, index)))
    engine = Engine(model)
    dropping = engine.generate(prompts, params, stop_fn=stop_fn)
    assert kept and kept[-1] < len(prompts)  # rows did leave
    monkeypatch.setattr(Engine, "_drop_finished", staticmethod(lambda session, done: None))
    kept.clear()
    keeping = engine.generate(prompts, params, stop_fn=stop_fn)
    assert not kept
    if params.logprobs:
        (dropping, lp_d), (keeping, lp_k) = dropping, keeping
        assert all(a == pytest.approx(b, abs=1e-5) for a, b in zip(lp_d, lp_k))
    assert dropping == keeping
    assert [len(r) for r in dropping] == ends


def test_penalties_match_reference(model):
    prompt = _prompts([6], seed=4)[0]
    for pen in [(1.8, 0.0, 0.0), (1.0, 0.7, 0.0), (1.0, 0.0, 2.0), (1.3, 0.2, 0.5)]:
        ref = _greedy_reference(model, prompt, 14, penalties=pen)
        params = SamplingParams(max_new_tokens=14, repetition_penalty=pen[0], frequency_penalty=pen[1],
                                presence_penalty=pen[2])
        out = generate(model, [prompt], params)
        assert out == [ref], pen
    # a large presence penalty forbids repeating any generated token
    out = generate(model, [prompt], SamplingParams(max_new_tokens=20, presence_penalty=100.0))[0]
    assert len(set(out)) == len(out)


def test_logprobs_and_stream(model):
    prompt = _prompts([5], seed=5)[0]
    toks, lps = generate(model, [prompt], SamplingParams(max_new_tokens=6, logprobs=True))
    seq = prompt + toks[0]
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([seq]))[0], -1)
    for i, (t, lp) in enumerate(zip(toks[0], lps[0])):
        assert abs(ref[len(prompt) - 1 + i, t].item() - lp) < 1e-4
    assert list(stream(model, prompt, SamplingParams(max_new_tokens=6))) == toks[0]
    sampled = list(Engine(model).stream(prompt, SamplingParams(max_new_tokens=6, temperature=1.0, seed=9)))
    assert sampled == generate(model, [prompt], SamplingParams(max_new_tokens=6, temperature=1.0, seed=9))[0]


def test_limits_modes_and_errors(model):
    out = generate(model, [_prompts([60])[0]], SamplingParams(max_new_tokens=50))[0]
    assert len(out) == 4  # generation stops at the context limit (64)
    with pytest.raises(ConfigError):
        generate(model, [[]])
    with pytest.raises(ConfigError):
        generate(model, [_prompts([65])[0]])
    assert generate(model, []) == []
    model.train()
    it = stream(model, [1, 2, 3], SamplingParams(max_new_tokens=3))
    next(it)
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()  # no mode leaks out of a yield
    list(it)
    assert model.training
    model.eval()


def test_compiled_engine_matches_eager(model):
    from genforge.infer.compress import quantize_int8

    prompts = _prompts([3, 9, 5], seed=7)
    eager = Engine(model).generate(prompts, SamplingParams(max_new_tokens=10))
    compiled = Engine(model, compile=True)
    assert compiled.generate(prompts, SamplingParams(max_new_tokens=10)) == eager
    assert compiled.generate(prompts, SamplingParams(max_new_tokens=10)) == eager  # second call: guard-free fast path
    # a decode session on the compiled engine: compiled steps, eager prefill/append, one shared cache
    session = compiled.session(prompts[0])
    first = session.generate(4)
    session.append([3, 1, 4])
    assert first == eager[0][:4]
    assert session.generate(5) == Engine(model).generate([prompts[0] + first + [3, 1, 4]],
                                                         SamplingParams(max_new_tokens=5))[0]
    # batch 1 and 2 take gpt.project's reductions (linears and attention as inductor loops, compiled only) and the
    # greedy token comes out of the graph; penalties, sampling and log-probs pick from its logits instead
    one = Engine(model, compile=True)
    assert one.generate(prompts[:1], SamplingParams(max_new_tokens=10)) == [eager[0]]
    assert one.generate(prompts[1:3], SamplingParams(max_new_tokens=10)) == eager[1:3]  # padded rows
    for params in (SamplingParams(max_new_tokens=10, repetition_penalty=1.5),
                   SamplingParams(max_new_tokens=10, temperature=0.8, top_k=20, seed=3),
                   SamplingParams(max_new_tokens=10, logprobs=True)):
        got, want = one.generate(prompts[:1], params), Engine(model).generate(prompts[:1], params)
        if params.logprobs:
            assert got[0] == want[0] and torch.allclose(torch.tensor(got[1]), torch.tensor(want[1]), atol=1e-4)
        else:
            assert got == want
    # int8 at batch 1 takes the fused int8 reduction path, which only exists under torch.compile
    q = quantize_int8(copy.deepcopy(model), include_head=True)
    ten = SamplingParams(max_new_tokens=10)
    assert Engine(q, compile=True).generate(prompts[:1], ten) == Engine(q).generate(prompts[:1], ten)


def test_compiled_steps_math_eagerly(model):
    """`compiled_steps` run eagerly (no compile): n greedy tokens and the keys/values a step at a time would write."""
    prompt = _prompts([6], seed=5)[0]
    want = _greedy_reference(model, prompt, 6)
    cache = KVCache(CFG, 1, max_len=16)
    with torch.no_grad():
        model(torch.tensor([prompt]), cache=cache)
        toks, last, k, v = compiled_steps(model, torch.tensor([[want[0]]]), torch.tensor([[6]]), torch.tensor([6]),
                                          cache.k, cache.v, torch.ones(1, 16, dtype=torch.bool), 5)
        ref = KVCache(CFG, 1, max_len=16)
        model(torch.tensor([prompt + want[:5]]), cache=ref)
    assert toks.tolist() == [want[1:]] and last.tolist() == [[want[5]]]
    assert torch.allclose(k, ref.k[:, :, :, 6:11], atol=1e-5) and torch.allclose(v, ref.v[:, :, :, 6:11], atol=1e-5)


def test_multi_step_greedy_equals_one_step(model, monkeypatch):
    """Engine(multi_step=4): 4 compiled greedy steps per call, cut at stops, equal eager greedy token for token."""
    eng = Engine(model, compile=True, multi_step=4)
    calls = []
    real = eng._compiled_steps
    monkeypatch.setattr(eng, "_compiled_steps", lambda *a: calls.append(a[-1]) or real(*a))
    prompt = _prompts([5], seed=3)[0]
    eager = Engine(model).generate([prompt], SamplingParams(max_new_tokens=20))[0]
    assert eng.generate([prompt], SamplingParams(max_new_tokens=20)) == [eager]
    assert len(calls) == 4  # token 1 from the prefill's logits, 16 from 4 calls, the last 3 one step at a time
    # a stop id in the middle of a chunk: the row ends there, as on the one-step path
    i = next(i for i in range(6, 20) if eager[i] not in eager[:i] and i % 4 != 1)
    assert eng.generate([prompt], SamplingParams(max_new_tokens=20), stop_ids=[eager[i]]) == [eager[:i]]
    assert eng.generate([prompt], SamplingParams(max_new_tokens=20),
                        stop_fn=lambda row, toks: len(toks) >= 7) == [eager[:7]]
    # the cache bucket's last column: 5 + 59 = 64 columns (the smallest bucket) fill exactly
    full = Engine(model).generate([prompt], SamplingParams(max_new_tokens=59))[0]
    assert len(full) == 59 and eng.generate([prompt], SamplingParams(max_new_tokens=59)) == [full]
    # left-padded rows of a batch: each row its own positions
    prompts = _prompts([9, 5], seed=7)
    assert eng.generate(prompts, SamplingParams(max_new_tokens=12)) == Engine(model).generate(
        prompts, SamplingParams(max_new_tokens=12))
    # anything that needs each step's logits stays on the one-step path
    n = len(calls)
    for params in (SamplingParams(max_new_tokens=12, logprobs=True),
                   SamplingParams(max_new_tokens=12, repetition_penalty=1.5)):
        got, want = eng.generate([prompt], params), Engine(model).generate([prompt], params)
        assert got[0] == want[0]
    assert len(calls) == n


class _CountTokens:
    """A forward hook on the embedding: counts the token positions the model computes."""

    def __init__(self, model):
        self.n = 0
        self.handle = model.embed_tokens.register_forward_hook(self)

    def __call__(self, module, args, out):
        self.n += args[0].numel()


@pytest.mark.parametrize("static", [True, False])
def test_session_append_equals_fresh_generation_without_recomputing(model, static):
    engine = Engine(model, static=static)
    prompt, tool = _prompts([6], seed=11)[0], [5, 17, 23, 4]
    counter = _CountTokens(model)
    try:
        session = engine.session(prompt, SamplingParams())
        first = session.generate(5)
        assert counter.n == len(prompt) + 4  # prefill + 4 fed tokens (the 5th is fed lazily, on demand)
        session.append(tool)
        assert counter.n == len(prompt) + 5 + len(tool)  # the prefix is not run again
        second = session.generate(6)
        assert counter.n == len(prompt) + 5 + len(tool) + 5
    finally:
        counter.handle.remove()
    assert first == _greedy_reference(model, prompt, 5)
    assert second == _greedy_reference(model, prompt + first + tool, 6)
    assert session.tokens[0] == prompt + first + tool + second
    # a fresh generation over the concatenated ids gives the same continuation
    assert engine.generate([prompt + first + tool], SamplingParams(max_new_tokens=6)) == [second]


def test_session_step_stop_ids_limits_and_sampling(model):
    prompt = _prompts([5], seed=12)[0]
    greedy = generate(model, [prompt], SamplingParams(max_new_tokens=8))[0]
    session = Engine(model).session(prompt, stop_ids=[greedy[3]])
    assert session.generate(8) == greedy[:greedy.index(greedy[3])]  # the stop id ends it and is not returned
    s = Engine(model).session(prompt)
    assert [s.step() for _ in range(3)] == greedy[:3]
    # sampled sessions follow the same seeded sampler as generate
    params = SamplingParams(max_new_tokens=7, temperature=1.0, seed=3)
    assert Engine(model).session(prompt, params).generate(7) == generate(model, [prompt], params)[0]
    small = Engine(model).session(prompt, max_len=len(prompt) + 4)
    assert len(small.generate(10)) == 4
    with pytest.raises(ConfigError, match="do not fit"):
        small.append([1, 2, 3])


def test_logits_processors_run_after_penalties(model):
    prompts = _prompts([4, 7], seed=13)
    seen = []

    def ban(ids, scores):  # forbid token 5; record that each row's history is right-aligned
        seen.append(ids[:, -1].tolist())
        return scores.index_fill(1, torch.tensor([5]), float("-inf"))

    params = SamplingParams(max_new_tokens=30, presence_penalty=3.0)
    out = Engine(model).generate(prompts, params, logits_processors=[ban])
    assert all(5 not in row for row in out)
    assert seen[0] == [p[-1] for p in prompts]
    # the watermark is the same kind of object, built from the params
    from genforge.infer.watermark import WatermarkConfig, WatermarkLogitsProcessor

    wm = SamplingParams(max_new_tokens=12, watermark=True, watermark_delta=3.0)
    cfg = WatermarkConfig(gamma=wm.watermark_gamma, delta=3.0, key=wm.watermark_key)
    assert generate(model, prompts, wm) == generate(model, prompts, SamplingParams(max_new_tokens=12),
                                                    logits_processors=[WatermarkLogitsProcessor(cfg, 97)])


def test_slot_decoder_refuses_sliding_window_models():
    """A row joining with a longer prompt leaves gap columns in running rows; a window over columns would then
    be wrong, so sliding-window models are served with static batching."""
    import pytest

    from genforge.errors import ConfigError
    from genforge.infer.engine import SlotDecoder, supports_slots
    from genforge.model.gpt import GPT, GPTConfig

    full = GPT(GPTConfig(vocab_size=40, depth=1, width=32, head_dim=16, max_seq_len=32))
    windowed = GPT(GPTConfig(vocab_size=40, depth=1, width=32, head_dim=16, max_seq_len=32, sliding_window=4))
    assert supports_slots(full) and not supports_slots(windowed)
    with pytest.raises(ConfigError, match="sliding window"):
        SlotDecoder(windowed)


def test_project_reduction_matches_linear_under_compile():
    """gpt.project's compiled mat-vec (rows <= MATVEC_MAX_ROWS) equals F.linear, bias included; more rows use mm."""
    from genforge.model.gpt import MATVEC_MAX_ROWS, project

    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 40, bias=True)
    fn = torch.compile(lambda x: project(lin, x), dynamic=False, fullgraph=True)
    for rows in (1, MATVEC_MAX_ROWS, MATVEC_MAX_ROWS + 3):
        x = torch.randn(rows, 1, 48)
        with torch.no_grad():
            assert torch.allclose(fn(x), lin(x), atol=1e-5)
