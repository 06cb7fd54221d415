"""Metrics against their reference libraries, and log-likelihood scoring against a hand-computed forward."""

import math

import pytest
import torch
import torch.nn.functional as F

from genforge.eval import metrics
from genforge.eval.lm import GenforgeLM, StubLM
from genforge.eval.metrics import MCItem

# ---- answer extraction and exact match --------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("3 apples plus 4 apples. The answer is 7.", "7"),
    ("The answer is 7. Wait, no. The answer is 8.", "8"),
    ("The answer is 3.5.", "3.5"),
    ("so the answer is: Tuesday\nmore text", "Tuesday"),
    ("We get 12 then 15", "15"),
    ("heads", "heads"),
    ("It ends in tails.", "tails"),
    ("", ""),
])
def test_extract_answer(text, expected):
    assert metrics.extract_answer(text) == expected


def test_exact_match_normalises():
    assert metrics.exact_match("The answer is 1,000.", "1000") == 1.0
    assert metrics.exact_match("The answer is 42.0.", "42") == 1.0
    assert metrics.exact_match("The answer is The Heads.", "heads") == 1.0
    assert metrics.exact_match("The answer is 3.5.", "35") == 0.0  # a decimal point is not punctuation
    assert metrics.exact_match("The answer is 41.", "42") == 0.0
    assert metrics.exact_match("42", "42", extract=None) == 1.0


# ---- ROUGE and BLEU: thin wrappers, checked against the libraries ---------------------------------------

PAIRS = [
    ("the cat sat on the mat", "the cat sat on the mat"),
    ("the cat sat", "the cat sat down"),
    ("a quick brown fox jumps over the lazy dog", "the quick brown fox jumped over a lazy dog"),
    ("nothing in common here", "completely different words entirely"),
]


def test_rouge_agrees_with_rouge_score():
    from rouge_score import rouge_scorer

    ref_scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for pred, ref in PAIRS:
        expected = ref_scorer.score(ref, pred)
        got = metrics.rouge_scores(pred, ref)
        for k in ("rouge1", "rouge2", "rougeL"):
            assert got[k] == pytest.approx(expected[k].fmeasure)
    assert metrics.rouge_scores("the cat sat on the mat", "the cat sat on the mat") == {
        "rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    # hand value: 3 of 3 predicted unigrams match, 3 of 4 reference unigrams -> F1 = 2*1*0.75/1.75 = 6/7
    assert metrics.rouge_scores("the cat sat", "the cat sat down")["rouge1"] == pytest.approx(6 / 7)
    mean = metrics.rouge([p for p, _ in PAIRS], [r for _, r in PAIRS])
    assert mean["rougeL"] == pytest.approx(sum(metrics.rouge_scores(p, r)["rougeL"] for p, r in PAIRS) / len(PAIRS))


def test_bleu_agrees_with_sacrebleu():
    import sacrebleu

    preds, refs = [p for p, _ in PAIRS], [r for _, r in PAIRS]
    assert metrics.bleu(preds, refs) == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    for p, r in PAIRS:
        assert metrics.sentence_bleu(p, r) == pytest.approx(sacrebleu.sentence_bleu(p, [r]).score)
    assert metrics.bleu(["the cat sat on the mat today"], ["the cat sat on the mat today"]) == pytest.approx(100.0)
    assert metrics.bleu(["nothing in common here"], ["completely different words entirely"]) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        metrics.bleu(["a"], ["a", "b"])


# ---- a tiny random GPT and its tokenizer ------------------------------------------------------------------

TEXTS = ["The capital of Arden is Millford.", "Mara lives in Oakmere and keeps bees.",
         "3 plus 4 is 7. Question: Answer: A. B. C. D."] * 20


@pytest.fixture(scope="module")
def tiny_lm():
    from genforge.model.gpt import GPT, GPTConfig
    from genforge.tokenizer import TokenizerConfig, train_tokenizer

    tok = train_tokenizer(TEXTS, TokenizerConfig(vocab_size=300))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, depth=2, width=64, head_dim=16, max_seq_len=48,
                          init_std=0.3)).eval()  # large init: confident, distinct predictions
    return model, tok


def hand_loglik(model, ids: list[int], n_cont: int) -> tuple[float, bool]:
    """log P of the last n_cont tokens of ids, from one full forward and an explicit log-softmax."""
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]]))[0]  # (T-1, V): position t predicts token t+1
    logp = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    total, greedy = 0.0, True
    for t in range(len(ids) - n_cont, len(ids)):
        total += logp[t - 1, ids[t]].item()
        greedy &= logp[t - 1].argmax().item() == ids[t]
    return total, greedy


def test_loglikelihood_matches_hand_computation(tiny_lm):
    model, tok = tiny_lm
    lm = GenforgeLM(model, tok, batch_size=3)  # batches of mixed lengths, right-padded
    pairs = [("The capital of Arden is", " Millford."), ("Mara lives in", " Oakmere"), ("3 plus 4 is", " 7"),
             ("Question:", " A"), ("The capital of Arden is ", "Millford.")]
    got = lm.loglikelihood(pairs)
    for (ctx, cont), (lp, n, greedy) in zip(pairs, got):
        c_ids = tok.encode(ctx.rstrip(" "), add_bos=True)
        x_ids = tok.encode(ctx[len(ctx.rstrip(" ")):] + cont)
        want, want_greedy = hand_loglik(model, c_ids + x_ids, len(x_ids))
        assert n == len(x_ids)
        assert lp == pytest.approx(want, abs=1e-4)
        assert greedy == want_greedy
    # a trailing space in the context is scored as part of the continuation
    assert got[0][0] == pytest.approx(got[4][0], abs=1e-5)


def test_loglikelihood_chat_context(tiny_lm):
    model, tok = tiny_lm
    lm = GenforgeLM(model, tok, chat=True)
    (lp, n, _), = lm.loglikelihood([("Where does Mara live?", "Oakmere")])
    chat = tok.render_chat([{"role": "user", "content": "Where does Mara live?"}], add_generation_prompt=True)
    ctx = tok.encode(chat)
    assert ctx[0] == tok.bos_id and ctx[-1] == tok.assistant_id
    cont = tok.encode("Oakmere")
    assert lp == pytest.approx(hand_loglik(model, ctx + cont, len(cont))[0], abs=1e-4)


def test_multiple_choice_acc_and_acc_norm_by_hand(tiny_lm):
    model, tok = tiny_lm
    lm = GenforgeLM(model, tok)
    items = [MCItem("The capital of Arden is", ["Millford", "Oakmere and the long river", "bees", "7"], 0),
             MCItem("Mara keeps", ["bees", "Millford", "a very long list of things", "D."], 2),
             MCItem("3 plus 4 is", ["7", "Arden", "Question", "Mara lives"], 0)]
    res = metrics.multiple_choice(lm, items)
    acc = acc_norm = 0.0
    for it, rec in zip(items, res["items"]):
        lps = []
        for opt in it.options:
            c_ids, x_ids = tok.encode(it.context, add_bos=True), tok.encode(" " + opt)
            lps.append(hand_loglik(model, c_ids + x_ids, len(x_ids))[0])
        assert rec["logprobs"] == pytest.approx(lps, abs=1e-4)
        pred = max(range(4), key=lambda i: lps[i])
        # lm-evaluation-harness acc_norm: log-likelihood divided by the option's length in bytes
        pred_norm = max(range(4), key=lambda i: lps[i] / len(it.options[i].encode("utf-8")))
        assert (rec["pred"], rec["pred_norm"]) == (pred, pred_norm)
        acc += pred == it.gold
        acc_norm += pred_norm == it.gold
    assert res["acc"] == pytest.approx(acc / 3) and res["acc_norm"] == pytest.approx(acc_norm / 3)


def test_perplexity_and_bits_per_byte_by_hand(tiny_lm):
    model, tok = tiny_lm
    lm = GenforgeLM(model, tok)
    text = "Mara lives in Oakmere and keeps bees. " * 6  # longer than the 48-token window: several windows
    ids = tok.encode(text, add_bos=True)
    assert len(ids) > 2 * 48
    total, n = 0.0, 0
    for s in range(0, len(ids) - 1, 48):  # disjoint windows, each predicting its own tokens
        w = ids[s:s + 49]
        total += hand_loglik(model, w, len(w) - 1)[0]
        n += len(w) - 1
    assert n == len(ids) - 1
    res = metrics.perplexity(lm, text)
    assert res["n_tokens"] == n
    assert res["perplexity"] == pytest.approx(math.exp(-total / n), rel=1e-4)
    assert res["bits_per_byte"] == pytest.approx(-total / math.log(2) / len(text.encode()), rel=1e-4)


def test_perplexity_file_errors(tmp_path):
    from genforge.errors import DataError

    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match="empty.txt"):
        metrics.perplexity_file(StubLM(), tmp_path / "empty.txt")
    with pytest.raises(DataError, match="missing.txt"):
        metrics.perplexity_file(StubLM(), tmp_path / "missing.txt")


def test_log_softmax_reference_agrees():
    # guards hand_loglik itself: logits - logsumexp is torch's log_softmax
    x = torch.randn(3, 7)
    assert torch.allclose(x - torch.logsumexp(x, -1, keepdim=True), F.log_softmax(x, -1))


# ---- option-order test ------------------------------------------------------------------------------------

MC = [MCItem("Which town is the capital?", ["Millford", "Oakmere", "Ashby", "Kettle"], 0),
      MCItem("What does Mara keep?", ["goats", "bees", "cats", "books"], 1)]


def test_option_order_always_a_flips():
    lm = StubLM(score=lambda ctx, cont: 0.0 if cont.strip() == "A" else -5.0)
    res = metrics.option_order_test(lm, MC)
    assert res["flip_rate"] == 1.0  # every rotation moves a different option into position A
    assert res["consistency"] == 0.0
    assert res["letter_rate"] == {"A": 1.0}
    assert res["acc_letter"] == pytest.approx(0.25)


def test_option_order_content_reader_is_stable():
    golds = {"Millford", "bees"}

    def score(ctx, cont):  # prefer the letter whose line holds the right content
        line = next(ln for ln in ctx.splitlines() if ln.startswith(cont.strip() + ". "))
        return 0.0 if line[3:] in golds else -5.0

    res = metrics.option_order_test(StubLM(score=score), MC)
    assert res["flip_rate"] == 0.0 and res["consistency"] == 1.0 and res["acc_letter"] == 1.0
    assert set(res["letter_rate"]) == {"A", "B", "C", "D"}  # the right letter moved with the content


def test_greedy_generate_answers_each_prompt_as_alone(tiny_lm):
    """Greedy requests are regrouped by prompt length into wide batches; each answer is the one-prompt answer."""
    model, tok = tiny_lm
    lm = GenforgeLM(model, tok, batch_size=2)
    prompts = ["Mara lives in", "The capital of Arden is a town by the river and", "3 plus 4 is", "Question:",
               "Mara keeps bees and Oakmere", "A"]
    got = lm.generate(prompts, max_new_tokens=8, n=2, stop=("\n",))
    alone = [lm.generate([p], max_new_tokens=8, stop=("\n",))[0][0] for p in prompts]
    assert got == [[a, a] for a in alone]
    assert len(set(alone)) > 1
