"""VAE: KL formula, the ELBO on a linear-Gaussian model where it equals log p(x), training and editing."""

import math

import torch

from genforge.image.vae import VAE, VAEConfig, kl_to_standard_normal


def test_kl_matches_torch_distributions():
    mu, logvar = torch.randn(5, 3), torch.randn(5, 3)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    want = torch.distributions.kl_divergence(q, p).sum(-1)
    assert torch.allclose(kl_to_standard_normal(mu, logvar), want, atol=1e-5)


def test_elbo_equals_log_likelihood_with_the_exact_posterior():
    # Probabilistic PCA: p(z) = N(0, I), p(x|z) = N(Wz + b, s^2 I), so p(x) = N(b, W W^T + s^2 I) and the exact
    # posterior is N(S W^T (x - b) / s^2, S) with S = (I + W^T W / s^2)^-1. With orthogonal columns of W, S is
    # diagonal, a linear VAE can represent it exactly, and then ELBO = log p(x) (the KL to the posterior is 0).
    torch.manual_seed(0)
    d, k, s = 4, 2, 0.5
    q, _ = torch.linalg.qr(torch.randn(d, k, dtype=torch.float64))
    W = q * torch.tensor([1.5, 0.7], dtype=torch.float64)  # orthogonal columns, different lengths
    b = torch.randn(d, dtype=torch.float64)
    S = torch.linalg.inv(torch.eye(k, dtype=torch.float64) + W.T @ W / s**2)
    assert torch.allclose(S, torch.diag(torch.diag(S)))
    vae = VAE(VAEConfig((1, 1, d), latent_dim=k, hidden=0, likelihood="gaussian", sigma=s)).double()
    with torch.no_grad():
        vae.decoder.weight.copy_(W)
        vae.decoder.bias.copy_(b)
        A = S @ W.T / s**2  # posterior mean = A (x - b)
        vae.encoder.weight.zero_()
        vae.encoder.weight[:k].copy_(A)
        vae.encoder.bias[:k].copy_(-A @ b)
        vae.encoder.bias[k:].copy_(torch.log(torch.diag(S)))
    x = torch.randn(3, 1, 1, d, dtype=torch.float64)
    px = torch.distributions.MultivariateNormal(b, W @ W.T + s**2 * torch.eye(d, dtype=torch.float64))
    log_px = px.log_prob(x.flatten(1))
    elbo = vae.elbo(x, n_samples=20000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(elbo, log_px, atol=0.03), (elbo, log_px)
    # a worse posterior (wrong variance) gives a strictly lower bound
    with torch.no_grad():
        vae.encoder.bias[k:] += 1.0
    assert torch.all(vae.elbo(x, n_samples=20000, generator=torch.Generator().manual_seed(0)) < log_px - 0.1)
    assert math.isfinite(float(elbo.sum()))


def test_training_interpolation_and_attribute_direction():
    torch.manual_seed(0)
    # two kinds of 4x4 images: left half lit or right half lit
    x = torch.zeros(64, 1, 4, 4)
    x[:32, :, :, :2] = 1
    x[32:, :, :, 2:] = 1
    left = torch.arange(64) < 32
    vae = VAE(VAEConfig((1, 4, 4), latent_dim=2, hidden=32))
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    first = vae.loss(x, generator=g)["loss"].item()
    for _ in range(300):
        loss = vae.loss(x, generator=g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    path = vae.interpolate(x[0], x[40], steps=5)
    assert path.shape == (5, 1, 4, 4)
    assert path[0, 0, :, :2].mean() > 0.8 and path[-1, 0, :, 2:].mean() > 0.8
    direction = vae.attribute_direction(x, left)
    edited = vae.edit(x[40:44], direction, 1.0)  # right-lit images pushed along "left"
    assert edited[:, 0, :, :2].mean() > 0.7 and edited[:, 0, :, 2:].mean() < 0.3
    assert vae.sample(6, seed=1).shape == (6, 1, 4, 4)
