"""Textual inversion: only the one new embedding moves; everything else stays bit-identical."""

import pytest
import torch

from genforge.errors import ConfigError
from genforge.image.inversion import ExtendedEmbedding, add_token, invert, nearest_word, text_embedding
from genforge.image.latent import LatentConfig, LatentDiffusion
from genforge.image.text import CaptionTokenizer
from genforge.world.images import make_shapes


def _model():
    torch.manual_seed(0)
    m = LatentDiffusion(LatentConfig(vocab_size=len(CaptionTokenizer()), latent_dim=8, vae_hidden=32, hidden=32,
                                     depth=1, num_train_timesteps=50))
    for p in m.parameters():
        if p.abs().sum() == 0:
            p.data.normal_(0, 0.1)
    return m


def test_extended_embedding_reads_old_rows_and_the_new_one():
    base = torch.nn.Embedding(5, 3, padding_idx=0)
    ext = ExtendedEmbedding(base, torch.ones(3))
    ids = torch.tensor([[0, 4, 5, 2]])
    out = ext(ids)
    assert torch.equal(out[0, :2], base(ids[:, :2])[0]) and torch.equal(out[0, 2], torch.ones(3))


def test_inversion_updates_only_the_new_embedding(tmp_path):
    m = _model()
    tok = CaptionTokenizer()
    new_id = tok.add_word("<new>")
    assert new_id == text_embedding(m.ema).num_embeddings
    imgs = make_shapes(5, seed=1).images
    m.fit_scale(imgs)
    ids = tok(["a small <new> in the top left"] * 5)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    net, got_id, summary = invert(m.ema, m.scheduler(), m.encode(imgs), ids, tmp_path, steps=8, lr=0.1)
    assert got_id == new_id and summary["step"] == 8
    learned = net.embed.conditioner.text.embed.new
    init = text_embedding(m.ema).weight[2:].mean(0)
    assert not torch.allclose(learned[0], init)  # the token moved
    # every other tensor of the inverted copy equals the frozen model's, bit for bit
    orig = dict(m.ema.state_dict())
    for k, v in net.state_dict().items():
        if k.endswith("text.embed.new"):
            continue
        key = k.replace("text.embed.base.", "text.embed.")
        assert torch.equal(v, orig[key]), k
    # and the model itself was not touched
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    # prompting with the new token works, and nearest_word names an existing word
    out = m.sample(2, ids[:2], 1.0, "ddim", 3, seed=0, net=net)
    assert out.shape == (2, 3, 16, 16)
    assert nearest_word(net, learned[0], tok.vocab) in tok.vocab[2:-1]


def test_inversion_needs_the_token_in_every_caption(tmp_path):
    m = _model()
    tok = CaptionTokenizer()
    with pytest.raises(ConfigError, match="new token"):
        invert(m.ema, m.scheduler(), torch.randn(2, 8, 1, 1), tok(["a red circle", "a blue square"]), tmp_path,
               steps=1)
    with pytest.raises(ConfigError, match="text-conditioned"):
        add_token(torch.nn.Linear(2, 2), torch.zeros(2))
