import random

import pytest

from genforge.safety import detect


def test_roc_auc_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(0)
    y = [rng.randrange(2) for _ in range(200)]
    s = [rng.random() + 0.3 * t for t in y]
    s[3] = s[4]  # a tie
    assert detect.roc_auc(y, s) == pytest.approx(metrics.roc_auc_score(y, s))
    auc, lo, hi, n = detect.bootstrap_auc(y, s, n_resamples=200)
    assert lo <= auc <= hi and n == 200


def test_classifier_separates_styles_and_attacks_edit_text():
    pytest.importorskip("sklearn")
    rng = random.Random(0)
    human = [f"The baker of town {i} said the bread was warm and the river was high." for i in range(40)]
    model = [f"the the baker baker {i} river river river warm warm." for i in range(40)]
    clf = detect.fit_classifier(human[:20] + model[:20], [0] * 20 + [1] * 20)
    s = detect.classifier_scores(clf, human[20:] + model[20:])
    assert detect.roc_auc([0] * 20 + [1] * 20, s) > 0.95
    t = "The baker said hello. The town was big."
    assert detect.paraphrase(t, rng) != t
    sub = detect.substitute_words(t, 0.5, ["zzz"], rng)
    assert sub.split().count("zzz") == round(0.5 * len(t.split()))


def test_watermark_scores_separate_green_text(tiny_tokenizer):
    from genforge.infer.watermark import WatermarkConfig, green_mask

    cfg = WatermarkConfig()
    # greedily build a text of green tokens only: its z must be high; plain text's near 0
    ids = [tiny_tokenizer.encode("The")[0]]
    for _ in range(40):
        g = green_mask((ids[-1],), tiny_tokenizer.vocab_size, cfg.gamma, cfg.key)
        ids.append(int(g.nonzero()[5 % int(g.sum())]))
    z_green = detect.detect(ids, tiny_tokenizer.vocab_size, cfg)["z"]
    assert z_green > 4
