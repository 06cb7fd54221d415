"""A small CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision",
arXiv:2103.00020) trained contrastively here on the image world's (picture, caption) pairs, and the CLIP score
(Hessel et al. 2021, "CLIPScore", arXiv:2104.08718) it gives generated images against their prompts.

Image encoder: a tiny CNN; text encoder: the bag-of-words `TextEncoder` the text-to-image models use
(`image/text.py`). Both are projected to one embedding space and L2-normalised; training minimises the
symmetric InfoNCE loss of Radford et al.'s fig. 3 pseudocode with a learned temperature (logit scale
initialised to 1/0.07 and clipped at 100, their sec. 2.5).

One departure: the world's captions repeat (120 distinct captions), so a batch holds several images of one
caption. Counting those as negatives would teach the model to tell apart pictures nobody can tell apart from the
text; instead every pair with the same caption is a positive, with the target probability spread evenly over
them (a multi-positive InfoNCE, as in supervised contrastive learning, Khosla et al. 2020). With distinct
captions this is exactly CLIP's loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from genforge.checkpoint import ModuleFamily, register_family
from genforge.image.text import TextEncoder


def info_nce(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float,
             targets: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE (Radford et al. 2021, fig. 3): the mean of image->text and text->image cross-entropy.

    image_emb, text_emb: (B, D), L2-normalised here; logit_scale: the inverse temperature (a scalar);
    targets: (B, B) row-stochastic matrix of positives (default: the identity, pair i matches caption i).
    Returns the scalar loss (mean over the batch).
    """
    img = F.normalize(image_emb, dim=-1)
    txt = F.normalize(text_emb, dim=-1)
    logits = logit_scale * img @ txt.t()  # (B, B): logits[i, j] = scale * cos(image i, caption j)
    if targets is None:
        targets = torch.eye(len(img), device=img.device)
    # cross-entropy with (soft) targets, both directions; targets is symmetric for caption-equality positives
    loss_i = -(targets * logits.log_softmax(dim=1)).sum(1).mean()
    loss_t = -(targets.t() * logits.t().log_softmax(dim=1)).sum(1).mean()
    return (loss_i + loss_t) / 2


def same_caption_targets(ids: torch.Tensor) -> torch.Tensor:
    """(B, L) caption ids -> (B, B) targets: 1/k over the k captions identical to row i (itself included)."""
    same = (ids[:, None, :] == ids[None, :, :]).all(-1).float()  # (B, B)
    return same / same.sum(1, keepdim=True)


def clip_score(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Per-pair CLIP score 100 * max(cos(image, text), 0) (Hessel et al. 2021 eq. 1 with w = 100, the scale
    torchmetrics uses; they use w = 2.5). (B, D), (B, D) -> (B,)."""
    cos = F.cosine_similarity(image_emb, text_emb, dim=-1)
    return 100 * cos.clamp(min=0)


class ImageEncoder(nn.Module):
    """A tiny CNN: two 3x3 convs (the second strided), global average pool, linear: (B, C, H, W) -> (B, dim).
    Average pooling makes it size-agnostic; coordinate channels keep "top left" vs "bottom right" visible after
    pooling (CoordConv, Liu et al. 2018)."""

    def __init__(self, in_ch: int, width: int, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_ch + 2, width, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
                                 nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.SiLU())
        self.proj = nn.Linear(4 * width, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        ys = torch.linspace(-1, 1, h, device=x.device).view(1, 1, h, 1).expand(b, 1, h, w)
        xs = torch.linspace(-1, 1, w, device=x.device).view(1, 1, 1, w).expand(b, 1, h, w)
        f = self.net(torch.cat([x * 2 - 1, ys, xs], dim=1))  # (B, 2w, H/2, W/2)
        # mean and max pool: the mean says where and how much, the max that something bright is there at all
        return self.proj(torch.cat([f.mean((2, 3)), f.amax((2, 3))], dim=1))


@dataclass
class CLIPConfig:
    """A small CLIP for the image world."""

    image_shape: tuple[int, int, int] = (3, 16, 16)  # (C, H, W) it is trained on (other sizes work: global pool)
    vocab_size: int = 0  # the caption tokenizer's length
    dim: int = 64  # shared embedding width
    width: int = 32  # conv channels
    init_temperature: float = 0.07  # Radford et al. sec. 2.5
    max_logit_scale: float = 100.0


class CLIP(nn.Module):
    """Image encoder + text encoder + learned temperature; `loss` is the trainer's loss on {'x', 'ids'}."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoder(config.image_shape[0], config.width, config.dim)
        self.text_encoder = TextEncoder(config.vocab_size, config.dim)
        # log-parameterised inverse temperature, as in their pseudocode: exp() keeps it positive
        self.log_logit_scale = nn.Parameter(torch.tensor(1.0 / config.init_temperature).log())

    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale.exp().clamp(max=self.config.max_logit_scale)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> (B, dim), L2-normalised."""
        return F.normalize(self.image_encoder(x), dim=-1)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) caption ids -> (B, dim), L2-normalised."""
        return F.normalize(self.text_encoder(ids), dim=-1)

    def loss(self, batch: dict) -> tuple[torch.Tensor, int, dict]:
        """The trainer's loss: multi-positive symmetric InfoNCE, summed over the batch."""
        x, ids = batch["x"], batch["cond"]
        loss = info_nce(self.encode_image(x), self.encode_text(ids), self.logit_scale(), same_caption_targets(ids))
        return loss * len(x), len(x), {"logit_scale": float(self.logit_scale().detach())}

    @torch.no_grad()
    def score(self, images: torch.Tensor, ids: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """CLIP score of image i against caption i: (N,) in [0, 100]."""
        self.eval()
        out = [clip_score(self.encode_image(images[i: i + batch_size]), self.encode_text(ids[i: i + batch_size]))
               for i in range(0, len(images), batch_size)]
        return torch.cat(out)

    @torch.no_grad()
    def retrieve(self, images: torch.Tensor, candidate_ids: torch.Tensor) -> torch.Tensor:
        """Zero-shot caption retrieval: for each image, the index of the most similar candidate caption (N,)."""
        self.eval()
        sims = self.encode_image(images) @ self.encode_text(candidate_ids).t()  # (N, K)
        return sims.argmax(1)


register_family(ModuleFamily("image_clip", CLIP, CLIPConfig))


def train_clip(images: torch.Tensor, caption_ids: torch.Tensor, out_dir: str, *, vocab_size: int, steps: int = 150,
               batch_size: int = 128, lr: float = 2e-3, dim: int = 64, width: int = 32, seed: int = 0,
               threads: int = 0, progress: bool = False) -> tuple[CLIP, dict]:
    """Train a `CLIP` on (images (N, C, H, W) in [0, 1], caption ids (N, L)) with the shared Trainer; the model
    (eval mode) and the trainer summary. The checkpoint lands in out_dir/checkpoint."""
    from genforge.checkpoint import write_checkpoint_files
    from genforge.image.run import ImageBatches
    from genforge.train.trainer import TrainConfig, Trainer

    torch.manual_seed(seed)
    model = CLIP(CLIPConfig(image_shape=tuple(images.shape[1:]), vocab_size=vocab_size, dim=dim, width=width))
    cfg = TrainConfig(max_steps=steps, micro_batch=batch_size, lr=lr, warmup_steps=min(20, steps), weight_decay=0.0,
                      beta2=0.999, grad_clip=1.0, eval_every=0, ckpt_every=0, log_every=max(1, steps // 20),
                      seed=seed, device="cpu", threads=threads, resume=False, progress=progress)
    trainer = Trainer(model, cfg, lambda m, b: m.loss(b), ImageBatches(images, caption_ids, batch_size, seed), out_dir,
                      name="clip", save_fn=lambda folder: write_checkpoint_files(folder, model))
    summary = trainer.fit()
    return model.eval(), summary
