"""Reward model: the scalar head, the sequence layout, preference-data errors, and a tiny model that learns."""

import json
import random

import pytest
import torch

from genforge.errors import DataError
from genforge.model.gpt import GPT, GPTConfig
from genforge.model.heads import RewardModel, ScalarHead, last_token_index
from genforge.train.reward import (
    RankedData,
    RewardConfig,
    load_reward_model,
    pairwise_accuracy,
    read_preferences,
    score_responses,
    split_holdout,
    train_reward_model,
)
from genforge.train.rollout import make_batch, response_logprobs
from genforge.train.trainer import TrainConfig
from tests.helpers import shared_tokenizer


def tiny_tok():
    return shared_tokenizer()  # trained once per test run (tests/helpers.py)


def tiny_gpt(vocab: int, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, depth=1, width=32, head_dim=16, max_seq_len=64))


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_last_token_index_left_and_right_padding():
    m = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
    assert last_token_index(m).tolist() == [2, 4, 2]


def test_scalar_head_zero_init_and_shape():
    h = ScalarHead(8, bias=True, init_std=0.0)
    assert h(torch.randn(2, 5, 8)).shape == (2, 5)
    assert h(torch.randn(2, 5, 8)).abs().sum().item() == 0.0


def test_padded_layout_matches_unpadded_forward():
    """Left-padded prompts + right-padded responses give each row exactly its unpadded log-probs and score."""
    model = tiny_gpt(50).eval()
    prompts, responses = [[1, 5, 6], [1, 7]], [[9, 10, 11], [12]]
    batch = make_batch(prompts, responses, pad_id=0)
    lp = response_logprobs(model, batch)  # (2, 3)
    for b, (p, r) in enumerate(zip(prompts, responses)):
        ids = torch.tensor([p + r])
        logits = model(ids)[0, len(p) - 1:-1]
        ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(r)[:, None])[:, 0]
        assert torch.allclose(lp[b, :len(r)], ref, atol=1e-5)
        assert (lp[b, len(r):] == 0).all()
    rm = RewardModel(model).eval()
    single = rm(torch.tensor([prompts[1] + responses[1]]), torch.ones(1, 3, dtype=torch.long))
    assert torch.allclose(score_responses(rm, prompts, responses)[1], single[0], atol=1e-5)


def test_preference_errors_name_file_and_line(tmp_path):
    ok = {"prompt": "p", "completions": ["a", "b", "c"], "ranking": [2, 0, 1]}
    f = write_jsonl(tmp_path / "a.jsonl", [ok, {"prompt": "q", "completions": ["only one"], "ranking": [0]}])
    with pytest.raises(DataError, match=r"a\.jsonl:2: 1 completion\(s\); ranking needs at least 2"):
        read_preferences(f)
    f = write_jsonl(tmp_path / "b.jsonl", [ok, ok, {"prompt": "q", "chosen": "same", "rejected": "same"}])
    with pytest.raises(DataError, match=r"b\.jsonl:3: chosen and rejected are identical"):
        read_preferences(f)
    f = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "q", "completions": ["x", "y", "x"], "ranking": [0, 1, 2]}])
    with pytest.raises(DataError, match=r"c\.jsonl:1: completions 0 and 2 are identical"):
        read_preferences(f)
    f = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "completions": ["x", "y"], "ranking": [0, 0]}])
    with pytest.raises(DataError, match=r"d\.jsonl:1: \"ranking\" must list each completion"):
        read_preferences(f)
    f = write_jsonl(tmp_path / "e.jsonl", ['{"prompt": "q", "completions": '])
    with pytest.raises(DataError, match=r"e\.jsonl:1: invalid JSON"):
        read_preferences(f)
    rows = read_preferences(write_jsonl(tmp_path / "f.jsonl", [ok]))
    assert rows[0].pairs() == [("c", "a"), ("c", "b"), ("a", "b")]


def test_reward_model_learns_a_preference(tmp_path):
    """A 1-layer RM learns 'answers with good/great/thanks beat answers with bad/awful' on held-out prompts."""
    torch.set_num_threads(1)
    tok = tiny_tok()
    rng = random.Random(0)
    rows = []
    for i in range(60):
        good = " ".join(rng.choice(["good", "great", "thanks"]) for _ in range(3))
        mid = " ".join(rng.choice(["the", "cat", "mat"]) for _ in range(3))
        bad = " ".join(rng.choice(["bad", "awful", "no"]) for _ in range(3))
        order = [good, mid, bad]
        perm = rng.sample(range(3), 3)
        completions = [order[j] for j in perm]
        rows.append({"prompt": f"the cat {i}", "completions": completions,
                     "ranking": [perm.index(0), perm.index(1), perm.index(2)]})
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    train_rows, val_rows = split_holdout(read_preferences(path), 0.2, seed=0)
    model = RewardModel(tiny_gpt(tok.vocab_size))
    before = pairwise_accuracy(model, RankedData(val_rows, tok, 8, 64))["val_pair_acc"]
    cfg = TrainConfig(max_steps=40, micro_batch=6, warmup_steps=2, lr=3e-3, weight_decay=0.0, eval_every=0,
                      ckpt_every=0, progress=False, seed=0)
    result = train_reward_model(model, tok, train_rows, val_rows, cfg, tmp_path / "rm", max_len=64)
    print(before, result)
    assert result["val_pair_acc"] >= 0.9 and before < 0.8
    loaded = load_reward_model(tmp_path / "rm" / "checkpoint")
    assert pairwise_accuracy(loaded, RankedData(val_rows, tok, 8, 64))["val_pair_acc"] == result["val_pair_acc"]
    assert RewardConfig().train.weight_decay == 0.0


def test_ties_make_no_pairs_and_min_gap_filters():
    from genforge.train.reward import RankedPrompt, best_vs_worst

    r = RankedPrompt("q", ["a", "b", "c", "d"], [0, 1, 2, 3], scores=[0.9, 0.5, 0.5, 0.45])
    assert r.pair_indices() == [(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)]  # (1, 2) tie left out
    assert r.pair_indices(min_gap=0.1) == [(0, 1), (0, 2), (0, 3)]
    assert RankedPrompt("q", ["a", "b"], [1, 0]).pair_indices() == [(1, 0)]  # no scores: every pair
    (bw,) = best_vs_worst([r])
    assert bw.completions == ["a", "d"] and bw.pairs() == [("a", "d")]
    assert best_vs_worst([RankedPrompt("q", ["a", "b"], [0, 1], scores=[0.5, 0.5])]) == []


def test_rank_own_samples_ranks_by_the_labeller_and_drops_ties():
    """The policy's greedy + sampled answers ranked by a scoring function; all-tied prompts dropped."""
    from genforge.train.reward import prompt_pair_accuracy, rank_own_samples

    torch.set_num_threads(1)
    tok = tiny_tok()
    model = tiny_gpt(tok.vocab_size).eval()
    rows = [{"prompt": f"the cat {i}"} for i in range(6)] + [{"prompt": "tie", "tie": True}]
    score = lambda row, text: 0.0 if row.get("tie") else float(len(text))  # noqa: E731 - longer is better
    ranked = rank_own_samples(model, tok, rows, score, samples=3, temperature=1.0, max_new_tokens=8, seed=0)
    assert ranked and all(r.prompt != "tie" for r in ranked)
    for r in ranked:
        assert len(set(r.completions)) == len(r.completions) >= 2  # duplicates merged
        s = [r.scores[i] for i in r.ranking]
        assert s == sorted(s, reverse=True) and s == [float(len(r.completions[i])) for i in r.ranking]
    again = rank_own_samples(model, tok, rows, score, samples=3, temperature=1.0, max_new_tokens=8, seed=0)
    assert [r.completions for r in again] == [r.completions for r in ranked]  # seeded
    # per-prompt accuracy of a reward model is in [0, 1], one number per prompt with a pair
    rm = RewardModel(tiny_gpt(tok.vocab_size)).eval()
    acc = prompt_pair_accuracy(rm, tok, ranked)
    assert len(acc) == len(ranked) and all(0.0 <= a <= 1.0 for a in acc)
    # keep= selects pairs: none kept leaves no prompt; the best-vs-rest pairs alone are a subset
    assert prompt_pair_accuracy(rm, tok, ranked, keep=lambda r, a, b: False) == []
    top = prompt_pair_accuracy(rm, tok, ranked, keep=lambda r, a, b: a == r.ranking[0])
    assert len(top) == len(ranked) and all(0.0 <= a <= 1.0 for a in top)
