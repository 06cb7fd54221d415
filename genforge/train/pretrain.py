"""Pretraining: next-token prediction over packed token shards (`genforge pretrain`).

Reports val loss, perplexity = exp(loss) and bits-per-byte = total nats / ln 2 / UTF-8 bytes,
which, unlike perplexity, compares models with different tokenizers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genforge.checkpoint import write_checkpoint_files
from genforge.config import save_resolved
from genforge.data.copymix import CopyMix
from genforge.data.shards import TokenShards
from genforge.errors import ConfigError
from genforge.model.gpt import GPT, GPTConfig
from genforge.tokenizer import Tokenizer, ordinary_ids
from genforge.train.losses import lm_loss
from genforge.train.trainer import TrainConfig, Trainer


@dataclass
class PretrainConfig:
    """`genforge pretrain`: train a model from scratch on a shard folder."""

    shards: str = "runs/tiny/shards"  # folder with manifest.json + *.bin + tokenizer.json (from `genforge data pack`)
    out_dir: str = "runs/tiny/pretrain"
    seq_len: int = 256
    eval_batches: int = 16  # val batches per eval
    init_from: str = ""  # optional checkpoint folder to continue from instead of random init
    # Copy curriculum (genforge/data/copymix.py): share of training sequences that carry random word spans shown
    # twice, so the model learns to copy from its context; 0 = the corpus alone.
    copy_mix: float = 0.0
    copy_spans: int = 2  # span pairs pasted per chosen sequence
    copy_max_len: int = 48  # longest span (tokens); spans are 4..copy_max_len long
    model: GPTConfig = field(default_factory=GPTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def token_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """UTF-8 bytes each token stands for (byte-level BPE: one char of the token string = one byte)."""
    out = np.zeros(tok.vocab_size, dtype=np.int64)
    for i in range(tok.vocab_size):
        if i not in tok.special_ids:
            out[i] = len(tok.hf.id_to_token(i) or "")
    return out


def make_eval_fn(val: TokenShards, n_batches: int, byte_lens: np.ndarray):
    batches = val.eval_batches(n_batches)
    bytes_per_token = torch.from_numpy(byte_lens)

    def eval_fn(model: torch.nn.Module) -> dict:
        dev = next(model.parameters()).device
        nats, n, nbytes = 0.0, 0, 0
        for b in batches:
            logits = model(b["input_ids"].to(dev))
            nats += F.cross_entropy(logits.flatten(0, 1).float(), b["labels"].to(dev).flatten(), reduction="sum").item()
            n += b["labels"].numel()
            nbytes += int(bytes_per_token[b["labels"]].sum())
        loss = nats / max(n, 1)
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50)), "val_bpb": nats / math.log(2) / max(nbytes, 1)}

    return eval_fn


def main(cfg: PretrainConfig) -> dict:
    """Run pretraining; returns the final metrics (also in out_dir/metrics.jsonl and the checkpoint)."""
    out = Path(cfg.out_dir)
    tok = Tokenizer.load(cfg.shards)
    cfg.model.vocab_size = cfg.model.vocab_size if cfg.init_from else tok.vocab_size
    if cfg.seq_len > cfg.model.max_seq_len:
        raise ConfigError(f"seq_len={cfg.seq_len} is longer than model.max_seq_len={cfg.model.max_seq_len}; "
                          "raise model.max_seq_len or lower seq_len")
    if cfg.init_from:
        from genforge.checkpoint import load_model
        model = load_model(cfg.init_from)
    else:
        torch.manual_seed(cfg.train.seed)
        model = GPT(cfg.model)
    cfg.model = model.config
    train = TokenShards(cfg.shards, "train", cfg.seq_len, cfg.train.micro_batch, cfg.train.seed)
    if cfg.copy_mix > 0:
        train = CopyMix(train, ordinary_ids(tok), cfg.copy_mix, seed=cfg.train.seed, max_len=cfg.copy_max_len,
                        spans=cfg.copy_spans)
    val = TokenShards(cfg.shards, "val", cfg.seq_len, cfg.train.micro_batch, cfg.train.seed)
    run_config = save_resolved(cfg, out)

    def save_fn(folder: Path) -> None:
        write_checkpoint_files(folder, trainer.model, tok, run_config, {"stage": "pretrain", "step": trainer.step,
                                                                        "metrics": trainer.last_eval})

    trainer = Trainer(model, cfg.train, lm_loss, train, out, eval_fn=make_eval_fn(val, cfg.eval_batches,
                                                                                  token_byte_lengths(tok)),
                      save_fn=save_fn, default_lr=model.config.default_lr(), name="pretrain")
    result = trainer.fit()
    result.update(params=model.num_params(), tokens_per_s=result["items_per_s"])
    return result
