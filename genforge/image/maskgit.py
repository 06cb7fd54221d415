"""MaskGIT (Chang, Zhang, Jiang, Liu & Freeman 2022, "MaskGIT: Masked Generative Image Transformer",
arXiv:2202.04200): a bidirectional transformer over the same VQ tokens as `ar.py`, trained to fill in masked
tokens, sampled by iterative parallel decoding — every token at once, refined in K steps.

Training (their sec. 3.1): draw r ~ U(0, 1), mask ceil(gamma(r) * N) of the N tokens with gamma the cosine
schedule gamma(r) = cos(pi r / 2), and minimise the cross-entropy of the masked ones (eq. 1). Decoding (sec. 3.2):
start all masked; at step t = 1..K predict every masked token in parallel, sample one per position, and keep the
most confident; re-mask the n_t = floor(gamma(t / K) * N) least confident of the new ones (eq. 2-3), so the
count of masked tokens follows the schedule to 0 at t = K. Their "choice temperature" adds Gumbel noise to the
confidences, annealed linearly to 0 (their code; the paper mentions only "temperature annealing").
The network is the project's bidirectional encoder (`genforge.model.encoder.MaskedLM`, a BERT layout); the class
is a prefix token as in `ar.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from genforge.checkpoint import ModuleFamily, register_family
from genforge.image.ar import drop_labels
from genforge.image.vq import VQVAE, TokenPriorConfig
from genforge.model.encoder import EncoderConfig, MaskedLM


def gamma(r: float | torch.Tensor) -> float | torch.Tensor:
    """The cosine mask schedule gamma(r) = cos(pi r / 2): the share of tokens masked at progress r in [0, 1]."""
    if isinstance(r, torch.Tensor):
        return torch.cos(math.pi / 2 * r)
    return math.cos(math.pi / 2 * r)


def mask_schedule(n_tokens: int, steps: int) -> list[int]:
    """Masked tokens left after each of `steps` decoding steps: floor(gamma(t/K) N) for t = 1..K, forced to drop
    by at least one per step (so K <= N steps always finish) and to reach 0 at t = K."""
    out, left = [], n_tokens
    for t in range(1, steps + 1):
        want = 0 if t == steps else math.floor(gamma(t / steps) * n_tokens)
        left = max(0, min(left - 1, want))
        out.append(left)
    return out


@dataclass
class MaskGITConfig(TokenPriorConfig):
    """A masked token predictor over a VQ-VAE's tokens (the shared fields are `TokenPriorConfig`'s)."""

    steps: int = 4  # K, decoding steps (the default of `sample`)
    choice_temperature: float = 2.0  # Gumbel noise on the confidences, annealed to 0 (MaskGIT's code uses 4.5)

    @property
    def mask_id(self) -> int:
        return self.vq.codebook_size

    @property
    def vocab_size(self) -> int:  # codes, [MASK], the classes, the null class
        return self.vq.codebook_size + 1 + self.num_classes + 1


class MaskGITModel(nn.Module):
    """`vq` (tokenizer) + `net` (MaskedLM over [class, t_1 .. t_N] with some t_i = [MASK])."""

    def __init__(self, config: MaskGITConfig) -> None:
        super().__init__()
        self.config = c = config
        self.vq = VQVAE(c.vq)
        self.net = MaskedLM(EncoderConfig(vocab_size=c.vocab_size, depth=c.depth, width=c.width, head_dim=c.head_dim,
                                          max_seq_len=c.vq.n_tokens + 1))

    def _prefix(self, labels: torch.Tensor | None, n: int) -> torch.Tensor:
        c = self.config
        if labels is None:
            labels = torch.full((n,), c.num_classes, dtype=torch.long)
        return c.vq.codebook_size + 1 + labels.long()  # (n,)

    def logits(self, ids: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Code logits (B, N, K) for token ids (B, N) that may hold [MASK]."""
        prefix = self._prefix(labels, ids.shape[0]).to(ids.device)
        out = self.net(torch.cat([prefix[:, None], ids], 1))  # (B, 1 + N, V)
        return out[:, 1:, : self.config.vq.codebook_size]

    def loss(self, batch: dict) -> tuple[torch.Tensor, int, dict]:
        """Masked-token cross-entropy (eq. 1) with a cosine-scheduled mask ratio, summed over the batch."""
        ids = batch["x"]  # (B, N)
        B, N = ids.shape
        c = self.config
        labels = drop_labels(batch.get("cond"), c.num_classes, c.p_uncond)
        r = torch.rand(B)  # global RNG: the trainer checkpoints it
        n_mask = torch.ceil(gamma(r) * N).clamp(1, N).long()  # (B,)
        rank = torch.rand(B, N).argsort(1).argsort(1)  # a random order of positions per row
        masked = (rank < n_mask[:, None]).to(ids.device)  # (B, N) True where masked
        inp = torch.where(masked, torch.full_like(ids, c.mask_id), ids)
        logits = self.logits(inp, labels)  # (B, N, K)
        ce = F.cross_entropy(logits.reshape(B * N, -1), ids.reshape(-1), reduction="none").view(B, N)
        per_image = (ce * masked).sum(1) / masked.sum(1)  # mean over the masked tokens of each image
        return per_image.sum(), B, {}

    @torch.no_grad()
    def sample_tokens(self, n: int, labels: torch.Tensor | None = None, steps: int | None = None, seed: int = 0,
                      temperature: float = 1.0, choice_temperature: float | None = None,
                      trace: list | None = None) -> torch.Tensor:
        """Token grids (n, N) by K steps of parallel decoding (sec. 3.2); `trace` collects the masked count after
        each step (for the schedule test)."""
        self.net.eval()
        c = self.config
        K = steps or c.steps
        tau = c.choice_temperature if choice_temperature is None else choice_temperature
        N = c.vq.n_tokens
        g = torch.Generator().manual_seed(seed)
        dev = next(self.parameters()).device
        ids = torch.full((n, N), c.mask_id, dtype=torch.long, device=dev)
        for t, n_next in enumerate(mask_schedule(N, K), start=1):
            unknown = ids == c.mask_id  # (n, N)
            logits = self.logits(ids, labels)  # (n, N, K)
            # 1. predict: sample a token for every position in parallel (greedy at temperature 0)
            if temperature <= 0:
                pred = logits.argmax(-1)
            else:
                probs = F.softmax(logits / temperature, -1)
                pred = torch.multinomial(probs.reshape(n * N, -1).cpu(), 1, generator=g).view(n, N).to(dev)
            conf = F.log_softmax(logits, -1).gather(-1, pred[..., None]).squeeze(-1)  # log p of the chosen token
            # 2. known tokens stay: infinite confidence; annealed Gumbel noise lets less likely tokens in early
            if tau > 0:
                u = torch.rand(n, N, generator=g).clamp(1e-9, 1 - 1e-9).to(dev)
                conf = conf + tau * (1 - t / K) * -torch.log(-torch.log(u))
            pred = torch.where(unknown, pred, ids)
            conf = torch.where(unknown, conf, torch.full_like(conf, math.inf))
            # 3. re-mask the n_next least confident positions (eq. 3): the schedule's count for step t
            if n_next > 0:
                remask = conf.argsort(1)[:, :n_next]  # (n, n_next)
                pred = pred.scatter(1, remask, c.mask_id)
            ids = pred
            if trace is not None:
                trace.append(int((ids == c.mask_id).sum(1).max()))
        return ids

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, labels: torch.Tensor | None = None, steps: int | None = None,
               temperature: float = 1.0, **_: object) -> torch.Tensor:
        """n images (n, C, H, W) in [0, 1]: classes 0..9 in turn unless `labels` says otherwise."""
        if labels is None and self.config.num_classes:
            labels = torch.arange(n) % self.config.num_classes
        return self.vq.decode_tokens(self.sample_tokens(n, labels, steps, seed, temperature))

    def trained_part(self) -> nn.Module:
        return self.net


register_family(ModuleFamily("image_maskgit", MaskGITModel, MaskGITConfig))
