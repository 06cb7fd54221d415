"""kNN-LM on a tiny random GPT: lambda=0 is the LM; a datastore holding the test text lowers perplexity."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genforge.errors import CheckpointError, ConfigError
from genforge.model.gpt import GPT, GPTConfig
from genforge.rag.knn_lm import Datastore, add_texts, hidden_and_logits, perplexity


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=40, depth=1, max_seq_len=16)).eval()


def _seqs(seed, n=3, length=40):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 40, length).tolist() for _ in range(n)]


def test_hook_gives_final_normed_hidden(model):
    ids = torch.tensor([_seqs(0)[0][:16]])
    h, logits = hidden_and_logits(model, ids)
    with torch.no_grad():
        assert torch.allclose(h, model(ids, return_hidden=True))
        assert torch.allclose(model.lm_head(h), logits, atol=1e-6)
    with pytest.raises(ConfigError, match="no module 'nope'"):
        hidden_and_logits(model, ids, "nope")


def test_lambda_zero_equals_lm_and_memorised_text_helps(model, tmp_path):
    test = _seqs(1)
    # reference LM perplexity computed independently, window by window (15 new tokens per 16-token window)
    nll, n = 0.0, 0
    for s in test:
        for i in range(0, len(s) - 1, 15):
            w = s[i:i + 16]
            if len(w) < 2:
                continue
            with torch.no_grad():
                logits = model(torch.tensor([w]))[0, :-1]
            nll += float(F.cross_entropy(logits, torch.tensor(w[1:]), reduction="sum"))
            n += len(w) - 1
    lm_ppl = math.exp(nll / n)

    other = add_texts(None, model, _seqs(2))  # unrelated text
    assert len(other) == 3 * 39  # windows [0,16) [15,31) [30,40): every token after the first is a value once
    r0 = perplexity(model, test, other, lam=0.0, k=8)
    assert r0.tokens == n and r0.ppl == pytest.approx(lm_ppl, rel=1e-6)  # fp32 sums in another order
    assert r0.nll == perplexity(model, test).nll  # the mixing itself is exact at lambda = 0

    ds = add_texts(None, model, _seqs(2) + test)  # the datastore now contains the test text itself
    with_mem = perplexity(model, test, ds, lam=0.5, k=8)
    assert with_mem.ppl < 0.6 * lm_ppl  # exact contexts are found: the true next token gets ~half the mass
    assert with_mem.knn_ms_per_token > 0
    ds.save(tmp_path / "ds")
    again = perplexity(model, test, Datastore.load(tmp_path / "ds"), lam=0.5, k=8)
    assert again.ppl == pytest.approx(with_mem.ppl)
    with pytest.raises(CheckpointError, match="no kNN-LM datastore"):
        Datastore.load(tmp_path)
    with pytest.raises(ConfigError, match="lambda must be in"):
        perplexity(model, test, ds, lam=1.5)


def test_sweep_rows(model):
    from genforge.rag.knn_lm import sweep
    test = _seqs(1, n=1)
    ds = add_texts(None, model, test)
    rows = sweep(model, test, ds, lams=(0.0, 0.5), ks=(4,))
    assert [(r["lambda"], r["k"]) for r in rows] == [(0.0, 4), (0.5, 4)]
    assert rows[1]["ppl"] < rows[0]["ppl"]


def test_sweep_equals_perplexity_per_pair(model):
    """One search at the largest k serves every (lambda, k) exactly as separate perplexity calls would."""
    from genforge.rag.knn_lm import sweep
    test = _seqs(3, n=2)
    ds = add_texts(None, model, _seqs(4) + test[:1])
    rows = sweep(model, test, ds, lams=(0.0, 0.25, 1.0), ks=(2, 8))
    for r in rows:
        ref = perplexity(model, test, ds, lam=r["lambda"], k=r["k"])
        assert r["tokens"] == ref.tokens
        if math.isinf(ref.nll):  # lambda = 1 with no neighbour voting for a token: both infinite
            assert math.isinf(r["nll"])
        else:
            assert r["nll"] == pytest.approx(ref.nll, rel=1e-5), r
