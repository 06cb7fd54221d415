"""Supervised fine-tuning (`genforge sft`): instruction tuning, fully or parameter-efficiently.

The data is conversations (see `genforge/data/sft_data.py`: chat template, assistant-only loss,
right padding); the loss is `sft_loss` (the shared `lm_loss` with the output head run on assistant tokens only);
the loop is the shared `Trainer`. `peft.method`
picks what trains: `full` (every weight), `lora`, `prompt` (prompt tuning), `adapter` (Houlsby
bottleneck adapters) or `selective` (chosen layers/norms). Full and selective runs save an HF
checkpoint; the others save an adapter folder (LoRA in peft's own format) next to the base.

The speedrun's measurement of all of this on the tiny world is genforge/speedrun/sft.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from genforge.config import save_resolved
from genforge.data.sft_data import Conversation, SFTData, encode_conversations, read_conversations
from genforge.errors import ConfigError
from genforge.io import write_json
from genforge.model.gpt import GPT, GPTConfig
from genforge.tokenizer import Tokenizer
from genforge.train.losses import IGNORE, lm_loss
from genforge.train.trainer import TrainConfig, Trainer

METHODS = ("full", "lora", "prompt", "adapter", "selective")
# Peak learning rate relative to the model's pretraining default (GPTConfig.default_lr, 3e-3 at width 128),
# measured on the tiny world (80-step sweeps): full fine-tuning moves every weight and wants a bit less
# than pretraining; the PEFT methods train few, freshly initialised parameters and want much more
# (Hu et al. 2021 used ~10x full-FT rates for LoRA; Lester et al. 2021 used 0.3 for prompt tuning).
LR_SCALE = {"full": 0.7, "lora": 3.3, "prompt": 100.0, "adapter": 10.0, "selective": 1.0}


@dataclass
class SFTDataConfig:
    """Where the conversations come from."""

    train: str = "runs/tiny/world/tasks/train.jsonl"  # JSONL file(s), comma-separated: prompt/response or messages
    val: str = ""  # optional JSONL for validation loss on assistant tokens
    tasks: list[str] = field(default_factory=list)  # keep only rows with these "task" values (empty = all)
    limit: int = 0  # at most this many rows per file (0 = all)
    seq_len: int = 0  # longer conversations are cut (counted in the metrics); 0 = the model's context
    group_by_length: bool = True  # batch conversations of similar length (less padding, same examples)
    system: str = ""  # system message added to conversations that have none
    tokenizer: str = ""  # tokenizer folder, needed only when init_from is empty (training from scratch)


@dataclass
class PEFTConfig:
    """What trains: everything, or a parameter-efficient method."""

    method: str = "full"  # full | lora | prompt | adapter | selective
    r: int = 8  # LoRA rank
    alpha: float = 16.0  # LoRA alpha (update scaled by alpha / r)
    dropout: float = 0.0  # LoRA dropout on the adapter input
    # every linear layer of the blocks: Dettmers et al. 2023 (QLoRA) found attention-only LoRA falls short of
    # full fine-tuning; on the tiny world it halves the loss gap at the same steps
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                               "up_proj", "down_proj"])
    # LoRA: token ids whose embedding rows also train (peft's trainable_token_indices; tied head rows follow)
    trainable_token_indices: list[int] = field(default_factory=list)
    num_virtual_tokens: int = 16  # prompt tuning
    adapter_size: int = 16  # bottleneck adapter width
    adapter_where: list[str] = field(default_factory=lambda: ["attn", "mlp"])
    selective: list[str] = field(default_factory=lambda: ["norms", "layers.-1"])  # see model.peft.select_trainable


def _sft_train_defaults() -> TrainConfig:
    return TrainConfig(max_steps=300, micro_batch=16, warmup_steps=20, eval_every=0, ckpt_every=0, log_every=10)


@dataclass
class SFTConfig:
    """`genforge sft`: instruction-tune a checkpoint on conversations."""

    init_from: str = "runs/tiny/pretrain/checkpoint"  # checkpoint folder to start from ("" = random init)
    out_dir: str = "runs/tiny/sft"  # the result lands in out_dir/checkpoint
    model: GPTConfig = field(default_factory=GPTConfig)  # used only when init_from is empty
    train: TrainConfig = field(default_factory=_sft_train_defaults)
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    peft: PEFTConfig = field(default_factory=PEFTConfig)


def prepare_model(model: GPT, cfg: PEFTConfig, seed: int = 0) -> nn.Module:
    """Set up `model` for `cfg.method`: returns the module to train (the model, or a prompt-tuning wrapper)."""
    from genforge.model import peft

    torch.manual_seed(seed)  # adapter init is part of the run's seed
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if cfg.method == "lora":
        return peft.apply_lora(model, cfg.r, cfg.alpha, cfg.dropout, cfg.target_modules,
                               trainable_token_indices=cfg.trainable_token_indices)
    if cfg.method == "prompt":
        return peft.PromptTuning(model, cfg.num_virtual_tokens, seed=seed)
    if cfg.method == "adapter":
        return peft.apply_adapters(model, cfg.adapter_size, cfg.adapter_where)
    if cfg.method == "selective":
        peft.select_trainable(model, cfg.selective)
        return model
    raise ConfigError(f"peft.method={cfg.method!r}: choose one of {', '.join(METHODS)}")


def sft_loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """`lm_loss` (summed next-token cross-entropy over labelled positions) with the output head and the softmax
    run on the labelled positions only: the same loss and gradients, less work.

    Measured on the tiny world: a quarter of SFT positions carry a label (prompts and padding carry none), and the
    head over the other three quarters was ~12 % of a training step's CPU time. Models without a `head` (or
    wrapped for DDP) take `lm_loss` itself.
    """
    head = getattr(model, "head", None) or getattr(getattr(model, "base_model", None), "head", None)
    if head is None or isinstance(model, nn.parallel.DistributedDataParallel):
        return lm_loss(model, batch)
    hidden = model(batch["input_ids"], attention_mask=batch.get("attention_mask"), return_hidden=True)  # (B, T, C)
    labels = batch["labels"]
    keep = labels != IGNORE  # (B, T)
    logits = head(hidden[keep])  # (N, V) for the N labelled positions
    loss = nn.functional.cross_entropy(logits.float(), labels[keep], reduction="sum")
    return loss, keep.sum(), {}


def make_val_fn(data: SFTData):
    """Validation loss over every val conversation's assistant tokens."""
    batches = data.eval_batches()

    def eval_fn(model: nn.Module) -> dict:
        dev = next(model.parameters()).device
        total, n = 0.0, 0
        for b in batches:
            loss, count, _ = sft_loss(model, {k: v.to(dev) for k, v in b.items()})
            total, n = total + float(loss), n + int(count)
        loss = total / max(n, 1)
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50))}

    return eval_fn


def run_sft(model: GPT, tokenizer: Tokenizer, train: list[Conversation], cfg: SFTConfig, *,
            val: list[Conversation] | None = None, base_path: str = "", name: str = "",
            encoded: dict | None = None) -> tuple[nn.Module, dict]:
    """Fine-tune `model` (in place) per cfg, save into cfg.out_dir/checkpoint; return (trained module, metrics).

    The returned module is what to evaluate: the model itself, or the prompt-tuning wrapper around it.
    encoded: a dict the caller keeps across runs on the same `train` list and tokenizer (the speedrun trains
    several variants on one): the encoded conversations are kept in it per (seq_len, system) and reused.
    """
    from genforge.checkpoint import write_checkpoint_files
    from genforge.model.peft import save_adapter, trainable_summary
    from genforge.train.memory import training_memory

    method = cfg.peft.method
    if method not in METHODS:
        raise ConfigError(f"peft.method={method!r}: choose one of {', '.join(METHODS)}")
    room = model.config.max_seq_len - (cfg.peft.num_virtual_tokens if method == "prompt" else 0)
    cfg.data.seq_len = cfg.data.seq_len or room
    if cfg.data.seq_len > room:
        raise ConfigError(f"data.seq_len={cfg.data.seq_len} does not fit model.max_seq_len={model.config.max_seq_len}"
                          + (" minus the virtual tokens" if method == "prompt" else "") + "; lower data.seq_len")
    if cfg.data.system:
        train = [c if c[0]["role"] == "system" else [{"role": "system", "content": cfg.data.system}] + c for c in train]
    module = prepare_model(model, cfg.peft, cfg.train.seed)
    key = (cfg.data.seq_len, cfg.data.system)
    if encoded is not None and key in encoded:
        enc = encoded[key]
    else:
        enc = encode_conversations(tokenizer, train, cfg.data.seq_len)
        if encoded is not None:
            encoded[key] = enc
    data = SFTData(enc.examples, cfg.train.micro_batch, tokenizer.pad_id, cfg.train.seed, cfg.train.grad_accum,
                   cfg.data.group_by_length)
    eval_fn = None
    if val:
        venc = encode_conversations(tokenizer, val, cfg.data.seq_len)
        eval_fn = make_val_fn(SFTData(venc.examples, cfg.train.micro_batch, tokenizer.pad_id))
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_config = save_resolved(cfg, out)
    summary = trainable_summary(module)
    if summary["trainable"] == 0:
        raise ConfigError(f"peft.method={method}: nothing is left trainable")

    def save_fn(folder: Path) -> None:
        meta = {"stage": "sft", "method": method, "step": trainer.step, "metrics": trainer.last_eval,
                "base": base_path}
        if method in ("full", "selective"):
            write_checkpoint_files(folder, trainer.model, tokenizer, run_config, meta)
        else:
            save_adapter(trainer.model, folder, base_path)
            tokenizer.save(folder, model_max_length=model.config.max_seq_len)
            write_json(folder / "genforge.json", {"run": run_config, **meta})

    default_lr = model.config.default_lr() * LR_SCALE.get(method, 1.0)
    trainer = Trainer(module, cfg.train, sft_loss, data, out, eval_fn=eval_fn, save_fn=save_fn, default_lr=default_lr,
                      name=name or f"sft-{method}")
    memory = training_memory(trainer.model, sft_loss, _batch_to(data.get_batch(0, 0, 0, 1), trainer.device))
    result = trainer.fit()
    result.update(method=method, trainable=summary["trainable"], total_params=summary["total"],
                  trainable_percent=summary["percent"], train_memory_mib=memory["total_mib"], memory=memory,
                  examples=len(enc.examples), truncated=enc.truncated, dropped=enc.dropped, lr=trainer.peak_lr,
                  checkpoint=str(out / "checkpoint"))
    write_json(out / "result.json", result)
    return trainer.model, result


def _batch_to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def main(cfg: SFTConfig) -> dict:
    """Run `genforge sft`; returns the final metrics (also in out_dir/result.json)."""
    from genforge.checkpoint import load_checkpoint

    tok = Tokenizer.load(cfg.data.tokenizer) if cfg.data.tokenizer else None
    if cfg.init_from:
        model, ckpt_tok, _ = load_checkpoint(cfg.init_from)
        tok = tok or ckpt_tok
        if tok is None:
            raise ConfigError(f"{cfg.init_from} has no tokenizer.json; set data.tokenizer to a tokenizer folder")
    else:
        if tok is None:
            raise ConfigError("training from random init (init_from empty) needs data.tokenizer = a tokenizer folder")
        cfg.model.vocab_size = tok.vocab_size
        torch.manual_seed(cfg.train.seed)
        model = GPT(cfg.model)
    cfg.model = model.config
    train = read_conversations(cfg.data.train, cfg.data.tasks, cfg.data.limit)
    val = read_conversations(cfg.data.val, cfg.data.tasks) if cfg.data.val else None
    base = str(Path(cfg.init_from).resolve()) if cfg.init_from else ""
    _, result = run_sft(model, tok, train, cfg, val=val, base_path=base)
    return result
