"""Stage "pretrain": pretrain the tiny model; val loss / perplexity / bits per byte, throughput, loss curve, samples."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from genforge.model.gpt import GPTConfig
from genforge.report import StageReport, line_plot
from genforge.speedrun import tokenizer
from genforge.speedrun.stage import StageContext
from genforge.train.trainer import TrainConfig

NAME = "pretrain"
TITLE = "Pretraining"


def _train_defaults() -> TrainConfig:
    # train.seed and train.progress are replaced by the speedrun's seed= and progress=
    return TrainConfig(max_steps=900, micro_batch=16, warmup_steps=50, eval_every=150, ckpt_every=150)


@dataclass
class Config:
    """The pretraining recipe: a 0.87 M-parameter depth-4 model at `tiny` (DESIGN.md)."""

    seq_len: int = 256  # tokens per training sequence
    eval_batches: int = 16  # val batches per evaluation
    model: GPTConfig = field(default_factory=GPTConfig)  # depth 4, context 512 (vocab_size comes from the tokenizer)
    train: TrainConfig = field(default_factory=_train_defaults)


@dataclass
class Outputs:
    checkpoint: str  # HF-layout checkpoint folder (with the tokenizer)
    val_loss: float
    val_ppl: float
    tokens_per_s: float


def pretrain_config(ctx: StageContext, cfg: Config, shards: str):
    """The `genforge pretrain` config this stage runs."""
    import copy

    from genforge.train.pretrain import PretrainConfig

    pc = PretrainConfig(shards=shards, out_dir=str(ctx.path("pretrain")), seq_len=cfg.seq_len,
                        eval_batches=cfg.eval_batches, model=copy.deepcopy(cfg.model), train=copy.deepcopy(cfg.train))
    pc.train.seed, pc.train.progress = ctx.seed, ctx.progress
    return pc


def run(ctx: StageContext, cfg: Config, report: StageReport, *, tokenizer: tokenizer.Outputs) -> Outputs:
    """Train, then report the numbers, the loss curve and a few greedy samples."""
    from genforge.train.pretrain import main
    from genforge.train.trainer import read_metrics

    pc = pretrain_config(ctx, cfg, tokenizer.shards)
    res = main(pc)
    out = Path(pc.out_dir)
    _report_numbers(report, pc, res, tokenizer.vocab_size)
    _plot_loss(ctx, report, read_metrics(out, "train"), read_metrics(out, "val"))
    samples = _samples(out / "checkpoint", ["Mara", "The town of", "7 plus 5 is"], ctx.seed)
    if samples:
        report.note("Samples (greedy, 40 tokens):\n\n" + "\n".join(f"- **{p}**{s}" for p, s in samples))
    return Outputs(checkpoint=str(out / "checkpoint"), val_loss=res["val_loss"], val_ppl=res["val_ppl"],
                   tokens_per_s=res["tokens_per_s"])


def _report_numbers(report: StageReport, pc, res: dict, vocab: int) -> None:
    report.row("parameters", res["params"], note=f"depth {pc.model.depth}, width {pc.model.width}")
    report.row("val loss", res["val_loss"], baseline=math.log(vocab), note="nats/token (baseline: uniform guess)")
    report.row("val perplexity", res["val_ppl"], baseline=vocab, note="exp(loss) (baseline: vocab size = uniform)")
    report.row("val bits per byte", res["val_bpb"], baseline=8.0, note="tokenizer-independent (baseline: raw bytes)")
    report.row("training throughput", res["tokens_per_s"], note="tokens/s on this machine")
    report.row("steps x tokens/step", f"{pc.train.max_steps} x {pc.train.micro_batch * pc.seq_len}",
               note=f"{res['elapsed_s']:.0f} s of training")


def _plot_loss(ctx: StageContext, report: StageReport, train_rows: list[dict], val_rows: list[dict]) -> None:
    if not train_rows:
        return
    series = {"train": ([r["step"] for r in train_rows], [r["loss"] for r in train_rows])}
    if val_rows:
        series["val"] = ([r["step"] for r in val_rows], [r["val_loss"] for r in val_rows])
    line_plot(ctx.path("plots", "pretrain_loss.png"), series, "Pretraining loss", "step", "loss (nats/token)")
    report.plot("plots/pretrain_loss.png", "Pretraining loss (train and val)")


def _samples(ckpt: Path, prompts: list[str], seed: int) -> list[tuple[str, str]]:
    from genforge.checkpoint import load_checkpoint
    from genforge.infer.sampling import SamplingParams
    from genforge.text import generate_text

    model, tok, _ = load_checkpoint(ckpt)
    outs = generate_text(model, tok, prompts, SamplingParams(max_new_tokens=40, seed=seed))
    return [(p, o.replace("\n", " ")) for p, o in zip(prompts, outs)]
