"""Textual inversion (Gal et al. 2022, "An Image is Worth One Word", arXiv:2208.01618): personalise a frozen
text-to-image model by learning ONE new word embedding v* from a handful of pictures of a concept.

Everything stays frozen (denoiser, text encoder, autoencoder); a new token S* is added to the vocabulary and only
its embedding row is optimised with the model's own denoising loss on the concept's pictures, captioned with
templates that contain S* ("a small S* in the top left"), their eq. 2:
    v* = argmin_v E_{z, c(S*), eps, t} || eps - eps_theta(z_t, t, c_theta(y with S* -> v)) ||^2.
Afterwards S* can be used in new contexts (other sizes and positions) like any word.

The new row lives in `ExtendedEmbedding`, which wraps the frozen `nn.Embedding` of the text encoder instead of
resizing it (composition, as PEFT wraps layers), so the frozen table is never touched.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from genforge.errors import ConfigError


class ExtendedEmbedding(nn.Module):
    """A frozen `nn.Embedding` of V rows plus trainable rows for ids V, V+1, ...: (B, L) ids -> (B, L, dim)."""

    def __init__(self, base: nn.Embedding, init: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.padding_idx = base.padding_idx
        self.new = nn.Parameter(init.detach().clone().reshape(-1, base.embedding_dim))  # (n_new, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        v = self.base.num_embeddings
        is_new = (ids >= v).unsqueeze(-1)  # (B, L, 1)
        old = self.base(ids.clamp(max=v - 1))
        new = self.new[(ids - v).clamp(min=0, max=len(self.new) - 1)]
        return torch.where(is_new, new, old)


def text_embedding(net: nn.Module) -> nn.Embedding:
    """The word-embedding table of a text-conditioned denoiser (its bag-of-words caption encoder)."""
    cond = getattr(getattr(net, "embed", None), "conditioner", None)
    if cond is None or cond.kind != "text":
        raise ConfigError("textual inversion needs a text-conditioned denoiser (cond='text')")
    emb = cond.text.embed
    return emb.base if isinstance(emb, ExtendedEmbedding) else emb


def add_token(net: nn.Module, init: torch.Tensor) -> ExtendedEmbedding:
    """Give a text-conditioned denoiser one new word (id = the old vocabulary size) initialised to `init` (dim,)."""
    base = text_embedding(net)
    ext = ExtendedEmbedding(base, init)
    net.embed.conditioner.text.embed = ext
    return ext


def nearest_word(net: nn.Module, vector: torch.Tensor, vocab: list[str], skip: int = 2) -> str:
    """The existing word whose embedding is closest in cosine to `vector` (ids < skip, pad and unk, excluded)."""
    table = text_embedding(net).weight.detach()[skip: len(vocab)]
    sims = torch.nn.functional.cosine_similarity(table, vector.detach().reshape(1, -1), dim=-1)
    return vocab[skip + int(sims.argmax())]


class _InversionObjective(nn.Module):
    """The frozen denoiser + scheduler, with the denoising loss of Gal et al. eq. 2 over the new token."""

    def __init__(self, net: nn.Module, scheduler: object) -> None:
        super().__init__()
        self.net, self.scheduler = net, scheduler

    def loss(self, batch: dict) -> tuple[torch.Tensor, int, dict]:
        x0, cond = batch["x"], batch["cond"]  # x0 in the denoiser's space (latents, or pixels in [-1, 1])
        t = torch.randint(0, self.scheduler.num_train_timesteps, (len(x0),))
        eps = torch.randn_like(x0)
        loss = nn.functional.mse_loss(self.net(self.scheduler.add_noise(x0, eps, t), t, cond), eps)
        return loss * len(x0), len(x0), {}


class _Repeat:
    """Every batch is the few concept examples, repeated `times` (fresh noise and t each step)."""

    def __init__(self, x: torch.Tensor, cond: torch.Tensor, times: int) -> None:
        self.x, self.cond, self.times = x, cond, times

    def get_batch(self, step: int, micro: int, rank: int, world: int) -> dict:
        return {"x": self.x.repeat(self.times, *([1] * (self.x.dim() - 1))), "cond": self.cond.repeat(self.times, 1)}


def invert(net: nn.Module, scheduler: object, x0: torch.Tensor, caption_ids: torch.Tensor, out_dir: str | Path, *,
           steps: int = 300, lr: float = 5e-2, repeat: int = 8, init: torch.Tensor | None = None, seed: int = 0,
           threads: int = 0, progress: bool = False) -> tuple[nn.Module, int, dict]:
    """Learn one new token for the concept shown in `x0` (K, ...) with captions `caption_ids` (K, L) that use the
    new token's id (= the denoiser's vocabulary size). `net` is not changed: a copy gets the token.

    Returns (the copy with the learned token, the token id, the trainer summary). `init` defaults to the mean
    word embedding (Gal et al. start from a coarse descriptor word; the mean gives away nothing here).
    """
    from genforge.train.trainer import Part, TrainConfig, Trainer

    net = copy.deepcopy(net)
    base = text_embedding(net)
    new_id = base.num_embeddings
    if not bool((caption_ids == new_id).any(1).all()):
        raise ConfigError(f"textual inversion: every caption must contain the new token (id {new_id})")
    if init is None:
        init = base.weight.detach()[2:].mean(0)
    net.requires_grad_(False)
    ext = add_token(net, init)  # the only trainable tensor: ext.new (1, dim)
    objective = _InversionObjective(net, scheduler)
    cfg = TrainConfig(max_steps=steps, micro_batch=len(x0) * repeat, lr=lr, warmup_steps=min(10, steps),
                      weight_decay=0.0, beta2=0.999, grad_clip=0.0, eval_every=0, ckpt_every=0,
                      log_every=max(1, steps // 20), seed=seed, device="cpu", threads=threads, resume=False,
                      progress=progress)
    trainer = Trainer(objective, cfg, [Part("token", [ext.new], lambda m, b: m.loss(b))],
                      _Repeat(x0, caption_ids, repeat), out_dir, name="textual-inversion")
    summary = trainer.fit()
    return net.eval(), new_id, summary
