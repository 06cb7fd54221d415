"""In-context learning: label words as anchors (Wang et al. 2023, "Label Words are Anchors").

Their finding: in shallow layers the label words of the demonstrations gather the information of their
demonstration; in deep layers the answer position reads the label words. We measure it with attention
weights on a few-shot classification prompt of the tiny world (a first name -> its pronoun, "she"/"he",
a link the corpus teaches), per layer and averaged over heads:

* gather: attention from each label word to its own demonstration's text vs to earlier text outside it;
* read: attention from the answer position to the label words vs to the other tokens.

Both are per-token averages (mass / number of tokens), so "label words get more per token" is not an
artefact of how many tokens each group has. The first (BOS) token is left out of both groups: it is an
attention sink (Xiao et al. 2023) that soaks up mass whatever the prompt says.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from genforge.interp.attention import attention_weights


@dataclass
class AnchorPrompt:
    """One few-shot prompt as token ids with the positions the analysis needs."""

    ids: list[int]
    label_pos: list[int]  # positions of the demonstrations' label words
    demo_spans: list[tuple[int, int]]  # [start, end) of each demonstration's text (before its label word)
    answer: str  # the query's gold label word
    labels: tuple[str, ...]


def make_prompt(tok, demos: Sequence[tuple[str, str]], query: str, answer: str,
                labels: tuple[str, ...] = ("she", "he")) -> AnchorPrompt:
    """Prompt "Name: X\\nPronoun: she\\n\\n..." built piece by piece so every label word is exactly one known span."""
    ids, label_pos, spans = [tok.bos_id], [], []
    for name, lab in demos:
        start = len(ids)
        ids += tok.encode(f"Name: {name}\nPronoun:")
        spans.append((start, len(ids)))
        lab_ids = tok.encode(f" {lab}")
        label_pos += list(range(len(ids), len(ids) + len(lab_ids)))
        ids += lab_ids + tok.encode("\n\n")
    ids += tok.encode(f"Name: {query}\nPronoun:")
    return AnchorPrompt(ids, label_pos, spans, answer, labels)


def pronoun_prompts(tok, female: Sequence[str], male: Sequence[str], n: int, shots: int = 8,
                    seed: int = 0) -> list[AnchorPrompt]:
    """n prompts with `shots` balanced demonstrations each and a query name not among them."""
    rng = random.Random(f"icl-anchors-{seed}")
    pool = [(f, "she") for f in female] + [(m, "he") for m in male]
    out = []
    for _ in range(n):
        q = rng.choice(pool)
        fem = rng.sample([p for p in pool if p[1] == "she" and p != q], shots // 2)
        mal = rng.sample([p for p in pool if p[1] == "he" and p != q], shots - shots // 2)
        demos = fem + mal
        rng.shuffle(demos)
        out.append(make_prompt(tok, demos, q[0], q[1]))
    return out


@dataclass
class AnchorScores:
    """Per prompt and layer (lists of [L] per prompt): per-token attention mass of each group, and the answer."""

    read_label: list[list[float]]  # answer position -> label words
    read_other: list[list[float]]  # answer position -> other tokens (not BOS, not label words)
    gather_own: list[list[float]]  # label word -> its own demonstration's text
    gather_other: list[list[float]]  # label word -> earlier text outside its demonstration (not BOS)
    correct: list[float]  # 1.0 when the gold label word is likelier than the other label word at the answer


@torch.no_grad()
def anchor_scores(model: nn.Module, tok, prompts: Sequence[AnchorPrompt]) -> AnchorScores:
    """Attention-flow scores of each prompt, layer by layer (attention averaged over heads)."""
    s = AnchorScores([], [], [], [], [])
    for p in prompts:
        ids = torch.tensor([p.ids])
        w = attention_weights(model, ids)[:, 0].mean(1)  # (L, T, T), heads averaged
        T = len(p.ids)
        labels = set(p.label_pos)
        q = T - 1
        others = [j for j in range(1, T) if j not in labels]
        s.read_label.append(w[:, q, sorted(labels)].mean(-1).tolist())
        s.read_other.append(w[:, q, others].mean(-1).tolist())
        own, out = [], []
        for (a, b), lp in zip(p.demo_spans, _label_groups(p)):
            for pos in lp:
                own_idx = list(range(a, b))
                other_idx = [j for j in range(1, a) if j not in labels]
                own.append(w[:, pos, own_idx].mean(-1))
                if other_idx:
                    out.append(w[:, pos, other_idx].mean(-1))
        s.gather_own.append(torch.stack(own).mean(0).tolist())
        s.gather_other.append(torch.stack(out).mean(0).tolist() if out else [float("nan")] * w.shape[0])
        logits = model(ids)[0, -1]
        gold, other = (tok.encode(f" {lab}")[0] for lab in (p.answer, next(x for x in p.labels if x != p.answer)))
        s.correct.append(float(logits[gold] > logits[other]))
    return s


def _label_groups(p: AnchorPrompt) -> list[list[int]]:
    """The label-word positions of each demonstration (a label word may be several tokens)."""
    groups = []
    for k, (_, b) in enumerate(p.demo_spans):
        end = p.demo_spans[k + 1][0] if k + 1 < len(p.demo_spans) else len(p.ids)
        groups.append([j for j in p.label_pos if b <= j < end])
    return groups
