"""DPO: log 2 at the start (policy = reference), learning a preference, LoRA reference, the CLI entry point."""

import json
import math
import random

import pytest
import torch

from genforge.checkpoint import load_checkpoint, save_checkpoint
from genforge.errors import DataError
from genforge.model.gpt import GPT, GPTConfig
from genforge.train.dpo import DPOConfig, PairData, evaluate_pairs, main, preference_pairs, train_dpo
from genforge.train.reward import RankedPrompt
from genforge.train.rollout import Reference, make_policy, response_logprobs
from genforge.train.trainer import TrainConfig
from tests.helpers import shared_tokenizer


def tiny_tok():
    return shared_tokenizer()  # trained once per test run (tests/helpers.py)


def tiny_gpt(vocab: int, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, depth=1, width=32, head_dim=16, max_seq_len=64))


def rows(n: int, seed: int = 0) -> list[RankedPrompt]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        good = " ".join(rng.choice(["good", "great", "thanks"]) for _ in range(2))
        bad = " ".join(rng.choice(["bad", "awful", "no"]) for _ in range(2))
        out.append(RankedPrompt(f"the cat {i}", [bad, good], [1, 0]))
    return out


def cfg(steps: int, lr: float = 3e-3) -> TrainConfig:
    return TrainConfig(max_steps=steps, micro_batch=8, warmup_steps=2, lr=lr, weight_decay=0.0, eval_every=0,
                       ckpt_every=0, progress=False, seed=0)


def test_loss_is_log2_before_training_and_preference_is_learned(tmp_path):
    torch.set_num_threads(1)
    tok = tiny_tok()
    policy = make_policy(tiny_gpt(tok.vocab_size))
    val = PairData(preference_pairs(rows(10, seed=1), tok), Reference(policy), tok.pad_id, 8, 64)
    before = evaluate_pairs(policy, val, beta=0.1)
    assert before["val_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert before["val_margin"] == pytest.approx(0.0, abs=1e-6)
    result = train_dpo(policy, tok, rows(40), rows(10, seed=1), cfg(30), tmp_path / "dpo", beta=0.1, max_len=64)
    assert result["val_pref_acc"] == 1.0 and result["val_margin"] > 0.5 and result["val_loss"] < 0.5
    assert (tmp_path / "dpo" / "checkpoint" / "model.safetensors").exists()


def test_lora_policy_reference_is_adapters_off(tmp_path):
    torch.set_num_threads(1)
    tok = tiny_tok()
    policy = make_policy(tiny_gpt(tok.vocab_size), lora_r=4, lora_alpha=8.0)
    base = tiny_gpt(tok.vocab_size).eval()  # identical weights (same seed) without adapters
    ref = Reference(policy)
    assert ref.frozen is None
    data = PairData(preference_pairs(rows(4), tok), ref, tok.pad_id, 4, 64)
    batch = data.collate([0, 1])
    with torch.no_grad():
        lp = response_logprobs(base, batch).sum(1)
    assert torch.allclose(lp[:2], batch["ref_chosen"], atol=1e-5)
    train_dpo(policy, tok, rows(20), rows(4, seed=1), cfg(10, lr=1e-2), tmp_path / "lora", max_len=64)
    assert torch.allclose(ref.logprobs(batch), response_logprobs(base, batch), atol=1e-5)  # reference unchanged
    assert not torch.allclose(response_logprobs(policy.eval(), batch), ref.logprobs(batch), atol=1e-4)
    merged, _, _ = load_checkpoint(tmp_path / "lora" / "checkpoint")  # written merged (+ adapter folder)
    assert torch.allclose(response_logprobs(merged, batch), response_logprobs(policy, batch), atol=1e-4)
    assert (tmp_path / "lora" / "checkpoint" / "adapter" / "adapter_config.json").exists()


def test_main_end_to_end_and_data_error(tmp_path):
    torch.set_num_threads(1)
    tok = tiny_tok()
    save_checkpoint(tmp_path / "sft", tiny_gpt(tok.vocab_size), tok)
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(json.dumps({"prompt": r.prompt, "chosen": r.completions[1], "rejected": r.completions[0]})
                             + "\n" for r in rows(12)))
    c = DPOConfig(init_from=str(tmp_path / "sft"), data=str(prefs), out_dir=str(tmp_path / "out"), max_len=64,
                  val_fraction=0.25, train=cfg(4))
    result = main(c)
    assert result["step"] == 4 and "val_pref_acc" in result
    assert (tmp_path / "out" / "config.yaml").exists()
    prefs.write_text(json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"}) + "\n")
    with pytest.raises(DataError, match=r"prefs\.jsonl:1: chosen and rejected are identical"):
        main(c)


def test_ai_feedback_is_order_symmetric_and_labels_by_hand():
    from genforge.train.constitutional import ai_preferences, label_agreement, label_pairs

    torch.set_num_threads(1)
    tok = tiny_tok()
    model = tiny_gpt(tok.vocab_size).eval()
    p_ab = ai_preferences(model, tok, [("the cat", "good thanks", "bad no")])
    p_ba = ai_preferences(model, tok, [("the cat", "bad no", "good thanks")])
    assert 0.0 < p_ab[0] < 1.0 and p_ab[0] + p_ba[0] == pytest.approx(1.0, abs=1e-6)  # position bias cancels
    items = [("q", "a1", "b1"), ("q", "a2", "b2"), ("q", "same", "same")]
    rows = label_pairs(items, [0.7, 0.2, 0.9])
    assert [r.completions[r.ranking[0]] for r in rows] == ["a1", "b2"]  # identical answers are dropped
    oracle = {"a1": 1.0, "b1": 0.0, "a2": 1.0, "b2": 0.0, "same": 0.5}
    assert label_agreement(items, [0.7, 0.2, 0.9], lambda p, x: oracle[x]) == 0.5


def test_likelihood_feedback_is_antisymmetric_and_prefers_what_the_model_says():
    """The small-model CAI feedback: P(a over b) = 1 - P(b over a); a model trained to say X prefers X."""
    from genforge.train.constitutional import PRINCIPLES, answer_loglik, likelihood_preferences

    torch.set_num_threads(1)
    tok = tiny_tok()
    model = tiny_gpt(tok.vocab_size).eval()
    p_ab = likelihood_preferences(model, tok, [("the cat", "good thanks", "bad no")], PRINCIPLES[0])
    p_ba = likelihood_preferences(model, tok, [("the cat", "bad no", "good thanks")], PRINCIPLES[0])
    assert p_ab[0] + p_ba[0] == pytest.approx(1.0, abs=1e-6)
    # teach the model one answer, then it prefers that answer
    from genforge.train.rollout import encode_prompt, encode_response, make_batch, response_logprobs

    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = make_batch([encode_prompt(tok, "the cat")], [encode_response(tok, "good thanks")], tok.pad_id, 64)
    model.train()
    for _ in range(30):
        loss = -response_logprobs(model, batch).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert likelihood_preferences(model, tok, [("the cat", "good thanks", "bad no")], PRINCIPLES[0])[0] > 0.9
    ll = answer_loglik(model, tok, ["the cat"], ["good thanks"])
    assert len(ll) == 1 and ll[0] < 0


def test_nll_term_adds_the_chosen_answers_per_token_nll():
    from genforge.train.dpo import make_loss_fn

    torch.set_num_threads(1)
    tok = tiny_tok()
    policy = make_policy(tiny_gpt(tok.vocab_size))
    data = PairData(preference_pairs(rows(4), tok), Reference(policy), tok.pad_id, 4, 64)
    batch = data.collate([0, 1, 2, 3])
    plain, b, _ = make_loss_fn(0.1)(policy, batch)
    with_nll, _, _ = make_loss_fn(0.1, nll_weight=0.5)(policy, batch)
    lp = response_logprobs(policy, batch)  # (2b, R): chosen rows first
    nll = -(lp[:b].sum(1) / batch["response_mask"][:b].sum(1)).sum()
    assert plain.item() == pytest.approx(4 * math.log(2), abs=1e-5)  # policy == reference
    assert with_nll.item() == pytest.approx(plain.item() + 0.5 * nll.item(), rel=1e-5)
