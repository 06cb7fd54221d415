"""The foundation's speedrun stages: world -> clean -> tokenizer (+ shards) -> pretrain.

Each is `stage(ctx, report) -> outputs`; see genforge/speedrun.py. Later stages live with their
own code (genforge/train/sft.py, ...) and read these outputs through `ctx.need(name)`.
"""

from __future__ import annotations

import math
from pathlib import Path

from genforge.config import update
from genforge.report import StageReport, line_plot


def world_stage(ctx, report: StageReport) -> dict:
    """Generate the tiny world (corpus with planted junk, tasks, preferences, knowledge base)."""
    from genforge.world import generate_world

    out = ctx.path("world")
    summary = generate_world(out, seed=ctx.seed, size=ctx.size)
    c, t = summary["corpus"], summary["tasks"]
    planted = {k: v for k, v in c["labels"].items() if k != "clean"}
    report.row("entities", f"{summary['people']} people, {summary['towns']} towns, {summary['objects']} objects",
               note="the fictional world the corpus describes")
    report.row("corpus documents", c["docs"], note=f"{c['bytes'] / 1e6:.2f} MB; planted for cleaning: " +
               ", ".join(f"{v} {k}" for k, v in planted.items()))
    report.row("instruction rows (train/val/test/held-out)", "/".join(str(t["rows"][s]) for s in
               ("train", "val", "test", "heldout")), note="held-out family never appears in train")
    report.row("ranked preference lists", summary["preferences"]["rows"],
               note=f"{summary['preferences']['pairs']} (chosen, rejected) pairs")
    report.row("knowledge-base facts (not in the corpus)", summary["knowledge"]["rows"])
    report.row("generation time", summary.get("seconds", 0.0), note="seconds; same seed gives the same bytes")
    return {"dir": str(out), **{k: v for k, v in summary.items() if isinstance(v, (int, float, str))}}


def clean_stage(ctx, report: StageReport) -> dict:
    """Clean and deduplicate the world's corpus and score the filters against the planted labels."""
    from genforge.data.pipeline import CleanConfig, clean_corpus, score_against_labels

    world = Path(ctx.need("world")["dir"])
    out = ctx.path("data", "clean.jsonl")
    rep = clean_corpus(world / "corpus.jsonl", out, CleanConfig())
    report.row("documents in / kept", f"{rep.docs_in:,} / {rep.docs_kept:,}",
               note=f"{rep.bytes_kept / 1e6:.2f} of {rep.bytes_in / 1e6:.2f} MB kept")
    for reason, n in rep.removed.items():
        report.row(f"removed: {reason}", n, note="documents removed for this reason")
    scores = score_against_labels(rep, world / "corpus_labels.jsonl")
    for label, v in scores.get("recall", {}).items():
        report.row(f"recall on planted {label}", v, note="share of planted documents removed (target >= 0.9)")
    if "clean_keep_rate" in scores:
        report.row("clean documents kept", scores["clean_keep_rate"], note="share of clean documents kept (>= 0.95)")
    report.row("cleaning speed", rep.docs_in / max(rep.seconds, 1e-9), note="documents/s")
    return {"clean": str(out), "docs_kept": rep.docs_kept}


def tokenizer_stage(ctx, report: StageReport) -> dict:
    """Train byte-level BPE on the cleaned corpus and pack it into train/val token shards."""
    import time

    from genforge.data.readers import iter_documents
    from genforge.data.shards import pack_shards
    from genforge.tokenizer import TokenizerConfig, train_tokenizer

    clean = ctx.need("clean")["clean"]
    cfg = TokenizerConfig(vocab_size=ctx.knob("tokenizer.vocab_size", ctx.pick(512, 1024, 2048)))
    t0 = time.perf_counter()
    tok = train_tokenizer((d.text for d in iter_documents(clean)), cfg)
    t_train = time.perf_counter() - t0
    shards = ctx.path("shards")
    manifest = pack_shards((d.text for d in iter_documents(clean)), tok, shards)
    tr = manifest["splits"]["train"]
    report.row("vocab size", tok.vocab_size, note="byte-level BPE, digits split, 7 special tokens")
    val = manifest["splits"]["val"]
    report.row("train tokens", tr["n_tokens"], note=f"{tr['n_docs']:,} documents; val {val['n_tokens']:,}")
    report.row("bytes per token", tr["n_bytes"] / max(tr["n_tokens"], 1), baseline=1.0,
               note="compression vs raw bytes (baseline: a byte-level model)")
    report.row("tokenizer training time", t_train, note="seconds")
    sample = "Mara Quill lives in Ashford. 12 plus 30 is 42. Café ☕ 中文"
    ok = tok.decode(tok.encode(sample)) == sample
    report.row("exact round-trip (accents, emoji, Chinese)", ok)
    return {"shards": str(shards), "tokenizer": str(shards), "vocab_size": tok.vocab_size,
            "train_tokens": tr["n_tokens"]}


def pretrain_config(ctx):
    """The speedrun's pretraining recipe by size (a 0.8 M-parameter model at 'tiny', DESIGN.md)."""
    from genforge.train.pretrain import PretrainConfig

    cfg = PretrainConfig(shards=ctx.need("tokenizer")["shards"], out_dir=str(ctx.path("pretrain")))
    cfg.seq_len = ctx.pick(128, 256, 256)
    cfg.model.depth = ctx.pick(2, 4, 6)
    cfg.model.max_seq_len = ctx.pick(256, 512, 512)
    cfg.train.max_steps = ctx.pick(60, 900, 3000)
    cfg.train.micro_batch = ctx.pick(4, 16, 32)
    cfg.train.warmup_steps = ctx.pick(5, 50, 100)
    cfg.train.eval_every = ctx.pick(30, 150, 300)
    cfg.train.ckpt_every = ctx.pick(30, 150, 300)
    cfg.train.seed = ctx.seed
    cfg.train.progress = ctx.cfg.progress
    cfg.eval_batches = ctx.pick(4, 16, 32)
    return update(cfg, {k[len("pretrain."):]: v for k, v in ctx.cfg.overrides.items() if k.startswith("pretrain.")})


def pretrain_stage(ctx, report: StageReport) -> dict:
    """Pretrain the tiny model; report val loss/perplexity/bits-per-byte, tokens/s, a loss curve and samples."""
    from genforge.train.pretrain import main
    from genforge.train.trainer import read_metrics

    cfg = pretrain_config(ctx)
    res = main(cfg)
    out = Path(cfg.out_dir)
    train_rows, val_rows = read_metrics(out, "train"), read_metrics(out, "val")
    report.row("parameters", res["params"], note=f"depth {cfg.model.depth}, width {cfg.model.width}")
    vocab = ctx.need("tokenizer")["vocab_size"]
    report.row("val loss", res["val_loss"], baseline=math.log(vocab), note="nats/token (baseline: uniform guess)")
    report.row("val perplexity", res["val_ppl"], baseline=vocab,
               note="exp(loss) (baseline: vocab size = uniform)")
    report.row("val bits per byte", res["val_bpb"], baseline=8.0, note="tokenizer-independent (baseline: raw bytes)")
    report.row("training throughput", res["tokens_per_s"], note="tokens/s on this machine")
    report.row("steps x tokens/step", f"{cfg.train.max_steps} x {cfg.train.micro_batch * cfg.seq_len}",
               note=f"{res['elapsed_s']:.0f} s of training")
    if train_rows:
        series = {"train": ([r["step"] for r in train_rows], [r["loss"] for r in train_rows])}
        if val_rows:
            series["val"] = ([r["step"] for r in val_rows], [r["val_loss"] for r in val_rows])
        line_plot(ctx.path("plots", "pretrain_loss.png"), series, "Pretraining loss", "step", "loss (nats/token)")
        report.plot("plots/pretrain_loss.png", "Pretraining loss (train and val)")
    samples = _samples(out / "checkpoint", ["Mara", "The town of", "7 plus 5 is"], ctx.seed)
    if samples:
        report.note("Samples (greedy, 40 tokens):\n\n" + "\n".join(f"- **{p}**{s}" for p, s in samples))
    return {"checkpoint": str(out / "checkpoint"), "val_loss": res["val_loss"], "val_ppl": res["val_ppl"],
            "tokens_per_s": res["tokens_per_s"]}


def _samples(ckpt: Path, prompts: list[str], seed: int) -> list[tuple[str, str]]:
    from genforge.checkpoint import load_checkpoint

    model, tok, _ = load_checkpoint(ckpt)
    try:
        from genforge.infer.sampling import SamplingParams
        from genforge.text import generate_text
    except ImportError:
        return []
    outs = generate_text(model, tok, prompts, SamplingParams(max_new_tokens=40, seed=seed))
    return [(p, o.replace("\n", " ")) for p, o in zip(prompts, outs)]
