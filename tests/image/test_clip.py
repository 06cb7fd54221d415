"""CLIP: InfoNCE against a hand computation, the CLIP score's ends, caption-equality positives, and that a few
hundred steps on the world's pairs learn something (retrieval far above chance)."""

import math

import torch

from genforge.image.clip import CLIP, CLIPConfig, clip_score, info_nce, same_caption_targets
from genforge.image.text import CaptionTokenizer
from genforge.world.images import make_shapes


def test_info_nce_matches_hand_computation_on_three_pairs():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    scale = 2.0
    # cosines by hand: image i (rows) vs caption j (columns)
    r = 1 / math.sqrt(2)
    cos = [[1.0, r, 0.0], [0.0, r, 1.0], [r, 1.0, r]]
    logits = [[scale * c for c in row] for row in cos]

    def ce(row: list[float], target: int) -> float:
        return -(row[target] - math.log(sum(math.exp(v) for v in row)))

    image_to_text = sum(ce(logits[i], i) for i in range(3)) / 3
    text_to_image = sum(ce([logits[i][j] for i in range(3)], j) for j in range(3)) / 3
    want = (image_to_text + text_to_image) / 2
    assert abs(info_nce(img, txt, scale).item() - want) < 1e-6


def test_same_caption_positives_reduce_to_identity_when_captions_differ():
    tok = CaptionTokenizer()
    ids = tok(["a small red circle in the top left", "a large blue square in the center",
               "a small red circle in the top left"])
    tg = same_caption_targets(ids)
    assert torch.allclose(tg, torch.tensor([[0.5, 0, 0.5], [0, 1, 0], [0.5, 0, 0.5]]))
    distinct = tok(["a small red circle in the top left", "a large blue square in the center"])
    assert torch.equal(same_caption_targets(distinct), torch.eye(2))
    img, txt = torch.randn(2, 4), torch.randn(2, 4)
    assert torch.allclose(info_nce(img, txt, 3.0, same_caption_targets(distinct)), info_nce(img, txt, 3.0))


def test_clip_score_identical_is_100_and_orthogonal_is_0():
    a = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]])
    assert torch.allclose(clip_score(a, a), torch.tensor([100.0, 100.0]))
    b = torch.tensor([[3.0, 0.0, -1.0], [5.0, 0.0, 0.0]])  # orthogonal to each row of a
    assert torch.allclose(clip_score(a, b), torch.zeros(2), atol=1e-5)
    assert torch.allclose(clip_score(a, -a), torch.zeros(2))  # negative cosines are clipped to 0


def test_clip_learns_caption_retrieval_quickly():
    torch.manual_seed(0)
    tok = CaptionTokenizer()
    train, test = make_shapes(1500, seed=1), make_shapes(200, seed=2)
    model = CLIP(CLIPConfig(vocab_size=len(tok), dim=32, width=16))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ids = tok(train.captions)
    g = torch.Generator().manual_seed(0)
    for _ in range(120):
        idx = torch.randint(0, len(train), (128,), generator=g)
        loss, n, _ = model.loss({"x": train.images[idx], "cond": ids[idx]})
        opt.zero_grad()
        (loss / n).backward()
        opt.step()
    cands = sorted(set(test.captions))
    pick = model.retrieve(test.images, tok(cands))
    r1 = sum(cands[int(p)] == c for p, c in zip(pick, test.captions)) / len(test)
    assert r1 > 5 / len(cands), r1  # chance is 1 / len(cands)
    real = model.score(test.images, tok(test.captions))
    shuffled = model.score(test.images, tok(test.captions[1:] + test.captions[:1]))
    assert real.mean() > shuffled.mean() + 5
