"""Knowledge distillation (`genforge distill`): train a small student to imitate a teacher.

Hinton et al. 2015 ("Distilling the Knowledge in a Neural Network", sec. 2): the student matches
the teacher's next-token distribution softened by a temperature T, plus the usual cross-entropy
on the true next token:

    loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)

The T^2 keeps the soft term's gradients on the same scale as T changes (its gradients shrink as
1/T^2). A distilled student is what speculative decoding wants as a draft: it shares the
teacher's tokenizer and is trained to agree with it, which is what the acceptance rate measures.
The student may start from the teacher's embeddings and a subset of its layers when widths match
(DistilBERT, Sanh et al. 2019, took every other layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from genforge.config import save_resolved
from genforge.errors import ConfigError
from genforge.model.gpt import GPT, GPTConfig
from genforge.train.losses import IGNORE
from genforge.train.trainer import DataSource, TrainConfig, Trainer


@dataclass
class DistillConfig:
    """`genforge distill`: a student trained on a teacher's soft targets over token shards."""

    teacher: str = "runs/tiny/pretrain/checkpoint"  # teacher checkpoint folder
    shards: str = "runs/tiny/shards"  # token shards to distil on (same tokenizer as the teacher)
    out_dir: str = "runs/tiny/distill"
    seq_len: int = 128
    temperature: float = 2.0  # T: softening of both distributions
    alpha: float = 0.5  # weight of the soft (teacher) term; 1 - alpha goes to the true next token
    init: str = "teacher"  # teacher (copy embeddings + evenly spaced layers when shapes allow) | random
    eval_batches: int = 8
    # student shape: depth is the dial; width/heads/vocab/max_seq_len default to the teacher's
    model: GPTConfig = field(default_factory=lambda: GPTConfig(depth=1, width=0, vocab_size=0, max_seq_len=0))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=300, micro_batch=16, warmup_steps=20,
                                                                   eval_every=0, ckpt_every=0))


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                 mask: torch.Tensor | None = None, T: float = 2.0, alpha: float = 0.5,
                 reduction: str = "mean") -> torch.Tensor:
    """Hinton et al.'s loss over logits (B, S, V) and targets (B, S); mean (or sum) over counted positions.

    A position counts where mask (B, S) is true (default: everywhere) and the target is not IGNORE.
    """
    counted = targets != IGNORE
    if mask is not None:
        counted = counted & mask.bool()
    s = student_logits.float().flatten(0, -2)  # (N, V)
    t = teacher_logits.float().flatten(0, -2).detach()
    keep = counted.flatten()  # (N,)
    kl = (F.softmax(t / T, -1) * (F.log_softmax(t / T, -1) - F.log_softmax(s / T, -1))).sum(-1)  # (N,) KL(t || s)
    ce = F.cross_entropy(s, targets.flatten().clamp(min=0), reduction="none")  # (N,)
    per_token = alpha * T * T * kl + (1 - alpha) * ce
    total = (per_token * keep).sum()
    if reduction == "sum":
        return total
    return total / keep.sum().clamp(min=1)


def make_loss_fn(teacher: torch.nn.Module, T: float = 2.0, alpha: float = 0.5):
    """A trainer loss_fn(student, batch) -> (loss_sum, n_tokens, metrics) with a frozen teacher."""
    teacher.eval().requires_grad_(False)

    def loss_fn(student: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        ids, labels, am = batch["input_ids"], batch["labels"], batch.get("attention_mask")
        with torch.no_grad():
            t_logits = teacher(ids, attention_mask=am)  # (B, S, V)
        s_logits = student(ids, attention_mask=am)
        loss = distill_loss(s_logits, t_logits, labels, am, T, alpha, reduction="sum")
        counted = (labels != IGNORE) if am is None else (labels != IGNORE) & am.bool()
        agree = ((s_logits.argmax(-1) == t_logits.argmax(-1)) & counted).sum().float() / counted.sum().clamp(min=1)
        return loss, counted.sum(), {"agreement": agree.item()}

    return loss_fn


def student_from_teacher(teacher: GPT, cfg: GPTConfig, init: str = "teacher", seed: int = 0) -> GPT:
    """A student with the teacher's vocabulary; init="teacher" copies what shapes allow.

    When width/head shapes match, the embeddings, final norm, head and `depth` evenly spaced teacher
    layers (first and last included) are copied; otherwise the student starts random.
    """
    tc = teacher.config
    c = GPTConfig(**{**cfg.__dict__})
    c.vocab_size, c.max_seq_len = tc.vocab_size, cfg.max_seq_len or tc.max_seq_len
    if not cfg.width:  # default to the teacher's shape so its weights can be copied
        c.width, c.head_dim, c.n_kv_head, c.mlp_hidden = tc.width, tc.head_dim, tc.n_kv_head, tc.mlp_hidden
    c.tie_embeddings = tc.tie_embeddings if not cfg.width else cfg.tie_embeddings
    torch.manual_seed(seed)
    student = GPT(c)
    sc = student.config
    if init not in ("teacher", "random"):
        raise ConfigError(f"distill.init must be 'teacher' or 'random', got {init!r}")
    same = (sc.width, sc.head_dim, sc.n_kv_head, sc.mlp_hidden) == (tc.width, tc.head_dim, tc.n_kv_head, tc.mlp_hidden)
    if init == "teacher" and same and sc.depth <= tc.depth:
        pick = [round(i * (tc.depth - 1) / max(sc.depth - 1, 1)) for i in range(sc.depth)]
        with torch.no_grad():
            student.embed_tokens.weight.copy_(teacher.embed_tokens.weight)
            student.norm.weight.copy_(teacher.norm.weight)
            if not sc.tie_embeddings:
                student.lm_head.weight.copy_(teacher.lm_head.weight)
            for i, j in enumerate(pick):
                student.layers[i].load_state_dict(teacher.layers[j].state_dict())
    return student


def run_distill(cfg: DistillConfig, data: DataSource | None = None, eval_data: list[dict] | None = None,
                teacher: GPT | None = None, tokenizer: Any = None) -> dict:
    """Distil cfg.teacher into a student via the shared Trainer; the checkpoint lands in out_dir/checkpoint.

    `data`/`eval_data`/`teacher`/`tokenizer` may be passed in directly (benchmarks and tests do);
    otherwise they come from cfg.teacher and cfg.shards. Returns the trainer's result plus the
    student's and teacher's parameter counts and, when there is eval data, val loss and top-1
    agreement with the teacher.
    """
    from genforge.checkpoint import load_checkpoint, write_checkpoint_files

    if teacher is None:
        teacher, tok, _ = load_checkpoint(cfg.teacher)
        tokenizer = tokenizer or tok
    if data is None:
        from genforge.data.shards import TokenShards

        data = TokenShards(cfg.shards, "train", cfg.seq_len, cfg.train.micro_batch, cfg.train.seed)
        if eval_data is None:
            try:
                eval_data = TokenShards(cfg.shards, "val", cfg.seq_len, cfg.train.micro_batch,
                                        cfg.train.seed).eval_batches(cfg.eval_batches)
            except Exception:  # no val split: train-only report
                eval_data = None
    student = student_from_teacher(teacher, cfg.model, cfg.init, cfg.train.seed)
    if cfg.seq_len > student.config.max_seq_len:
        raise ConfigError(f"distill.seq_len={cfg.seq_len} exceeds the student's max_seq_len "
                          f"({student.config.max_seq_len})")
    loss_fn = make_loss_fn(teacher, cfg.temperature, cfg.alpha)
    out = Path(cfg.out_dir)
    run_config = save_resolved(cfg, out)

    def eval_fn(model: torch.nn.Module) -> dict:
        dev = next(model.parameters()).device
        ce = agree = n = 0.0
        for b in eval_data:
            ids, labels = b["input_ids"].to(dev), b["labels"].to(dev)
            s, t = model(ids), teacher.to(dev)(ids)
            ce += F.cross_entropy(s.flatten(0, 1).float(), labels.flatten(), reduction="sum").item()
            agree += (s.argmax(-1) == t.argmax(-1)).sum().item()
            n += labels.numel()
        return {"val_loss": ce / max(n, 1), "val_ppl": math.exp(min(ce / max(n, 1), 50)),
                "agreement": agree / max(n, 1)}

    def save_fn(folder: Path) -> None:
        write_checkpoint_files(folder, trainer.model, tokenizer, run_config,
                               {"stage": "distill", "step": trainer.step, "metrics": trainer.last_eval})

    trainer = Trainer(student, cfg.train, loss_fn, data, out, eval_fn=eval_fn if eval_data else None,
                      save_fn=save_fn, default_lr=student.config.default_lr(), name="distill")
    result = trainer.fit()
    result.update(student_params=student.num_params(), teacher_params=teacher.num_params())
    return result
