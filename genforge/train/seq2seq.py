"""Training the encoder-decoder through the one loop: teacher-forced seq2seq (span-corruption pretraining,
translation, summarisation) and the conditional masked LM of mask-predict (Ghazvininejad et al. 2019, sec. 2-3).

Data is a list of (source ids, target ids) pairs. `mode="ar"`: the decoder reads [start, y_0 .. y_{T-1}] and
predicts [y_0 .. y_{T-1}, EOS]. `mode="cmlm"`: a uniform number k in 1..T of target positions become [MASK],
the (bidirectional) decoder predicts them, and the length head predicts T from the encoder (loss weight 0.1,
as the paper adds the length loss to the token loss).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.nn.functional as F

from genforge.errors import ConfigError, DataError
from genforge.model.encoder_decoder import Seq2Seq, shift_right
from genforge.train.mlm import IGNORE
from genforge.train.trainer import TrainConfig, Trainer

LENGTH_LOSS_WEIGHT = 0.1


def _pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    T = max(1, max(len(s) for s in seqs))
    out = torch.full((len(seqs), T), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out


class Seq2SeqData:
    """Shuffled micro-batches of (source, target) pairs; a pure function of (step, micro) for exact resume."""

    def __init__(self, pairs: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int, eos_id: int,
                 start_id: int, seed: int, mode: str = "ar", mask_id: int = -1, grad_accum: int = 1):
        if not pairs:
            raise DataError("seq2seq training: no (source, target) pairs")
        if mode not in ("ar", "cmlm"):
            raise ConfigError(f"seq2seq mode must be 'ar' or 'cmlm', got {mode!r}")
        if mode == "cmlm" and mask_id < 0:
            raise ConfigError("cmlm training needs the [MASK] id (mask_id)")
        self.pairs, self.batch_size, self.pad_id = pairs, batch_size, pad_id
        self.eos_id, self.start_id = eos_id, start_id
        self.seed, self.mode, self.mask_id, self.grad_accum = seed, mode, mask_id, grad_accum

    def get_batch(self, step: int, micro: int, rank: int = 0, world: int = 1) -> dict:
        n = len(self.pairs)
        start = ((step * self.grad_accum + micro) * world + rank) * self.batch_size
        g = torch.Generator().manual_seed(self.seed * 1009 + start // n)
        perm = torch.randperm(n, generator=g).tolist()
        rows = [self.pairs[perm[(start + i) % n]] for i in range(min(self.batch_size, n))]
        src = _pad([s for s, _ in rows], self.pad_id)
        batch = {"input_ids": src, "attention_mask": (src != self.pad_id).long()}
        for i, (s, _) in enumerate(rows):  # a source may contain the pad id legitimately: trust lengths
            batch["attention_mask"][i, :len(s)] = 1
        if self.mode == "ar":
            labels = _pad([t + [self.eos_id] for _, t in rows], IGNORE)
            batch.update(labels=labels, decoder_input_ids=shift_right(labels, self.start_id, self.pad_id))
            return batch
        tgt = _pad([t for _, t in rows], self.pad_id)
        lengths = torch.tensor([len(t) for _, t in rows])
        real = torch.arange(tgt.shape[1])[None, :] < lengths[:, None]
        gm = torch.Generator().manual_seed(self.seed * 7919 + step * 131 + micro)
        k = (torch.rand(len(rows), generator=gm) * lengths).long() + 1  # (B,) masks per row, uniform in 1..len
        rank = torch.rand(tgt.shape, generator=gm).masked_fill(~real, 2.0).argsort(-1).argsort(-1)
        masked = (rank < k[:, None]) & real
        batch.update(decoder_input_ids=tgt.masked_fill(masked, self.mask_id), decoder_mask=real.long(),
                     labels=tgt.masked_fill(~masked, IGNORE), lengths=lengths)
        return batch


def seq2seq_loss(model: Seq2Seq, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Summed token cross-entropy (and, for cmlm batches, the weighted length loss); count = predicted tokens."""
    mem = model.encode(batch["input_ids"], batch["attention_mask"])
    logits = model.decode(batch["decoder_input_ids"], mem, batch["attention_mask"],
                          decoder_mask=batch.get("decoder_mask"))  # (B, T, V)
    labels = batch["labels"]
    loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    count = (labels != IGNORE).sum()
    metrics: dict = {}
    if "lengths" in batch:
        len_logits = model.length_logits(mem, batch["attention_mask"])
        target = batch["lengths"].clamp(max=len_logits.shape[-1] - 1)
        len_loss = F.cross_entropy(len_logits.float(), target, reduction="sum")
        metrics["length_acc"] = (len_logits.argmax(-1) == target).float().mean().item()
        loss = loss + LENGTH_LOSS_WEIGHT * len_loss * count / max(1, len(target))
    return loss, count, metrics


def train_seq2seq(model: Seq2Seq, pairs: list[tuple[list[int], list[int]]], cfg: TrainConfig, out_dir: str | Path,
                  *, pad_id: int, eos_id: int, mode: str = "ar", mask_id: int = -1, name: str = "seq2seq",
                  keep_checkpoint: bool = False) -> dict:
    """Train on (source, target) pairs for cfg.max_steps; returns the trainer's summary."""
    data = Seq2SeqData(pairs, cfg.micro_batch, pad_id, eos_id, model.config.decoder_start_id, cfg.seed, mode,
                       mask_id, cfg.grad_accum)
    out = Trainer(model, cfg, seq2seq_loss, data, out_dir, name=name).fit()
    if not keep_checkpoint:
        shutil.rmtree(Path(out_dir) / "checkpoint", ignore_errors=True)
    return out
