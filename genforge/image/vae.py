"""Variational autoencoder (Kingma & Welling 2014, "Auto-Encoding Variational Bayes", arXiv:1312.6114).

The encoder outputs q(z|x) = N(mu(x), diag(exp(logvar(x)))), the decoder p(x|z), the prior p(z) = N(0, I).
Training maximises the ELBO  log p(x) >= E_q[log p(x|z)] - KL(q(z|x) || p(z))  with the KL weighted by beta
(beta-VAE, Higgins et al. 2017). "Noise editing": walk the latent between two images, or add an attribute
direction (mean latent of images with the attribute minus mean latent of those without) and decode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from genforge.checkpoint import ModuleFamily, register_family
from genforge.errors import ConfigError


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag e^logvar) || N(0, I)) per example, (B, D) -> (B,) (Kingma & Welling app. B)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1)


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Module:
    if hidden <= 0:  # linear map: the case whose ELBO is known in closed form (probabilistic PCA)
        return nn.Linear(n_in, n_out)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, n_out))


@dataclass
class VAEConfig:
    """An MLP VAE's shape and likelihood.

    likelihood 'bernoulli': decoder outputs logits, log p(x|z) = -BCE (the usual choice for [0, 1] pixels; x is
    treated as a probability, so the "log-likelihood" is only a bound for non-binary x);
    'gaussian': decoder outputs means, fixed std `sigma`.
    """

    image_shape: tuple[int, int, int] = (1, 8, 8)
    latent_dim: int = 16
    hidden: int = 256  # 0: linear encoder and decoder (probabilistic PCA, whose ELBO is known in closed form)
    likelihood: str = "bernoulli"
    sigma: float = 0.1
    beta: float = 1.0  # weight of the KL term in training (beta-VAE)

    def __post_init__(self) -> None:
        if self.likelihood not in ("bernoulli", "gaussian"):
            raise ConfigError(f"likelihood={self.likelihood!r}: use 'bernoulli' or 'gaussian'")


class VAE(nn.Module):
    """An MLP VAE over (C, H, W) images in [0, 1] (see `VAEConfig`)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.image_shape, self.latent_dim = tuple(config.image_shape), config.latent_dim
        self.likelihood, self.sigma = config.likelihood, config.sigma
        n = math.prod(self.image_shape)
        self.encoder = _mlp(n, config.hidden, 2 * config.latent_dim)
        self.decoder = _mlp(config.latent_dim, config.hidden, n)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) -> mu, logvar, each (B, latent)."""
        mu, logvar = self.encoder(x.flatten(1)).chunk(2, dim=-1)
        return mu, logvar

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
                       ) -> torch.Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I): a sample whose gradient flows to mu and sigma (their sec. 2.4)."""
        eps = torch.randn(mu.shape, generator=generator).to(mu.device)
        return mu + (0.5 * logvar).exp() * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, latent) -> decoder output (logits or means) (B, C, H, W)."""
        return self.decoder(z).view(-1, *self.image_shape)

    def images(self, z: torch.Tensor) -> torch.Tensor:
        """Decode to pixels in [0, 1] (the mean of p(x|z))."""
        out = self.decode(z)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out.clamp(0, 1)

    def log_likelihood(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """log p(x|z) per example (B,)."""
        if self.likelihood == "bernoulli":
            return -nn.functional.binary_cross_entropy_with_logits(out, x, reduction="none").flatten(1).sum(-1)
        var = self.sigma**2
        return (-0.5 * ((x - out) ** 2 / var + math.log(2 * math.pi * var))).flatten(1).sum(-1)

    def loss(self, x: torch.Tensor, beta: float = 1.0, generator: torch.Generator | None = None
             ) -> dict[str, torch.Tensor]:
        """Negative beta-ELBO averaged over the batch, with its parts: {'loss', 'recon', 'kl'} (nats per image)."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, generator)
        recon = -self.log_likelihood(x, self.decode(z)).mean()
        kl = kl_to_standard_normal(mu, logvar).mean()
        return {"loss": recon + beta * kl, "recon": recon, "kl": kl}

    def train_loss(self, batch: dict) -> tuple[torch.Tensor, int, dict]:
        """The trainer's loss: the negative beta-ELBO summed over the batch, with its parts as metrics."""
        parts = self.loss(batch["x"], self.config.beta)  # global RNG: the trainer checkpoints it
        n = batch["x"].shape[0]
        return parts["loss"] * n, n, {"recon": parts["recon"].item(), "kl": parts["kl"].item()}

    @torch.no_grad()
    def elbo(self, x: torch.Tensor, n_samples: int = 64, generator: torch.Generator | None = None) -> torch.Tensor:
        """Monte-Carlo ELBO per example (B,) with n_samples draws of z (beta = 1)."""
        mu, logvar = self.encode(x)
        ll = torch.stack([self.log_likelihood(x, self.decode(self.reparameterize(mu, logvar, generator)))
                          for _ in range(n_samples)]).mean(0)
        return ll - kl_to_standard_normal(mu, logvar)

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, **_: object) -> torch.Tensor:
        """n images from the prior: z ~ N(0, I) -> decoder mean."""
        z = torch.randn(n, self.latent_dim, generator=torch.Generator().manual_seed(seed))
        return self.images(z.to(next(self.parameters()).device))

    @torch.no_grad()
    def interpolate(self, a: torch.Tensor, b: torch.Tensor, steps: int = 8) -> torch.Tensor:
        """Decode the straight line between the posterior means of images a and b (C, H, W): (steps, C, H, W)."""
        mu_a, _ = self.encode(a[None])
        mu_b, _ = self.encode(b[None])
        w = torch.linspace(0, 1, steps, device=mu_a.device)[:, None]
        return self.images((1 - w) * mu_a + w * mu_b)

    @torch.no_grad()
    def attribute_direction(self, images: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
        """Mean latent of images with an attribute minus the mean of those without: (latent,) ("the red direction")."""
        mu, _ = self.encode(images)
        if has.all() or not has.any():
            raise ConfigError("attribute_direction needs images both with and without the attribute")
        return mu[has].mean(0) - mu[~has].mean(0)

    @torch.no_grad()
    def edit(self, images: torch.Tensor, direction: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        """Encode, add strength * direction, decode: the seed's noise editing."""
        mu, _ = self.encode(images)
        return self.images(mu + strength * direction)


register_family(ModuleFamily("image_vae", VAE, VAEConfig))
