"""VQ-VAE: nearest-neighbour assignment, the straight-through gradient, the EMA codebook and its usage numbers."""

import torch

from genforge.image.vq import VQVAE, VQConfig, nearest_code, straight_through


def test_assignment_is_the_nearest_codebook_row():
    g = torch.Generator().manual_seed(0)
    z, book = torch.randn(50, 3, generator=g), torch.randn(7, 3, generator=g)
    brute = torch.stack([((book - v) ** 2).sum(1).argmin() for v in z])
    assert torch.equal(nearest_code(z, book), brute)


def test_quantize_returns_codebook_rows_at_the_nearest_ids():
    torch.manual_seed(0)
    vq = VQVAE(VQConfig(hidden=8, code_dim=4, codebook_size=5))
    z_e = torch.randn(2, 4, 4, 4)
    z_q, ids = vq.quantize(z_e)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 4)
    assert torch.equal(ids.flatten(), nearest_code(flat, vq.codebook))
    assert torch.equal(z_q.permute(0, 2, 3, 1).reshape(-1, 4), vq.codebook[ids.flatten()])


def test_straight_through_copies_the_gradient_to_the_encoder_output():
    z_e = torch.randn(3, 4, requires_grad=True)
    z_q = torch.randn(3, 4)  # no gradient path of its own (an argmin lookup)
    out = straight_through(z_e, z_q)
    assert torch.allclose(out, z_q, atol=1e-6)  # forward: the quantized vectors (z_e + (z_q - z_e))
    w = torch.randn(3, 4)
    (out * w).sum().backward()
    assert torch.equal(z_e.grad, w)  # backward: d out / d z_e = identity


def test_the_decoder_gradient_reaches_the_encoder_through_the_quantizer():
    torch.manual_seed(0)
    vq = VQVAE(VQConfig(hidden=8, code_dim=4, codebook_size=5, ema_decay=0.0))
    out = vq(torch.rand(2, 1, 8, 8))
    out["recon"].backward()
    assert vq.encoder[0].weight.grad is not None and vq.encoder[0].weight.grad.abs().sum() > 0
    assert vq.codebook.grad is None or vq.codebook.grad.abs().sum() == 0  # the recon loss does not move codes


def test_ema_moves_the_codebook_and_training_lowers_the_error():
    torch.manual_seed(0)
    x = (torch.rand(64, 1, 8, 8) > 0.6).float()
    vq = VQVAE(VQConfig(hidden=16, code_dim=4, codebook_size=8))
    before, book0 = vq.usage(x)["recon_mse"], vq.codebook.clone()
    opt = torch.optim.Adam(vq.parameters(), 3e-3)
    vq.train()
    for _ in range(60):
        loss, n, _ = vq.train_loss({"x": x})
        opt.zero_grad()
        (loss / n).backward()
        opt.step()
    u = vq.usage(x)
    assert not torch.equal(book0, vq.codebook)
    assert u["recon_mse"] < before
    assert 1.0 <= u["perplexity"] <= 8.0 and 0 < u["codes_used"] <= 1.0
    assert vq.tokens(x).shape == (64, 16) and int(vq.tokens(x).max()) < 8


def test_a_training_step_under_bf16_autocast_keeps_the_codebook_fp32_and_restarts_dead_codes():
    """The trainer autocasts to bf16 on CPUs with native bf16; the EMA codebook update (and a dead-code restart, which
    writes encoder outputs into the codebook) must stay fp32 there (it crashed with an index_put dtype error)."""
    torch.manual_seed(0)
    vq = VQVAE(VQConfig(hidden=8, code_dim=4, codebook_size=16, restart_below=1e9))  # every code "dead": restart all
    vq.train()
    x = torch.rand(4, 1, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vq(x)
    assert vq.codebook.dtype == torch.float32 and torch.isfinite(vq.codebook).all()
    assert out["ids"].shape == (4, 4, 4)
