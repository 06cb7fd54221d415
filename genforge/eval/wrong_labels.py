"""In-context classification with correct, random and flipped demonstration labels.

Min et al. 2022 ("Rethinking the Role of Demonstrations") found that replacing the gold labels of the
k demonstrations by random ones barely hurts in-context classification: the demonstrations mostly tell
the model the input distribution, the label space and the format. Wei et al. 2023 ("Larger language
models do in-context learning differently") showed the other side: with *flipped* labels, large models
follow the demonstrations and fall below chance, small ones keep their prior.

This module builds the three kinds of demonstrations over the same test items and scores a model by the
log-likelihood of each label word (no generation, so it is cheap and has no format failures):
    "Input: Birchgate\nType: town\n\nInput: Joël Ashgrove\nType: person\n\nInput: <test>\nType:" -> " town" | " person"
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

MODES = ("correct", "random", "flipped")


@dataclass(frozen=True)
class LabeledItem:
    text: str
    label: str


def relabel(demos: Sequence[LabeledItem], labels: Sequence[str], mode: str, rng: random.Random) -> list[LabeledItem]:
    """The demonstrations with their labels kept ("correct"), drawn uniformly from `labels` ("random"),
    or replaced by the next label in `labels` ("flipped": for two labels, swapped; never the gold one)."""
    if mode not in MODES:
        raise ValueError(f"unknown label mode {mode!r}; choose one of {', '.join(MODES)}")
    if len(set(labels)) < 2:
        raise ValueError("wrong-label demonstrations need at least two labels")
    labels = list(dict.fromkeys(labels))
    out = []
    for d in demos:
        if mode == "correct":
            lab = d.label
        elif mode == "random":
            lab = rng.choice(labels)
        else:
            lab = labels[(labels.index(d.label) + 1) % len(labels)]
        out.append(LabeledItem(d.text, lab))
    return out


def render(demos: Sequence[LabeledItem], query: str, *, input_name: str = "Input", label_name: str = "Type") -> str:
    """Demonstrations then the open query, in the "Input: ...\\nType: ..." frame."""
    blocks = [f"{input_name}: {d.text}\n{label_name}: {d.label}" for d in demos]
    blocks.append(f"{input_name}: {query}\n{label_name}:")
    return "\n\n".join(blocks)


def build_prompts(train: Sequence[LabeledItem], test: Sequence[LabeledItem], labels: Sequence[str], k: int,
                  mode: str, seed: int = 0) -> list[str]:
    """One prompt per test item with k demonstrations (a balanced draw over the labels where possible).

    The demonstrations' *inputs* depend only on the seed and the item index, not on the mode, so the three modes
    differ in their labels alone; that is what makes the comparison paired.
    """
    prompts = []
    by_label = {lab: [t for t in train if t.label == lab] for lab in labels}
    for i, item in enumerate(test):
        rng = random.Random(f"{seed}-{i}")
        demos = [rng.choice(by_label[labels[j % len(labels)]]) for j in range(k)]
        rng.shuffle(demos)
        demos = relabel(demos, labels, mode, random.Random(f"{seed}-{i}-labels"))
        prompts.append(render(demos, item.text))
    return prompts


CONTENT_FREE = "N/A"


def classify(lm, prompts: Sequence[str], labels: Sequence[str], *, calibrate: bool = True) -> list[str]:
    """The label whose word is likeliest after each prompt (sum of log-probs of " <label>").

    calibrate: contextual calibration (Zhao et al. 2021, "Calibrate before use"): subtract each label's
    log-probability after the same prompt with the query replaced by a content-free input ("N/A"). A small model
    often prefers one label word whatever the input; calibration removes that prior so the prediction can depend
    on the input (and on the demonstrations), which is what this lesson measures.
    """
    n = len(labels)

    def scores(ps: Sequence[str]) -> list[float]:
        return [x[0] for x in lm.loglikelihood([(p, f" {lab}") for p in ps for lab in labels])]

    ll = scores(prompts)
    if calibrate:
        free = [p[:p.rindex("Input: ")] + f"Input: {CONTENT_FREE}\n" + p.rsplit("\n", 1)[1] for p in prompts]
        prior = scores(free)
        ll = [a - b for a, b in zip(ll, prior)]
    return [labels[max(range(n), key=lambda j: ll[i * n + j])] for i in range(len(prompts))]


def wrong_label_predictions(lm, train: Sequence[LabeledItem], test: Sequence[LabeledItem], labels: Sequence[str],
                            k: int = 4, seed: int = 0, modes: Sequence[str] = MODES,
                            calibrate: bool = True) -> dict[str, list[str]]:
    """{mode: the predicted label of each test item}, plus "zero_shot" (no demonstrations)."""
    out = {"zero_shot": classify(lm, [render([], t.text) for t in test], labels, calibrate=calibrate)}
    for mode in modes:
        out[mode] = classify(lm, build_prompts(train, test, labels, k, mode, seed), labels, calibrate=calibrate)
    return out


def scores_of(predictions: dict[str, list[str]], test: Sequence[LabeledItem]) -> dict[str, list[float]]:
    """{mode: per-item 1/0 accuracy against the TRUE label} from `wrong_label_predictions`."""
    return {m: [float(p == t.label) for p, t in zip(preds, test)] for m, preds in predictions.items()}


def label_sensitivity(predictions: dict[str, list[str]]) -> float:
    """Share of items whose prediction changes when every demonstration label is flipped: 0 means the model does
    not read the demonstrations' labels at all, and no wrong-label effect (Min et al. or Wei et al.) can show."""
    a, b = predictions["correct"], predictions["flipped"]
    return sum(x != y for x, y in zip(a, b)) / max(len(a), 1)


def wrong_label_scores(lm, train: Sequence[LabeledItem], test: Sequence[LabeledItem], labels: Sequence[str],
                       k: int = 4, seed: int = 0, modes: Sequence[str] = MODES,
                       calibrate: bool = True) -> dict[str, list[float]]:
    """{mode: per-item 1/0 accuracy against the TRUE label}, plus "zero_shot" (no demonstrations)."""
    return scores_of(wrong_label_predictions(lm, train, test, labels, k, seed, modes, calibrate), test)


def entity_type_items(world_tables: dict, n_train: int, n_test: int, seed: int = 0) -> tuple[list[LabeledItem],
                                                                                           list[LabeledItem]]:
    """A three-label classification from the world's tables: a name is a "person", a "town" or an "object".

    The pretrained model has read every name in its corpus, so it has a prior to keep or to override; test and
    demonstration names are disjoint. Balanced over the labels (as many per label as the smallest table allows).
    """
    rng = random.Random(f"wrong-labels-{seed}")
    pools = {"person": [p["name"] for p in world_tables["people"]], "town": [t["name"] for t in world_tables["towns"]],
             "object": [x["name"] for x in world_tables["objects"]]}
    for names in pools.values():
        rng.shuffle(names)
    smallest = min(len(v) for v in pools.values())
    per_test = min(n_test // len(pools), smallest // 2)
    per_train = min(max(n_train // len(pools), 1), smallest - per_test)
    test = [LabeledItem(n, lab) for lab, names in pools.items() for n in names[:per_test]]
    train = [LabeledItem(n, lab) for lab, names in pools.items() for n in names[per_test:per_test + per_train]]
    rng.shuffle(test)
    return train, test
