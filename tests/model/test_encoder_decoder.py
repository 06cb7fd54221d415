"""Encoder-decoder: T5 parity, cached decode, span corruption, beam 1 == greedy, mask-predict on memorised pairs."""

import random

import pytest
import torch

from genforge.checkpoint import load_model, save_checkpoint
from genforge.errors import ConfigError
from genforge.infer.beam import beam_search, greedy
from genforge.infer.mask_predict import mask_predict, repeat_rate
from genforge.model.encoder_decoder import Seq2Seq, Seq2SeqConfig, relative_bucket, shift_right
from genforge.train.seq2seq import train_seq2seq
from genforge.train.span_corruption import SpanConfig, corrupt_spans, noise_mask
from genforge.train.trainer import TrainConfig


def tiny(**kw) -> Seq2Seq:
    torch.manual_seed(0)
    return Seq2Seq(Seq2SeqConfig(**{"vocab_size": 50, "depth": 2, "decoder_depth": 3, "width": 32, "head_dim": 8,
                                    "num_buckets": 8, "max_distance": 16, **kw})).eval()


def test_t5_parity_and_cache(tmp_path):
    transformers = pytest.importorskip("transformers")
    m = tiny()
    for n, p in m.named_parameters():
        if "norm" in n:  # non-unit norms, so a swapped name shows
            p.data += 0.1 * torch.randn_like(p)
    folder = save_checkpoint(tmp_path / "t5", m)
    hf = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
    src = torch.randint(2, 50, (2, 23))
    am = torch.ones_like(src)
    am[1, 15:] = 0
    tgt = torch.randint(2, 50, (2, 21))  # 21 > max_distance/2: exercises the log buckets
    with torch.no_grad():
        ours = m(src, tgt, attention_mask=am)
        theirs = hf(input_ids=src, attention_mask=am, decoder_input_ids=tgt).logits
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
        cache = m.start_cache(m.encode(src, am), am)
        stepped = torch.cat([m.decode(tgt[:, i:i + 1], cache=cache) for i in range(tgt.shape[1])], 1)
        torch.testing.assert_close(stepped, ours, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(load_model(folder)(src, tgt, attention_mask=am), ours)
    # HF's own bucket function agrees with ours
    rel = torch.arange(-40, 41)[None]
    for bi in (True, False):
        ref = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(rel, bi, 8, 16)
        assert torch.equal(relative_bucket(rel, bi, 8, 16), ref)


def test_cmlm_variant_saves_with_module_family(tmp_path):
    m = tiny(decoder_causal=False, length_classes=10)
    folder = save_checkpoint(tmp_path / "cmlm", m)
    back = load_model(folder)
    src, tgt = torch.randint(2, 50, (1, 7)), torch.randint(2, 50, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(back(src, tgt), m(src, tgt))
    # the bidirectional decoder sees later target tokens; the causal one does not
    t2 = tgt.clone()
    t2[0, 4] = (t2[0, 4] + 1) % 50
    with torch.no_grad():
        assert (m(src, tgt)[0, 0] - m(src, t2)[0, 0]).abs().max() > 1e-5
        c = tiny()
        torch.testing.assert_close(c(src, tgt)[0, :4], c(src, t2)[0, :4])


def test_span_corruption_sentinels():
    rng = random.Random(0)
    sentinels = list(range(100, 120))
    for n in (2, 10, 57, 200):
        ids = list(range(1, n + 1))
        mask = noise_mask(n, SpanConfig(), random.Random(n))
        assert sum(mask) == min(max(1, round(0.15 * n)), n - 1) and not mask[0]
        inp, tgt = corrupt_spans(ids, sentinels, SpanConfig(), rng) if n < 100 else (None, None)
        if inp is None:
            continue
        # rebuild the original from input + target: every dropped token comes back after its sentinel
        spans: dict[int, list[int]] = {}
        cur = None
        for t in tgt:
            if t in sentinels:
                cur = t
                spans[cur] = []
            else:
                spans[cur].append(t)
        rebuilt = [x for t in inp for x in (spans[t] if t in sentinels else [t])]
        assert rebuilt == ids and tgt[-1] in sentinels and spans[tgt[-1]] == []
    # mean span length follows the config
    lens = []
    for s in range(200):
        mask = noise_mask(100, SpanConfig(0.3, 5.0), random.Random(s))
        runs = "".join("1" if m else "0" for m in mask).split("0")
        lens += [len(r) for r in runs if r]
    assert 4.0 < sum(lens) / len(lens) < 6.0
    with pytest.raises(ConfigError, match="sentinels"):
        corrupt_spans(list(range(100)), [200, 201], SpanConfig(), rng)


def _pairs(n: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """Toy translation: target = source reversed, shifted by 10."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = [rng.randrange(3, 30) for _ in range(rng.randint(3, 7))]
        out.append((s, [t + 10 for t in reversed(s)]))
    return out


def test_beam_one_equals_greedy_and_beam_not_worse(tmp_path):
    m = tiny()
    pairs = _pairs(64, 0)
    cfg = TrainConfig(max_steps=60, micro_batch=16, lr=3e-3, warmup_steps=5, eval_every=0, progress=False,
                      resume=False)
    train_seq2seq(m, pairs, cfg, tmp_path / "ar", pad_id=0, eos_id=1)
    src = torch.tensor([s + [0] * (7 - len(s)) for s, _ in pairs[:16]])
    am = (torch.arange(7)[None] < torch.tensor([len(s) for s, _ in pairs[:16]])[:, None]).long()
    g = greedy(m, src, am, 10, eos_id=1)
    assert beam_search(m, src, am, 10, eos_id=1, beams=1) == g
    b4 = beam_search(m, src, am, 10, eos_id=1, beams=4, length_penalty=0.0)

    def logp(seqs):  # the model's log-probability of each decoded target (+ EOS)
        out = []
        for i, y in enumerate(seqs):
            lab = torch.tensor([y + [1]])
            with torch.no_grad():
                lp = torch.log_softmax(m(src[i:i + 1], shift_right(lab, 0, 0), am[i:i + 1]), -1)
            out.append(lp[0, torch.arange(lab.shape[1]), lab[0]].sum().item())
        return torch.tensor(out)

    assert (logp(b4) >= logp(g) - 1e-4).all()  # beam search finds sequences at least as likely as greedy


def test_mask_predict_recovers_memorised_pairs(tmp_path):
    m = tiny(decoder_causal=False, length_classes=12)
    pairs = _pairs(4, 1)
    mask_id = 49
    cfg = TrainConfig(max_steps=250, micro_batch=4, lr=3e-3, warmup_steps=10, eval_every=0, progress=False,
                      resume=False)
    train_seq2seq(m, pairs, cfg, tmp_path / "cmlm", pad_id=0, eos_id=1, mode="cmlm", mask_id=mask_id)
    src = torch.tensor([s + [0] * (7 - len(s)) for s, _ in pairs])
    am = (torch.arange(7)[None] < torch.tensor([len(s) for s, _ in pairs])[:, None]).long()
    out = mask_predict(m, src, am, mask_id, iterations=8)
    assert out == [t for _, t in pairs]
    assert repeat_rate([[1, 1, 2], [3]]) == 0.5 and repeat_rate([[]]) == 0.0
