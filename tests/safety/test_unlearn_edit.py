import pytest
import torch

from genforge.safety import edit, unlearn
from genforge.safety.tune import SeqBatches, continuation_logprob, finetune
from genforge.train.losses import lm_loss

PEOPLE = [("Mara Hill", "baker"), ("Tomas Reed", "miller"), ("Una Vale", "potter"), ("Odo Park", "sailor"),
          ("Wren Ash", "weaver"), ("Ivy Stone", "farmer"), ("Leo Marsh", "tailor"), ("Nora Finch", "doctor")]


def _facts(tok, pairs, template="{n} works as a"):
    seqs, starts = [], []
    for n, j in pairs:
        ctx = tok.encode(template.format(n=n), add_bos=True)
        seqs.append(ctx + tok.encode(f" {j}"))
        starts.append(len(ctx))
    return seqs, starts


@pytest.fixture(scope="module")
def fact_model(tiny_tokenizer, tmp_path_factory):
    """A depth-2 GPT that has learned eight 'X works as a Y' facts (a few seconds of training)."""
    from genforge.model.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=tiny_tokenizer.vocab_size, depth=2, width=48, head_dim=16, max_seq_len=64))
    seqs, _ = _facts(tiny_tokenizer, PEOPLE)
    finetune(m, lm_loss, SeqBatches(seqs, 8, 0, seed=0), steps=150, lr=1e-2,
             work_dir=str(tmp_path_factory.mktemp("facts")))
    return m


def test_the_fixture_learned_its_facts(fact_model, tiny_tokenizer):
    lp = continuation_logprob(fact_model, *_facts(tiny_tokenizer, PEOPLE))
    assert sum(lp) / len(lp) > -1.0


def test_unlearning_forgets_and_leaves_unrelated_facts_within_tolerance(fact_model, tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer
    forget, f_from = _facts(tok, PEOPLE[:2])
    other, o_from = _facts(tok, PEOPLE[2:])
    f0, o0 = continuation_logprob(fact_model, forget, f_from), continuation_logprob(fact_model, other, o_from)
    for method in ("ga", "npo"):
        m = unlearn.unlearn(fact_model, forget, f_from, method=method, steps=6, lr=2e-3, beta=0.5,
                            micro_batch=2, work_dir=str(tmp_path))
        f1, o1 = continuation_logprob(m, forget, f_from), continuation_logprob(m, other, o_from)
        drop = sum(a - b for a, b in zip(f0, f1)) / len(f0)
        moved = sum(abs(a - b) for a, b in zip(o0, o1)) / len(o0)
        assert drop > 1.0, (method, drop)
        assert moved < 0.5 * drop, (method, moved, drop)  # unrelated facts within tolerance of the forget effect
    assert continuation_logprob(fact_model, forget, f_from) == f0  # the original is untouched (a copy was trained)


def test_rome_edit_maps_the_key_and_keeps_unrelated_facts(fact_model, tiny_tokenizer):
    import copy

    tok, m = tiny_tokenizer, copy.deepcopy(fact_model)
    seqs, _ = _facts(tok, PEOPLE)
    cov = edit.second_moment(edit.collect_keys(m, 0, seqs * 4))
    other, o_from = _facts(tok, PEOPLE[1:])
    o0 = continuation_logprob(m, other, o_from)
    W0 = m.layers[0].mlp.down_proj.weight.detach().clone()
    target = _facts(tok, [("Mara Hill", "sailor")])
    before = continuation_logprob(m, *target)[0]
    res = edit.rome_edit(m, tok, "Mara Hill", ["Mara Hill works as a"], "sailor", layer=0, cov=cov, steps=60, lr=0.1)
    after = continuation_logprob(m, *target)[0]
    assert after > before + 2.0  # efficacy
    W1 = m.layers[0].mlp.down_proj.weight.detach()
    assert torch.linalg.matrix_rank(W1 - W0, rtol=1e-4).item() == 1  # a rank-one change
    assert torch.allclose((W1 - W0) @ res.key, res.delta, atol=1e-4)  # W' k* = W k* + delta
    o1 = continuation_logprob(m, other, o_from)
    moved = sum(abs(a - b) for a, b in zip(o0, o1)) / len(o0)
    assert moved < 0.25 * (after - before), (moved, after - before)  # specificity within tolerance
    with pytest.raises(ValueError, match="below the last layer"):
        edit.rome_edit(m, tok, "Mara Hill", ["Mara Hill works as a"], "sailor", layer=1, cov=cov)
