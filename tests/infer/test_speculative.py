import copy

import pytest
import torch

from genforge.errors import ConfigError
from genforge.infer.engine import generate
from genforge.infer.sampling import SamplingParams
from genforge.infer.speculative import speculative_generate
from genforge.model.gpt import GPT, GPTConfig


def _model(seed, vocab=97, depth=2, width=64, std=0.1, max_seq_len=96):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=vocab, depth=depth, width=width, head_dim=16, max_seq_len=max_seq_len,
                    init_std=std, tie_embeddings=False)
    return GPT(cfg).eval()


@pytest.fixture(scope="module")
def pair():
    return _model(0), _model(1, depth=1, width=32)


def _prompts():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(1, 97, (n,), generator=g).tolist() for n in (1, 5, 12)]


@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_greedy_speculative_equals_greedy(pair, k):
    target, draft = pair
    for prompt in _prompts():
        ref = generate(target, [prompt], SamplingParams(max_new_tokens=20))[0]
        out, stats = speculative_generate(target, draft, prompt, SamplingParams(max_new_tokens=20), k=k)
        assert out == ref
        assert stats["n_target_calls"] <= 20


def test_identical_draft_accepts_everything(pair):
    target, _ = pair
    prompt = _prompts()[1]
    out, stats = speculative_generate(target, copy.deepcopy(target), prompt, SamplingParams(max_new_tokens=20), k=4)
    assert out == generate(target, [prompt], SamplingParams(max_new_tokens=20))[0]
    assert stats["acceptance_rate"] == 1.0 and stats["n_target_calls"] == 4  # 5 tokens per target call


def test_stop_ids_and_limits(pair):
    target, draft = pair
    prompt = _prompts()[2]
    ref = generate(target, [prompt], SamplingParams(max_new_tokens=20))[0]
    stop = ref[6]
    out, _ = speculative_generate(target, draft, prompt, SamplingParams(max_new_tokens=20), k=3, stop_ids=[stop])
    assert out == ref[:ref.index(stop)]
    long_prompt = list(range(1, 90))
    out, _ = speculative_generate(target, draft, long_prompt, SamplingParams(max_new_tokens=50), k=4)
    assert out == generate(target, [long_prompt], SamplingParams(max_new_tokens=50))[0] and len(out) == 96 - 89
    with pytest.raises(ConfigError):
        speculative_generate(target, _model(2, vocab=50), prompt)


def _exact_pair_distribution(target, prompt, vocab):
    """p(x1, x2 | prompt) of the target (64 outcomes for vocab 8), computed exactly."""
    with torch.no_grad():
        p1 = torch.softmax(target(torch.tensor([prompt]))[0, -1], -1)  # (V,)
        seqs = torch.tensor([prompt + [a] for a in range(vocab)])
        p2 = torch.softmax(target(seqs)[:, -1], -1)  # (V, V): row a = p(x2 | prompt, a)
    return (p1[:, None] * p2).flatten()


def _tv(counts, p):
    return 0.5 * (counts / counts.sum() - p).abs().sum().item()


def test_sampled_speculative_follows_target_distribution():
    # tiny vocabulary, peaked random models of different seeds: the draft is a poor guess of the target
    vocab, n = 8, 3000
    target = _model(10, vocab=vocab, depth=1, width=32, std=0.6)
    draft = _model(11, vocab=vocab, depth=1, width=32, std=0.6)
    prompt = [1, 5, 2]
    p = _exact_pair_distribution(target, prompt, vocab)
    q = _exact_pair_distribution(draft, prompt, vocab)
    counts = torch.zeros(vocab * vocab)
    acc = []
    for s in range(n):
        params = SamplingParams(max_new_tokens=2, temperature=1.0, seed=s)
        out, stats = speculative_generate(target, draft, prompt, params, k=2)
        counts[out[0] * vocab + out[1]] += 1
        acc.append(stats["acceptance_rate"])
    rate = sum(acc) / n
    assert 0.2 < rate < 0.9, rate  # both the accept and the residual paths are exercised
    # calibrate: total-variation distance of n direct samples from p, over 300 replications
    g = torch.Generator().manual_seed(0)
    null = [_tv(torch.bincount(torch.multinomial(p, n, replacement=True, generator=g), minlength=64).float(), p)
            for _ in range(300)]
    threshold = sorted(null)[-2]  # ~99.7th percentile
    assert _tv(counts, p) < threshold, (_tv(counts, p), threshold)
    # the test has power: sampling from the draft alone would fail it by a wide margin
    assert 0.5 * (q - p).abs().sum().item() > 3 * threshold
    # chi-square on the cells with enough mass (df = cells - 1)
    big = p * n >= 5
    obs, exp = torch.cat([counts[big], counts[~big].sum()[None]]), torch.cat([p[big], p[~big].sum()[None]]) * n
    chi2 = ((obs - exp) ** 2 / exp).sum().item()
    df = len(obs) - 1
    assert chi2 < df + 4 * (2 * df) ** 0.5, (chi2, df)  # mean + 4 sd of the chi-square law


# ---------------------------------------------------------------- model-free prophets
from genforge.infer.speculative import NGramProphet  # noqa: E402

GREEDY = dict(temperature=0.0, top_k=0, top_p=1.0)


def test_prompt_lookup_copies_what_followed_the_latest_match():
    p = NGramProphet(max_ngram=3)
    assert p.propose([7, 8, 9, 1, 7, 8], 2, GREEDY, None) == ([9, 1], None)
    # the longest suffix wins: [1, 7, 8] occurred once, followed by 4; [7, 8] alone is more recent
    assert p.propose([1, 7, 8, 4, 2, 7, 8, 6, 1, 7, 8], 1, GREEDY, None)[0] == [4]
    # overlapping copy: a loop shorter than k is proposed whole
    assert p.propose([3, 5, 5, 5], 4, GREEDY, None)[0] == [5, 5, 5, 5]
    assert p.propose([1, 2, 3, 1, 2], 5, GREEDY, None)[0] == [3, 1, 2, 3, 1]
    assert p.propose([1, 2, 3], 4, GREEDY, None)[0] == []  # nothing repeats, no table


def test_corpus_table_fills_in_when_the_sequence_has_no_match():
    p = NGramProphet.from_corpus([[1, 2, 3, 4, 5], [1, 2, 3, 9], [1, 2, 3, 4, 6]], n=2)
    assert p.table[(2, 3)] == 4  # the commonest successor
    assert p.propose([8, 2, 3], 3, GREEDY, None)[0] == [4, 5]  # (4, 5) has no successor: the chain stops
    assert p.propose([8, 8], 3, GREEDY, None)[0] == [8, 8, 8]  # the in-sequence match comes first


@pytest.mark.parametrize("k", [1, 3, 6])
def test_greedy_with_ngram_prophet_equals_greedy(pair, k):
    target, _ = pair
    # the target's own greedy continuations as a corpus: the table proposes well, and exactness must still hold
    corpus = [p + generate(target, [p], SamplingParams(max_new_tokens=10))[0] for p in _prompts()[:2]]
    for prophet in (NGramProphet(), NGramProphet.from_corpus(corpus, n=2)):
        for prompt in _prompts() + [[4, 9, 4, 9, 4, 9, 4]]:
            ref = generate(target, [prompt], SamplingParams(max_new_tokens=20))[0]
            out, stats = speculative_generate(target, prophet, prompt, SamplingParams(max_new_tokens=20), k=k)
            assert out == ref
            assert stats["n_draft_calls"] == 0 and stats["n_target_calls"] <= 20


class _FixedProphet:
    """Always proposes the same tokens (a deterministic, often wrong prophet)."""

    def __init__(self, tokens):
        self.tokens = tokens

    def start(self, prompt, max_len):
        pass

    def keep(self, n):
        pass

    def propose(self, seq, k, dist, gen):
        return self.tokens[:k], None


def test_sampled_speculative_with_deterministic_proposals_follows_target():
    """One-hot q: accept x with probability p(x), else resample from p without x; the law must stay p's."""
    vocab, n = 8, 3000
    target = _model(10, vocab=vocab, depth=1, width=32, std=0.6)
    prompt = [1, 5, 2]
    p = _exact_pair_distribution(target, prompt, vocab)
    counts = torch.zeros(vocab * vocab)
    top = int(p.view(vocab, vocab).sum(1).argmax())
    for s in range(n):
        params = SamplingParams(max_new_tokens=2, temperature=1.0, seed=s)
        out, _ = speculative_generate(target, _FixedProphet([top, 3]), prompt, params, k=2)
        counts[out[0] * vocab + out[1]] += 1
    g = torch.Generator().manual_seed(0)
    null = [_tv(torch.bincount(torch.multinomial(p, n, replacement=True, generator=g), minlength=64).float(), p)
            for _ in range(300)]
    assert _tv(counts, p) < sorted(null)[-2], _tv(counts, p)
    # the test has power: always keeping the proposal would put all mass on (top, 3)
    one_hot = torch.zeros(vocab * vocab)
    one_hot[top * vocab + 3] = 1.0
    assert 0.5 * (one_hot - p).abs().sum().item() > 3 * sorted(null)[-2]
