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
    samples: int = 60  # greedy samples from held-out document openings (the repetition lesson)
    sample_tokens: int = 64  # new tokens per greedy sample
    prompt_tokens: int = 8  # tokens of a held-out document's opening used as the prompt
    copy_mix: float = 0.0  # share of sequences with pasted repeated spans (genforge/data/copymix.py; off: measured
    # at tiny, it does not make the model copy inside corpus text)
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
                        eval_batches=cfg.eval_batches, model=copy.deepcopy(cfg.model), train=copy.deepcopy(cfg.train),
                        copy_mix=cfg.copy_mix)
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
    from genforge.checkpoint import load_checkpoint

    model, tok, _ = load_checkpoint(out / "checkpoint")
    bpb_lesson(report, model, tok, tokenizer.shards, pc)
    copying_lesson(report, model, tok, ctx.seed)
    samples = held_out_samples(model, tok, tokenizer.shards, cfg, ctx.seed)
    repetition_lessons(report, samples, cfg)
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


def _per_sequence_bits(model, batches: list[dict], byte_lens, unigram_nats) -> tuple[list, list]:
    """Per val sequence: (model bits/byte, unigram bits/byte), the same bytes under both."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    model.eval()
    mdl, uni = [], []
    with torch.no_grad():
        for b in batches:
            y = b["labels"]  # (B, T)
            logits = model(b["input_ids"])  # (B, T, V)
            nats = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none").view(y.shape)
            nbytes = np.maximum(byte_lens[y.numpy()].sum(axis=1), 1)  # (B,)
            mdl += (nats.sum(dim=1).numpy() / math.log(2) / nbytes).tolist()
            uni += (unigram_nats[y.numpy()].sum(axis=1) / math.log(2) / nbytes).tolist()
    return mdl, uni


def bpb_lesson(report: StageReport, model, tok, shards: str, pc) -> None:
    """Lesson: val bits per byte falls far below the unigram baseline (token frequencies of the training split,
    add-one smoothed: what a model that ignores context can do), paired over the same val sequences."""
    import numpy as np

    from genforge.data.shards import TokenShards
    from genforge.eval.stats import bootstrap_diff, bootstrap_mean
    from genforge.train.pretrain import token_byte_lengths

    train = TokenShards(shards, "train", pc.seq_len, pc.train.micro_batch, pc.train.seed)
    counts = sum(np.bincount(np.asarray(a), minlength=tok.vocab_size)[:tok.vocab_size] for a in train.arrays) + 1
    unigram_nats = -np.log(counts / counts.sum())
    val = TokenShards(shards, "val", pc.seq_len, pc.train.micro_batch, pc.train.seed)
    mdl, uni = _per_sequence_bits(model, val.eval_batches(pc.eval_batches), token_byte_lengths(tok), unigram_nats)
    report.lesson("pretraining: val bits per byte fall far below the unigram baseline (>= 1 bit/byte lower)",
                  ("val bits/byte, model", bootstrap_mean(mdl)), ("unigram baseline", bootstrap_mean(uni)),
                  effect=bootstrap_diff(uni, mdl, paired=True), target=1.0, effect_name="bits/byte saved",
                  note=f"{len(mdl)} held-out sequences of {pc.seq_len} tokens; uniform over bytes would be 8 bits/byte")


COPY_GAIN_MIN = 1.0  # nats/token: the second copy of a random sequence predicted this much better than the first


def copying_lesson(report: StageReport, model, tok, seed: int) -> None:
    """Lesson: pretraining taught the model to copy from its context (induction heads, Olsson et al. 2022): on
    random word sequences shown twice, the second copy's loss falls far below the first's (paired per sequence).
    Needle retrieval, few-shot prompting, multiple choice and worked sums all rest on this."""
    from genforge.eval.induction import ordinary_ids, repeated_sequence_losses
    from genforge.eval.stats import bootstrap_diff, bootstrap_mean

    first, second = repeated_sequence_losses(model, ordinary_ids(tok), tok.bos_id, n=64, length=24, seed=seed)
    report.lesson(f"pretraining teaches copying from the context: a repeated random sequence's second copy costs "
                  f">= {COPY_GAIN_MIN:g} nat/token less than its first (induction)",
                  ("loss, second copy", bootstrap_mean(second)), ("loss, first copy", bootstrap_mean(first)),
                  effect=bootstrap_diff(first, second, paired=True), target=COPY_GAIN_MIN, effect_name="nats saved",
                  note="64 sequences of 24 random word tokens, each shown twice; a model that ignores its context "
                       "saves nothing (Olsson et al. 2022)")


def held_out_samples(model, tok, shards: str, cfg: Config, seed: int) -> list[tuple[str, str]]:
    """Greedy continuations of the openings of held-out (val split) documents: (prompt, continuation)."""
    import numpy as np

    from genforge.data.shards import TokenShards
    from genforge.infer.sampling import SamplingParams
    from genforge.text import generate_text

    val = TokenShards(shards, "val", cfg.seq_len, 1, seed)
    prompts: list[str] = []
    for arr in val.arrays:
        starts = np.flatnonzero(np.asarray(arr) == tok.bos_id)
        for s in starts:
            ids = [int(t) for t in arr[s + 1:s + 1 + cfg.prompt_tokens]]
            if len(ids) == cfg.prompt_tokens and tok.eos_id not in ids:
                prompts.append(tok.decode(ids))
            if len(prompts) >= cfg.samples:
                break
    outs: list[str] = []
    for i in range(0, len(prompts), 32):
        outs += generate_text(model, tok, prompts[i:i + 32], SamplingParams(max_new_tokens=cfg.sample_tokens,
                                                                            seed=seed))
    return [(p, o.replace("\n", " ")) for p, o in zip(prompts, outs)]


# Repetition targets of issue 22 (greedy samples are not loops)
LOOP_RATE_MAX = 0.2
DISTINCT4_MIN = 0.8


def repetition_lessons(report: StageReport, samples: list[tuple[str, str]], cfg: Config) -> None:
    """Lessons: few greedy samples end in a loop (`eval.metrics.find_loop`), and within a sample few word
    4-grams repeat (distinct-4, Li et al. 2016, per sample)."""
    from genforge.eval.metrics import distinct_n, find_loop, repeated_ngram_share
    from genforge.eval.stats import bootstrap_mean, bootstrap_proportion

    if not samples:
        return
    texts = [p + o for p, o in samples]
    loops = [float(find_loop(t) is not None) for t in texts]
    d4 = [1.0 - repeated_ngram_share(t, 4) for t in texts]
    report.lesson(f"pretraining: greedy samples are not loops (loop rate <= {LOOP_RATE_MAX})",
                  ("loop rate", bootstrap_proportion(loops)), None, effect=bootstrap_proportion(loops),
                  target=LOOP_RATE_MAX, direction="below", effect_name="loop rate",
                  note=f"{len(texts)} greedy samples of {cfg.sample_tokens} tokens from held-out document openings; "
                       "a loop = a tail of >= 2 copies of one unit, >= 8 words")
    report.lesson(f"pretraining: greedy samples repeat few 4-grams (distinct-4 >= {DISTINCT4_MIN})",
                  ("distinct-4 per sample", bootstrap_mean(d4)), None, effect=bootstrap_mean(d4),
                  target=DISTINCT4_MIN, effect_name="distinct-4",
                  note="unique word 4-grams / all 4-grams within each sample, averaged")
    report.row("distinct-4 pooled over samples", distinct_n(texts, 4),
               note="falls when samples repeat each other, not only themselves")
    report.note("Samples (greedy, held-out document openings in bold):\n\n"
                + "\n".join(f"- **{p}**{o}" for p, o in samples[:6]))
