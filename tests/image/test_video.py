"""Video model: factorised attention's shapes, full 3-D attention against a hand computation, FLOPs, centroids."""

import math

import pytest
import torch

from genforge.errors import ConfigError
from genforge.image.video import Attention, Block, VideoConfig, VideoModel, block_causal_mask, centroids, flops
from genforge.world.images import make_clips


@pytest.mark.parametrize("attention", ["factorised", "full"])
def test_output_shapes_and_next_frame_loss(attention):
    torch.manual_seed(0)
    cfg = VideoConfig(attention=attention, image_size=8, patch=2, width=16, n_head=2, frames=4)
    m = VideoModel(cfg)
    x = torch.rand(3, 4, 3, 8, 8)
    assert m(x).shape == (3, 4, 3, 8, 8)
    assert torch.equal(m.from_patches(m.to_patches(x)), x)
    blk = Block(cfg)
    assert blk(torch.randn(3, 4, 16, 16)).shape == (3, 4, 16, 16)
    loss, n, _ = m.loss({"x": x})
    assert n == 3 and loss.item() > 0
    assert m.rollout(x[:, :2]).shape == (3, 4, 3, 8, 8)


def test_full_attention_equals_a_hand_computed_attention():
    torch.manual_seed(0)
    attn = Attention(4, 2)
    x = torch.randn(1, 6, 4)  # 3 frames x 2 patches
    mask = block_causal_mask(3, 2)
    q, k, v = attn.qkv(x)[0].split(4, -1)  # (6, 4) each
    heads = []
    for h in range(2):
        sl = slice(2 * h, 2 * h + 2)
        s = q[:, sl] @ k[:, sl].T / math.sqrt(2)  # (6, 6)
        s = s.masked_fill(~mask, float("-inf"))
        heads.append(torch.softmax(s, -1) @ v[:, sl])
    want = attn.out(torch.cat(heads, -1))
    assert torch.allclose(attn(x, mask)[0], want, atol=1e-6)
    # token 0 (frame 0) sees only frame 0; tokens of frame 2 see all six
    assert mask[0].tolist() == [True, True, False, False, False, False] and mask[5].all()


def test_causal_in_time_both_ways():
    """Changing a later frame never changes the prediction for an earlier one (full and factorised)."""
    for attention in ("factorised", "full"):
        torch.manual_seed(0)
        m = VideoModel(VideoConfig(attention=attention, image_size=8, patch=2, width=16, frames=4)).eval()
        x = torch.rand(2, 4, 3, 8, 8)
        y = x.clone()
        y[:, 3] = torch.rand(2, 3, 8, 8)
        assert torch.allclose(m(x)[:, :3], m(y)[:, :3], atol=1e-6)


def test_flops_full_is_quadratic_in_tokens_and_factorised_cheaper_at_many_tokens():
    full, fact = VideoConfig(attention="full", patch=2), VideoConfig(attention="factorised", patch=2)
    assert flops(full) > 2 * flops(fact)  # 512 tokens of width 32
    # hand count for one tiny case: T=2, S=1 (patch = image), C=8, P=3*4*4, depth 1, full attention
    c = VideoConfig(attention="full", image_size=4, patch=4, width=8, frames=2, depth=1, n_head=2, context=1)
    N, C, P = 2, 8, 48
    # embed + [q, k, v, out projections + scores and weighted sum + MLP (C -> 4C -> C)] + head
    assert flops(c) == 2 * N * P * C + (2 * N * C * 4 * C + 4 * N * N * C + 2 * 2 * N * C * 4 * C) + 2 * N * C * P


def test_centroids_follow_the_true_trajectory():
    clips, _, lab = make_clips(20, 0)
    got = centroids(clips)
    true = torch.stack([lab["rows"], lab["cols"]], -1).float()
    assert (got - true).norm(dim=-1).mean() < 0.8


def test_bad_config():
    with pytest.raises(ConfigError, match="attention"):
        VideoConfig(attention="3d")
    with pytest.raises(ConfigError, match="patch"):
        VideoConfig(patch=3)
