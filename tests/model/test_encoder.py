"""Encoder-only model: MLM masking statistics, bidirectional vs causal attention, BERT parity, MiniLM import."""

import numpy as np
import pytest
import torch

from genforge.checkpoint import load_model, save_checkpoint
from genforge.checkpoint.hf_bert import load_bert_encoder
from genforge.errors import CheckpointError, ConfigError
from genforge.model.encoder import EncoderConfig, MaskedLM, SequenceClassifier, TokenTagger, encoder_params, mean_pool
from genforge.train.mlm import IGNORE, MLMConfig, mask_tokens, mlm_loss


def small_cfg(**kw) -> EncoderConfig:
    return EncoderConfig(**{"vocab_size": 101, "depth": 2, "width": 32, "head_dim": 8, "max_seq_len": 40, **kw})


def test_mlm_masking_statistics():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 100, (200, 100), generator=g)
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, :5] = True  # never chosen
    x, y = mask_tokens(ids, mask_id=100, vocab_size=100, special=special, generator=g)
    target = y != IGNORE
    assert not target[:, :5].any()
    rate = target[:, 5:].float().mean().item()
    assert abs(rate - 0.15) < 0.005  # 19,000 candidates: sd of the rate ~0.0026
    assert torch.equal(y[target], ids[target])  # labels are the originals
    n = target.sum().item()
    masked = (x[target] == 100).float().mean().item()
    unchanged = (x[target] == ids[target]).float().mean().item()
    random_other = 1 - masked - unchanged
    assert abs(masked - 0.8) < 0.02
    # random replacements sometimes draw the original id (1 in 90 here), counted as unchanged
    assert abs(unchanged - (0.1 + 0.1 / 90)) < 0.015 and abs(random_other - 0.1 * 89 / 90) < 0.015
    assert torch.equal(x[~target], ids[~target])  # non-targets untouched
    assert n > 2500
    with pytest.raises(ConfigError, match="mask_rate"):
        MLMConfig(mask_rate=0.0)


def test_bidirectional_sees_future_causal_does_not():
    torch.manual_seed(0)
    m = MaskedLM(small_cfg()).eval()
    a = torch.randint(0, 100, (1, 12))
    b = a.clone()
    b[0, 8] = (a[0, 8] + 1) % 100  # change a "future" token
    with torch.no_grad():
        bi_a, bi_b = m(a, return_hidden=True), m(b, return_hidden=True)
        ca_a, ca_b = m(a, causal=True, return_hidden=True), m(b, causal=True, return_hidden=True)
    assert (bi_a[0, :8] - bi_b[0, :8]).abs().max() > 1e-4  # earlier positions see the change
    torch.testing.assert_close(ca_a[0, :8], ca_b[0, :8])  # causal: the past is blind to it
    assert (ca_a[0, 8:] - ca_b[0, 8:]).abs().max() > 1e-4
    # padding is invisible to real tokens
    mask = torch.ones(1, 12, dtype=torch.long)
    mask[0, 10:] = 0
    with torch.no_grad():
        h1 = m(a, attention_mask=mask, return_hidden=True)
        h2 = m(torch.cat([a[:, :10], b[:, 10:] * 0 + 7], 1), attention_mask=mask, return_hidden=True)
    torch.testing.assert_close(h1[0, :10], h2[0, :10])


def test_bert_for_masked_lm_parity(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    m = MaskedLM(small_cfg()).eval()
    for p in m.parameters():  # non-trivial norms and biases, so a swapped name shows
        p.data += 0.05 * torch.randn_like(p)
    folder = save_checkpoint(tmp_path / "bert", m)
    hf = transformers.BertForMaskedLM.from_pretrained(folder).eval()
    ids = torch.randint(0, 101, (2, 17))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    with torch.no_grad():
        ours = m(ids, attention_mask=mask)
        theirs = hf(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(ours[0], theirs[0], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(ours[1, :12], theirs[1, :12], atol=2e-5, rtol=1e-4)
    back = load_model(folder)  # genforge reads its own folder back (the bert family)
    with torch.no_grad():
        torch.testing.assert_close(back(ids, attention_mask=mask), ours)
    assert encoder_params(m.config) == m.num_params()


def test_minilm_import_equals_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    transformers = pytest.importorskip("transformers")
    from genforge.rag.embed import minilm_model_dir

    folder = minilm_model_dir()
    enc = load_bert_encoder(folder)
    tok = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    texts = ["Bram owns the red lamp in Alder.", "a", "The miller of Essen sold a blue boat to Ada yesterday."]
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = enc(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        ours = torch.nn.functional.normalize(mean_pool(h, batch["attention_mask"]), dim=1).numpy()
    ref = st.SentenceTransformer(str(folder), device="cpu", local_files_only=True).encode(
        texts, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    with pytest.raises(CheckpointError, match="missing"):
        load_bert_encoder(folder.parent / "1_Pooling")


def test_heads_and_loss_shapes():
    torch.manual_seed(0)
    m = MaskedLM(small_cfg())
    ids = torch.randint(0, 100, (3, 10))
    x, y = mask_tokens(ids, 100, 100)
    loss = mlm_loss(m(x), y)
    loss.backward()
    assert torch.isfinite(loss) and m.encoder.embed.word.weight.grad is not None
    clf = SequenceClassifier(m.encoder, 4)
    tag = TokenTagger(m.encoder, 5)
    am = torch.ones_like(ids)
    assert clf(ids, am).shape == (3, 4) and tag(ids, am).shape == (3, 10, 5)
    with pytest.raises(ConfigError, match="longer than"):
        m(torch.zeros(1, 41, dtype=torch.long))


def test_mlm_pretraining_learns_from_context(tmp_path):
    """MLM through the one loop on a stream of long runs of one token: a masked token is read off its context."""
    from genforge.train.mlm import WindowData, mlm_loss_fn
    from genforge.train.trainer import TrainConfig, Trainer, read_metrics

    torch.manual_seed(0)
    stream = torch.randint(2, 22, (60,), generator=torch.Generator().manual_seed(0)).repeat_interleave(48)
    m = MaskedLM(small_cfg(vocab_size=23, max_seq_len=32))
    cfg = TrainConfig(max_steps=100, micro_batch=32, lr=5e-3, warmup_steps=5, eval_every=0, log_every=20,
                      progress=False, resume=False)
    Trainer(m, cfg, mlm_loss_fn(mask_id=22, vocab_size=22, pad_id=0), WindowData(stream, 24, 32, 0),
            tmp_path / "mlm").fit()
    rows = read_metrics(tmp_path / "mlm")
    # chance is 1/20; measured 0.79 after 100 steps (the runs of one token make it a bag-of-words lookup)
    assert rows[-1]["masked_acc"] > 0.5 and rows[-1]["loss"] < rows[0]["loss"] * 0.7
