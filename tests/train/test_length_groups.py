"""Forwards in length groups (`rollout.length_groups`, trim=True) give the numbers of the padded batch."""

import torch

from genforge.infer.engine import split_by_length
from genforge.model.gpt import GPT, GPTConfig
from genforge.model.heads import RewardModel
from genforge.train.reward import rm_scores
from genforge.train.rollout import decode_batches, length_groups, make_batch, response_forward


def _model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=64, width=32, depth=2, n_head=4, n_kv_head=2, max_seq_len=128))


def _batch(seed: int = 0) -> dict:
    """One long prompt among short ones (the rollout shape that made every row 4x wider than its tokens)."""
    g = torch.Generator().manual_seed(seed)
    plen = [3, 5, 60, 4, 6, 2, 7, 5]
    rlen = [9, 1, 4, 20, 3, 12, 2, 6]
    prompts = [torch.randint(1, 64, (n,), generator=g).tolist() for n in plen]
    responses = [torch.randint(1, 64, (n,), generator=g).tolist() for n in rlen]
    return make_batch(prompts, responses, pad_id=0)


def test_groups_cover_every_row_and_its_tokens():
    b = _batch()
    groups = length_groups(b)
    rows = torch.cat([idx for idx, _, _ in groups]).sort().values
    assert rows.tolist() == list(range(8))
    assert len(groups) > 1  # the long prompt goes alone: the others run much narrower
    for idx, lo, hi in groups:
        outside = torch.cat([b["attention_mask"][idx, :lo], b["attention_mask"][idx, hi:]], 1)
        assert outside.sum() == 0  # only padding is left out
    assert split_by_length([3, 60, 4], [9, 1, 4]) == [[2, 0], [1]]
    assert split_by_length([3, 60, 4], [9, 1, 4], overhead=10 ** 9) == [[2, 0, 1]]  # a huge per-call cost: one group


def test_trimmed_forward_matches_padded_values_and_grads():
    b = _batch()
    mask = b["response_mask"].bool()
    out = {}
    for trim in (False, True):
        m = _model()
        logits, hidden = response_forward(m, b, with_hidden=True, trim=trim)
        loss = (torch.log_softmax(logits, -1).gather(-1, b["response_ids"][..., None])[..., 0] * mask).sum()
        loss.backward()
        out[trim] = (logits[mask], hidden[mask], [p.grad.clone() for p in m.parameters()])
    assert torch.allclose(out[True][0], out[False][0], atol=1e-5)
    assert torch.allclose(out[True][1], out[False][1], atol=1e-5)
    for a, c in zip(out[True][2], out[False][2]):
        assert torch.allclose(a, c, atol=1e-5)


def test_trimmed_reward_scores_match():
    b = _batch(1)
    rm = RewardModel(_model(2)).eval()
    with torch.no_grad():
        assert torch.allclose(rm_scores(rm, b, trim=True), rm_scores(rm, b), atol=1e-5)


def test_decode_batches_sort_by_length_and_cover_every_prompt():
    lengths = [5, 300, 7, 6, 280, 4]
    plain = decode_batches(lengths, 4, 32)
    assert plain == [[0, 1, 2, 3], [4, 5]]
    trimmed = decode_batches(lengths, 4, 32, trim=True)
    assert sorted(k for b in trimmed for k in b) == list(range(6))
    assert all(max(lengths[k] for k in b) < 100 or min(lengths[k] for k in b) > 100 for b in trimmed)


def test_trimmed_greedy_responses_match():
    from genforge.infer.sampling import SamplingParams
    from genforge.train.rollout import sample_responses

    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(1, 64, (n,), generator=g).tolist() for n in (3, 60, 5, 4, 70, 2)]
    m = _model(3).eval()
    params = SamplingParams(max_new_tokens=10)
    assert sample_responses(m, prompts, params, stop_id=1, trim=True) == sample_responses(m, prompts, params, stop_id=1)
