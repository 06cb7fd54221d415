"""An autoregressive image model over VQ-VAE tokens (van den Oord et al. 2017 sec. 4.1 fit a PixelCNN prior; we
use the project's decoder-only transformer, `genforge.model.gpt.GPT`, as VQGAN (Esser et al. 2021) does).

An image is its VQ token grid read in raster order, t_1 .. t_N (N = 16 for 4x4 tokens); the class is a prefix
token c, so the model factorises p(t | c) = prod_i p(t_i | c, t_<i) (the chain rule; eq. 1 of "Pixel Recurrent
Neural Networks", van den Oord et al. 2016, over tokens instead of pixels). Training is next-token cross-entropy;
sampling draws one token per forward, N forwards per image: the "one at a time" strategy that `maskgit.py`
(all at once, in K steps) and diffusion (the whole image, T times) are compared against.

Vocabulary: the K codes, then one token per class, then a null class (unconditional / classifier-free dropout).
The VQ-VAE rides inside the bundle so a checkpoint decodes its own tokens; only the prior is trained here (the
run freezes nothing: the VQ-VAE's weights stay in the resume state and no optimizer holds them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from genforge.checkpoint import ModuleFamily, register_family
from genforge.image.vq import VQVAE, TokenPriorConfig
from genforge.model.gpt import GPT, GPTConfig, KVCache


@dataclass
class ARConfig(TokenPriorConfig):
    """An autoregressive token prior (the shared fields are `TokenPriorConfig`'s)."""

    @property
    def vocab_size(self) -> int:
        return self.vq.codebook_size + self.num_classes + 1

    @property
    def null_class(self) -> int:
        return self.num_classes


def class_tokens(labels: torch.Tensor | None, n: int, codebook_size: int, num_classes: int) -> torch.Tensor:
    """Prefix token ids (n,): code ids come first in the vocabulary, so class c is token K + c; None or a label
    equal to num_classes is the null class."""
    if labels is None:
        labels = torch.full((n,), num_classes, dtype=torch.long)
    return codebook_size + labels.long()


def drop_labels(labels: torch.Tensor | None, num_classes: int, p: float) -> torch.Tensor | None:
    """Replace each label by the null class with probability p (global RNG: the trainer checkpoints it)."""
    if labels is None or p <= 0:
        return labels
    drop = torch.rand(labels.shape[0]) < p
    return torch.where(drop.to(labels.device), torch.full_like(labels, num_classes), labels)


class ARImageModel(nn.Module):
    """`vq` (tokenizer) + `prior` (GPT over [class, t_1 .. t_N])."""

    def __init__(self, config: ARConfig) -> None:
        super().__init__()
        self.config = c = config
        self.vq = VQVAE(c.vq)
        self.prior = GPT(GPTConfig(vocab_size=c.vocab_size, depth=c.depth, width=c.width, head_dim=c.head_dim,
                                   max_seq_len=c.vq.n_tokens + 1))

    def loss(self, batch: dict) -> tuple[torch.Tensor, int, dict]:
        """Next-token cross-entropy over the N tokens, summed over the batch; batch {'x': tokens (B, N), 'cond'}."""
        ids = batch["x"]  # (B, N) token ids from the VQ-VAE
        B, N = ids.shape
        labels = drop_labels(batch.get("cond"), self.config.num_classes, self.config.p_uncond)
        prefix = class_tokens(labels, B, self.config.vq.codebook_size, self.config.num_classes).to(ids.device)
        inp = torch.cat([prefix[:, None], ids[:, :-1]], 1)  # (B, N): c, t_1 .. t_{N-1}
        logits = self.prior(inp)[..., : self.config.vq.codebook_size]  # (B, N, K): only codes are targets
        loss = F.cross_entropy(logits.reshape(B * N, -1), ids.reshape(-1), reduction="sum") / N
        return loss, B, {}

    @torch.no_grad()
    def sample_tokens(self, n: int, labels: torch.Tensor | None = None, seed: int = 0, temperature: float = 1.0,
                      use_cache: bool = True) -> torch.Tensor:
        """Draw token grids (n, N) one token per forward (N forwards); temperature 0 = greedy.

        With the cache each forward feeds one new token (keys/values of the prefix are kept); without it, each
        forward recomputes the whole prefix: the same distribution, ~N/2 times the work (a test checks equality)."""
        self.prior.eval()
        c = self.config
        g = torch.Generator().manual_seed(seed)
        dev = next(self.parameters()).device
        seq = class_tokens(labels, n, c.vq.codebook_size, c.num_classes).to(dev)[:, None]  # (n, 1)
        cache = KVCache(self.prior.config, n, c.vq.n_tokens + 1, device=dev) if use_cache else None
        step_in = seq
        for _ in range(c.vq.n_tokens):
            if cache is not None:
                logits = self.prior(step_in, cache=cache)[:, -1, : c.vq.codebook_size]  # (n, K)
            else:
                logits = self.prior(seq)[:, -1, : c.vq.codebook_size]
            if temperature <= 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                probs = F.softmax(logits / temperature, -1)
                nxt = torch.multinomial(probs.cpu(), 1, generator=g).to(dev)  # (n, 1)
            seq = torch.cat([seq, nxt], 1)
            step_in = nxt
        return seq[:, 1:]

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, labels: torch.Tensor | None = None, temperature: float = 1.0,
               **_: object) -> torch.Tensor:
        """n images (n, C, H, W) in [0, 1]: classes 0..9 in turn unless `labels` says otherwise."""
        if labels is None and self.config.num_classes:
            labels = torch.arange(n) % self.config.num_classes
        return self.vq.decode_tokens(self.sample_tokens(n, labels, seed, temperature))

    def trained_part(self) -> nn.Module:
        return self.prior


register_family(ModuleFamily("image_ar", ARImageModel, ARConfig))
