"""Probes (on the shared Trainer) against a shuffled-label control; calibration numbers by hand; the lie
detector's and the ICL prompts' bookkeeping."""

import numpy as np
import pytest
import torch

from genforge.interp import calibration, probes


def _planted(n=240, c=24, classes=4, seed=0):
    """Layer 0: noise; layer 1: the class is a linear direction (plus noise)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    noise = torch.randn(2, n, c, generator=g)
    dirs = torch.randn(classes, c, generator=g) * 2.0
    feats = noise.clone()
    feats[1] += dirs[y]
    return feats, y


def test_probe_finds_a_planted_class_and_the_control_does_not():
    feats, y = _planted()
    res = probes.probe_layers(feats, y, range(0, 180), range(180, 240), classes=4)
    noise, signal = res
    assert np.mean(signal.real) > 0.9
    assert np.mean(signal.control) < 0.45  # shuffled labels: near chance (0.25) on held-out items
    assert np.mean(noise.real) < 0.45
    assert signal.train_control > np.mean(signal.control)  # capacity: it fits shuffled training labels better


def test_regression_probe_r2_and_its_definition():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 60, 8, generator=g)
    w = torch.randn(8, 2, generator=g)
    y = x[0] @ w * 10 + 50  # targets on a km-like scale: the probe standardises them
    res = probes.cross_validated(x, y, folds=5)[0]
    assert np.mean(res.real) > 0.9 and np.mean(res.control) < 0.3
    # r2_items averages to sklearn's R^2 (uniform over the two outputs' pooled variance)
    pred = y + torch.randn(60, 2, generator=g) * 5
    r = probes.r2_items(pred, y, y.mean(0))
    sse, sst = (pred - y).pow(2).sum(), (y - y.mean(0)).pow(2).sum()
    assert abs(np.mean(r) - float(1 - sse / sst)) < 1e-5


def test_probe_is_trained_by_the_shared_trainer(tmp_path):
    feats, y = _planted(n=80)
    probes.train_probe(feats[1], y, classes=4, out_dir=tmp_path)
    assert (tmp_path / "metrics.jsonl").exists() and (tmp_path / "checkpoint").is_dir()
    # reading only the top principal components: a (C, k) projection, still finds the planted class
    p = probes.train_probe(feats[1], y, probes.ProbeConfig(pca=6), classes=4)
    assert p.proj.shape == (24, 6)
    assert (p(feats[1]).argmax(-1) == y).float().mean() > 0.8


def test_control_averaged_over_shuffles():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 40, 6, generator=g)
    y = torch.randn(40, 2, generator=g)  # no link to x at all
    one = probes.cross_validated(x, y, folds=4, shuffles=1)[0]
    three = probes.cross_validated(x, y, folds=4, shuffles=3)[0]
    assert one.real == three.real and one.control != three.control
    assert abs(np.mean(three.real) - np.mean(three.control)) < 0.5


def test_ece_by_hand():
    conf = np.array([0.95, 0.95, 0.55, 0.55])
    correct = np.array([1.0, 0.0, 1.0, 1.0])
    # bin 0.9-1.0: acc 0.5, conf 0.95 -> 0.45 * 2/4; bin 0.5-0.6: acc 1.0, conf 0.55 -> 0.45 * 2/4
    assert calibration.ece(conf, correct) == pytest.approx(0.45)
    rng = np.random.default_rng(0)
    c = rng.uniform(0.25, 1, 20000)
    assert calibration.ece(c, (rng.uniform(size=c.size) < c).astype(float)) < 0.02  # calibrated by construction
    assert calibration.ece(c, np.ones_like(c)) > 0.3  # underconfident
    iv = calibration.bootstrap_ece(conf, correct, n_resamples=200)
    assert iv.low <= iv.estimate <= iv.high
    d = calibration.bootstrap_ece(conf, correct, other=(conf, correct), n_resamples=50)
    assert d.estimate == d.low == d.high == 0.0


@pytest.fixture(scope="module")
def long_model(tiny_tokenizer):
    from genforge.model.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=tiny_tokenizer.vocab_size, depth=2, width=32, head_dim=16, max_seq_len=512)).eval()


def test_letter_probs_and_mc_items(long_model, tiny_tokenizer):
    from genforge.world.facts import build_world

    tiny_model = long_model

    w = build_world(0, 30, 6, 8)
    items = calibration.mc_items(w, 5)
    assert all(0 <= it["gold"] < 4 and "Give only the final answer" in it["prompt"] for it in items)
    for chat in (False, True):
        p = calibration.letter_probs(tiny_model, tiny_tokenizer, items, chat=chat)
        assert p.shape == (5, 4) and np.allclose(p.sum(-1), 1.0, atol=1e-5)


def test_lie_detector_statements_and_auc():
    from genforge.interp.lie_detector import auc, statements
    from genforge.world.facts import build_world

    w = build_world(0, 30, 6, 8)
    st = statements(w, [p.name for p in w.people[:5]])
    assert len(st) == 20 and sum(s.true for s in st) == 10
    for s in st:
        p = w.person[s.person]
        said_true = (p.job in s.text) if s.attribute == "job" else s.text.endswith(f"{p.town}.")
        assert said_true == s.true
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    scores, labels = rng.uniform(size=50).round(1), rng.uniform(size=50) < 0.5
    assert auc(scores, labels) == pytest.approx(sk.roc_auc_score(labels, scores))


def test_icl_prompt_positions(long_model, tiny_tokenizer):
    from genforge.interp.icl_anchors import anchor_scores, pronoun_prompts

    ps = pronoun_prompts(tiny_tokenizer, ["Ada", "Bea", "Cora", "Edith"], ["Aldo", "Bram", "Emil", "Hugo"], 3,
                         shots=4)
    for p in ps:
        # the label positions hold exactly the demonstrations' label words, each right after its demonstration
        assert sorted(tiny_tokenizer.decode([p.ids[i] for i in p.label_pos]).split()) == ["he", "he", "she", "she"]
        for (a, b) in p.demo_spans:
            assert tiny_tokenizer.decode(p.ids[a:b]).startswith("Name: ") and b in p.label_pos
        assert tiny_tokenizer.decode(p.ids).endswith("Pronoun:")
    s = anchor_scores(long_model, tiny_tokenizer, ps)
    assert len(s.read_label) == 3 and len(s.read_label[0]) == 2  # two layers
    assert all(0 <= v <= 1 for row in s.read_label + s.read_other + s.gather_own for v in row)
