"""Stage "objectives": encoder-only, encoder-decoder and non-autoregressive text beside the decoder; what came before.

1. Transfer on real pretrained weights: the packaged all-MiniLM-L6-v2 (a BERT-family encoder) imported into
   genforge's `Encoder` and fine-tuned for sentiment on world reviews, against the same architecture from random
   init on the same data and steps, at several numbers of labelled examples (the learning curve).
2. The architectures side by side: decoder-only (`GPT`), encoder-only (`Encoder`) and encoder-decoder (`Seq2Seq`)
   at about the same parameter count and the same steps, trained from scratch on topic classification (corpus
   document kinds), translation into Vellish and dialogue summarisation (encoder-only has no decoder: n/a).
3. Non-autoregressive decoding: a conditional masked LM (mask-predict, Ghazvininejad et al. 2019) on the same
   translation pairs, BLEU, wall-clock and the repeated-token rate per number of iterations beside greedy
   autoregressive decoding.
4. Before transformers: an LSTM language model with the transformer's parameter count, loss by position in the
   context; and attention's time and memory vs context length (the quadratic curve).

All models here use a word-level vocabulary built from the texts (short sequences keep the stage cheap); the
span-corruption pretraining of the encoder-decoder is measured as a row (its loss), and its fine-tuning benefit
in `small` (it needs more steps than tiny has).
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.report import StageReport
from genforge.speedrun import world
from genforge.speedrun.stage import StageContext

NAME = "objectives"
TITLE = "Objectives: encoder, encoder-decoder, mask-predict, LSTM and the cost of attention"


@dataclass
class Config:
    # 1. transfer (MiniLM vs random init)
    transfer_labels: list[int] = field(default_factory=lambda: [16, 64])  # labelled examples per curve point
    transfer_steps: int = 12
    transfer_test: int = 200
    transfer_lr: float = 1e-4  # fine-tuning lr of the pretrained model
    random_lr: float = 1e-3  # lr of the random init (the better of 1e-4 / 1e-3 measured at 128 labels)
    # 1b. genforge's own encoder: MLM on the world corpus, then entity tagging with few labels
    mlm_steps: int = 200
    tag_labels: int = 32  # labelled sentences for the tagging fine-tune
    tag_steps: int = 60
    tag_test: int = 200
    # 2. architectures
    width: int = 64
    arch_steps: int = 150
    arch_train: int = 600  # training pairs / examples per task
    arch_test: int = 100
    tasks: list[str] = field(default_factory=lambda: ["topic", "translation", "summarization"])
    lr: float = 3e-3
    micro_batch: int = 16
    span_steps: int = 60  # span-corruption pretraining steps of the encoder-decoder (a row)
    # 3. mask-predict
    cmlm_steps: int = 800  # the conditional masked LM needs more steps than AR (300: no repair by iterations)
    iterations: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    # 4. LSTM and attention cost
    lm_steps: int = 150
    lm_window: int = 64
    attn_lengths: list[int] = field(default_factory=lambda: [128, 256, 512, 1024])


@dataclass
class Outputs:
    transfer: dict[str, dict[str, float]]  # "n=16" -> {"pretrained": acc, "random": acc}
    tagging: dict[str, float]  # mlm_masked_acc, tag accuracy on entity tokens: mlm / scratch
    architectures: dict[str, dict[str, float]]  # task -> architecture -> score
    mask_predict: dict[str, dict[str, float]]  # "ar" / "mp-<N>" -> bleu, seconds, repeat_rate
    lstm: dict[str, float]
    seconds: float
    cpu_seconds: float


# ------------------------------------------------------------------------------------------- word vocabulary
_TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
SPECIALS = ("<pad>", "<eos>", "<unk>", "<sep>", "<mask>")


class WordVocab:
    """Lower-cased words and punctuation; ids 0..4 are pad, eos, unk, sep, mask."""

    def __init__(self, texts: list[str], max_size: int = 4000, extra: tuple[str, ...] = ()):
        counts = Counter(w for t in texts for w in _TOKEN.findall(t.lower()))
        words = [w for w, _ in counts.most_common(max_size - len(SPECIALS) - len(extra)) if w not in extra]
        self.itos = [*SPECIALS, *extra, *words]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.pad, self.eos, self.unk, self.sep, self.mask = range(5)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str, limit: int = 0) -> list[int]:
        ids = [self.stoi.get(w, self.unk) for w in _TOKEN.findall(text.lower())]
        return ids[:limit] if limit else ids

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.itos[i] for i in ids if i >= len(SPECIALS))


# ------------------------------------------------------------------------------------------------ wrappers
class LastTokenClassifier(nn.Module):
    """A GPT as a classifier: the next-token logits of the label words after the input's last token."""

    def __init__(self, gpt: nn.Module, label_ids: list[int]):
        super().__init__()
        self.gpt = gpt
        self.register_buffer("labels", torch.tensor(label_ids), persistent=False)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from genforge.model.heads import last_token_index

        logits = self.gpt(ids)  # (B, T, V); right padding never reaches the real tokens (causal)
        last = last_token_index(mask)
        return logits[torch.arange(len(ids)), last][:, self.labels]  # (B, L)


class FirstStepClassifier(nn.Module):
    """An encoder-decoder as a classifier: the first decoded token's logits over the label words."""

    def __init__(self, s2s: nn.Module, label_ids: list[int]):
        super().__init__()
        self.s2s = s2s
        self.register_buffer("labels", torch.tensor(label_ids), persistent=False)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        start = torch.full((len(ids), 1), self.s2s.config.decoder_start_id, dtype=torch.long)
        return self.s2s(ids, start, attention_mask=mask)[:, 0][:, self.labels]


class PrefixLMData:
    """Decoder-only seq2seq: [source, <sep>, target, <eos>] with the loss on target and <eos> only."""

    def __init__(self, pairs: list[tuple[list[int], list[int]]], batch_size: int, vocab: WordVocab, seed: int):
        self.pairs, self.batch_size, self.v, self.seed = pairs, batch_size, vocab, seed

    def get_batch(self, step: int, micro: int, rank: int = 0, world: int = 1) -> dict:
        rng = random.Random(self.seed * 100003 + step * 31 + micro)
        rows = [self.pairs[rng.randrange(len(self.pairs))] for _ in range(self.batch_size)]
        seqs = [s + [self.v.sep] + t + [self.v.eos] for s, t in rows]
        T = max(len(q) for q in seqs) - 1
        x = torch.full((len(seqs), T), self.v.pad)
        y = torch.full((len(seqs), T), -100)
        for i, ((s, _), q) in enumerate(zip(rows, seqs)):
            x[i, :len(q) - 1] = torch.tensor(q[:-1])
            y[i, len(s):len(q) - 1] = torch.tensor(q[len(s) + 1:])  # predict target + eos after <sep>
        return {"x": x, "y": y}


def _prefix_loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
    logits = model(batch["x"])
    return (F.cross_entropy(logits.flatten(0, 1), batch["y"].flatten(), ignore_index=-100, reduction="sum"),
            (batch["y"] != -100).sum(), {})


@torch.no_grad()
def _lm_greedy(gpt: nn.Module, prompts: list[list[int]], max_new: int, eos: int) -> list[list[int]]:
    """Greedy continuation of each prompt with the decoder's KV cache (one row at a time)."""
    from genforge.model.gpt import KVCache

    gpt.eval()
    out = []
    for p in prompts:
        cache = KVCache(gpt.config, 1, len(p) + max_new + 1)
        logits = gpt(torch.tensor([p]), cache=cache)
        seq: list[int] = []
        for _ in range(max_new):
            t = int(logits[0, -1].argmax())
            if t == eos:
                break
            seq.append(t)
            logits = gpt(torch.tensor([[t]]), cache=cache)
        out.append(seq)
    return out


def _tcfg(steps: int, lr: float, batch: int, seed: int, progress: bool = False):
    from genforge.train.trainer import TrainConfig

    return TrainConfig(max_steps=steps, micro_batch=batch, lr=lr, warmup_steps=max(1, steps // 10), eval_every=0,
                       ckpt_every=0, log_every=max(1, steps // 5), progress=progress, seed=seed, resume=False)


def _src_batch(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    from genforge.train.classify import pad_batch

    return pad_batch(seqs, pad)


# ---------------------------------------------------------------------------------------------------- data
def _task_data(w, task: str, n: int, seed: int) -> list[tuple[str, str]]:
    """(source text, target text) pairs; for topic the target is the label word."""
    from genforge.world import labels, tasks, toylang

    rng = random.Random(f"objectives-{task}-{seed}")
    if task == "topic":
        return [(t, labels.TOPIC_LABELS[y]) for t, y in labels.topic_examples(w, n, seed, max_chars=240)]
    if task == "translation":
        return [toylang.sentence_pair(rng)[:2] for _ in range(n)]
    if task == "summarization":
        rows = [tasks.summarization(rng, w) for _ in range(n)]
        return [(r["prompt"].split("\n", 1)[1], r["response"]) for r in rows]
    raise ValueError(f"unknown objectives task {task!r}; use topic, translation, summarization")


def run(ctx: StageContext, cfg: Config, report: StageReport, *, world: world.Outputs) -> Outputs:
    """Transfer lesson, architecture table, mask-predict curve, LSTM vs transformer, attention cost."""
    from genforge.speedrun.rag import load_world

    t0, c0 = time.perf_counter(), time.process_time()
    w = load_world(world.dir)
    out = ctx.path("objectives", "x").parent
    transfer = _transfer(ctx, cfg, report, w, out)
    texts, lm_vocab = _corpus(w, ctx.seed)
    tagging = _mlm_and_tagging(ctx, cfg, report, w, out, texts, lm_vocab)
    archs, ar_model, vocab_tr, test_tr = _architectures(ctx, cfg, report, w, out)
    mp = _mask_predict(ctx, cfg, report, w, out, ar_model, vocab_tr, test_tr)
    lstm = _lstm_vs_transformer(ctx, cfg, report, texts, lm_vocab, out)
    _attention_cost(ctx, cfg, report)
    cpu = time.process_time() - c0
    report.row("stage CPU time", round(cpu, 1), note="seconds of process CPU time (the machine is shared)")
    return Outputs(transfer=transfer, tagging=tagging, architectures=archs, mask_predict=mp, lstm=lstm,
                   seconds=time.perf_counter() - t0, cpu_seconds=cpu)


# --------------------------------------------------------------------------------------- 1. transfer lesson
def _transfer(ctx: StageContext, cfg: Config, report: StageReport, w, out: Path) -> dict:
    from genforge.checkpoint.hf_bert import from_hf_config, load_bert_encoder, read_hf_config
    from genforge.eval.stats import bootstrap_diff, bootstrap_proportion
    from genforge.extras import require
    from genforge.model.encoder import Encoder, SequenceClassifier
    from genforge.rag.embed import minilm_model_dir
    from genforge.report import line_plot
    from genforge.train.classify import finetune_classifier, predict
    from genforge.world.labels import sentiment_examples

    transformers = require("transformers", "rag")
    folder = minilm_model_dir()
    tok = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    train = sentiment_examples(w, max(cfg.transfer_labels), ctx.seed + 1)
    test = sentiment_examples(w, cfg.transfer_test, ctx.seed + 2)
    enc = [(tok(t)["input_ids"], y) for t, y in train]
    test_ids, gold = [tok(t)["input_ids"] for t, _ in test], torch.tensor([y for _, y in test])
    res: dict[str, dict[str, float]] = {}
    correct: dict[tuple[int, str], list[float]] = {}
    for n in cfg.transfer_labels:
        for init in ("pretrained", "random"):
            torch.manual_seed(ctx.seed)
            trunk = load_bert_encoder(folder) if init == "pretrained" else Encoder(from_hf_config(
                read_hf_config(folder)))
            model = SequenceClassifier(trunk, 2)
            lr = cfg.transfer_lr if init == "pretrained" else cfg.random_lr
            finetune_classifier(model, enc[:n], _tcfg(cfg.transfer_steps, lr, 8, ctx.seed),
                                out / f"transfer_{n}_{init}", tok.pad_token_id)
            ok = (predict(model, test_ids, tok.pad_token_id) == gold).float().tolist()
            correct[(n, init)] = ok
            res.setdefault(f"n={n}", {})[init] = sum(ok) / len(ok)
            report.row(f"sentiment accuracy, {n} labels, {init}", str(bootstrap_proportion(ok)),
                       note=f"{cfg.transfer_steps} steps at lr {lr:g}")
    n0 = min(cfg.transfer_labels)
    a, b = correct[(n0, "pretrained")], correct[(n0, "random")]
    report.lesson(f"a real pretrained encoder (MiniLM) beats the same architecture from random init with {n0} labels",
                  ("accuracy, pretrained MiniLM", bootstrap_proportion(a)),
                  ("accuracy, random init", bootstrap_proportion(b)),
                  effect=bootstrap_diff(a, b, paired=True), target=0.10,
                  note=f"{len(a)} held-out world reviews; same architecture, data and {cfg.transfer_steps} steps; "
                       "the reviews' evaluative phrases are ordinary English the pretrained model already knows")
    line_plot(ctx.path("plots", "objectives_transfer.png"),
              {init: (cfg.transfer_labels, [res[f"n={n}"][init] for n in cfg.transfer_labels])
               for init in ("pretrained", "random")},
              "Sentiment accuracy vs labelled examples", "labelled examples", "held-out accuracy")
    report.plot("plots/objectives_transfer.png", "MiniLM (pretrained) vs random init: accuracy vs number of labels")
    return res


# ---------------------------------------------------------------------------------- 2. architecture table
def _models(cfg: Config, V: int, seed: int, n_labels: int = 0):
    """(decoder, encoder, encoder-decoder) of about the same size: 2 decoder blocks, 2 encoder blocks, 1 + 1."""
    from genforge.model.encoder import Encoder, EncoderConfig
    from genforge.model.encoder_decoder import Seq2Seq, Seq2SeqConfig
    from genforge.model.gpt import GPT, GPTConfig

    torch.manual_seed(seed)
    C = cfg.width
    gpt = GPT(GPTConfig(vocab_size=V, depth=2, width=C, head_dim=16, max_seq_len=512))
    enc = Encoder(EncoderConfig(vocab_size=V, depth=2, width=C, head_dim=16, mlp_hidden=3 * C, max_seq_len=512,
                                init_std=0.02))
    s2s = Seq2Seq(Seq2SeqConfig(vocab_size=V, depth=1, decoder_depth=1, width=C, head_dim=16, max_seq_len=512))
    return gpt, enc, s2s


def _n(m: nn.Module) -> int:
    seen, total = set(), 0
    for p in m.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def _architectures(ctx: StageContext, cfg: Config, report: StageReport, w, out: Path):
    from genforge.eval.metrics import rouge_scores, sentence_bleu
    from genforge.eval.stats import bootstrap_diff, bootstrap_mean
    from genforge.infer.beam import beam_search, greedy
    from genforge.model.encoder import SequenceClassifier
    from genforge.train.classify import finetune_classifier, predict
    from genforge.train.seq2seq import train_seq2seq
    from genforge.train.trainer import Trainer
    from genforge.world.labels import TOPIC_LABELS

    table: dict[str, dict[str, float]] = {}
    per_item: dict[str, dict[str, list[float]]] = {}
    ar_model = vocab_tr = test_tr = None
    for task in cfg.tasks:
        data = _task_data(w, task, cfg.arch_train + cfg.arch_test, ctx.seed)
        train, test = data[:cfg.arch_train], data[cfg.arch_train:]
        v = WordVocab([s + " " + t for s, t in train], extra=TOPIC_LABELS if task == "topic" else ())
        limit = 60 if task != "summarization" else 120
        tr = [(v.encode(s, limit), v.encode(t)) for s, t in train]
        te = [(v.encode(s, limit), v.encode(t)) for s, t in test]
        gpt, enc, s2s = _models(cfg, len(v), ctx.seed)
        sizes = {"decoder-only": _n(gpt), "encoder-only": _n(enc), "encoder-decoder": _n(s2s)}
        scores: dict[str, list[float]] = {}
        tc = _tcfg(cfg.arch_steps, cfg.lr, cfg.micro_batch, ctx.seed)
        if task == "topic":
            label_ids = [v.stoi[x] for x in TOPIC_LABELS]
            examples = [(s, TOPIC_LABELS.index(v.itos[t[0]])) for s, t in tr]
            gold = torch.tensor([TOPIC_LABELS.index(v.itos[t[0]]) for _, t in te])
            for arch, model in (("decoder-only", LastTokenClassifier(gpt, label_ids)),
                                ("encoder-only", SequenceClassifier(enc, len(TOPIC_LABELS))),
                                ("encoder-decoder", FirstStepClassifier(s2s, label_ids))):
                finetune_classifier(model, examples, tc, out / f"arch_{task}_{arch}", v.pad)
                scores[arch] = (predict(model, [s for s, _ in te], v.pad) == gold).float().tolist()
            metric = "accuracy"
        else:
            refs = [v.decode(t) for _, t in te]
            max_new = max(len(t) for _, t in tr) + 5
            Trainer(gpt, tc, _prefix_loss, PrefixLMData(tr, cfg.micro_batch, v, ctx.seed), out / f"arch_{task}_dec",
                    name=f"{task}-decoder").fit()
            hyp = [v.decode(s) for s in _lm_greedy(gpt, [s + [v.sep] for s, _ in te], max_new, v.eos)]
            score = (lambda h, r: sentence_bleu(h, r)) if task == "translation" else (
                lambda h, r: 100 * rouge_scores(h, r)["rougeL"])
            scores["decoder-only"] = [score(h, r) for h, r in zip(hyp, refs)]
            train_seq2seq(s2s, tr, tc, out / f"arch_{task}_s2s", pad_id=v.pad, eos_id=v.eos, name=f"{task}-seq2seq")
            src, am = _src_batch([s for s, _ in te], v.pad)
            hyp = [v.decode(s) for s in greedy(s2s, src, am, max_new, v.eos)]
            scores["encoder-decoder"] = [score(h, r) for h, r in zip(hyp, refs)]
            hyp_b = [v.decode(s) for s in beam_search(s2s, src, am, max_new, v.eos, beams=4)]
            beam = [score(h, r) for h, r in zip(hyp_b, refs)]
            report.row(f"{task}: encoder-decoder, beam 4 vs greedy", str(bootstrap_mean(beam)),
                       str(bootstrap_mean(scores["encoder-decoder"])), note="sentence " +
                       ("BLEU" if task == "translation" else "ROUGE-L x100") + "; baseline column = greedy")
            metric = "sentence BLEU" if task == "translation" else "ROUGE-L x100"
            if task == "translation":
                ar_model, vocab_tr, test_tr = s2s, v, te
        table[task] = {a: sum(s) / len(s) for a, s in scores.items()}
        per_item[task] = scores
        for arch in ("decoder-only", "encoder-only", "encoder-decoder"):
            if arch in scores:
                report.row(f"{task} ({metric}): {arch}", str(bootstrap_mean(scores[arch])),
                           note=f"{sizes[arch]:,} parameters, {cfg.arch_steps} steps from scratch")
            else:
                report.row(f"{task} ({metric}): {arch}", "n/a", note="no decoder: cannot generate text left to right")
    # one lesson per task: the encoder-side architecture vs decoder-only (paired over test items). Why these two:
    # classification needs every token to see the whole text (bidirectional); generation from a separate source
    # is what cross-attention is for. At tiny the classification task saturates (every architecture ~1.0).
    for task, scores in per_item.items():
        other = "encoder-only" if task == "topic" else "encoder-decoder"
        report.lesson(f"{task}: {other} beats decoder-only at matched size and steps",
                      (other, bootstrap_mean(scores[other])), ("decoder-only", bootstrap_mean(scores["decoder-only"])),
                      effect=bootstrap_diff(scores[other], scores["decoder-only"], paired=True), target=0.0,
                      note=f"{len(scores[other])} held-out items, models trained from scratch")
    archs = ("decoder-only", "encoder-only", "encoder-decoder")
    lines = ["**Architectures side by side** (same width, ~same parameters, same steps, from scratch; "
             "mean [95 % CI] over held-out items; best in bold):", "",
             "| task | " + " | ".join(archs) + " |", "|---|" + "---|" * len(archs)]
    for task, scores in per_item.items():
        best = max(scores, key=lambda a: sum(scores[a]) / len(scores[a]))
        cells = [("**{}**" if a == best else "{}").format(bootstrap_mean(scores[a])) if a in scores else "n/a"
                 for a in archs]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    report.note("\n".join(lines))
    if "translation" in per_item:  # span corruption: the encoder-decoder's self-supervised objective, as a row
        _span_row(ctx, cfg, report, w, out)
    return table, ar_model, vocab_tr, test_tr


def _span_row(ctx: StageContext, cfg: Config, report: StageReport, w, out: Path) -> None:
    from genforge.train.seq2seq import train_seq2seq
    from genforge.train.span_corruption import SpanConfig, corrupt_spans
    from genforge.world.labels import topic_examples

    docs = [t for t, _ in topic_examples(w, 400, ctx.seed + 7, max_chars=400)]
    v = WordVocab(docs, extra=tuple(f"<extra_{i}>" for i in range(20)))
    sentinels = [v.stoi[f"<extra_{i}>"] for i in range(20)]
    rng = random.Random(ctx.seed)
    pairs = [corrupt_spans(v.encode(d, 80), sentinels, SpanConfig(), rng) for d in docs]
    _, _, s2s = _models(cfg, len(v), ctx.seed)
    res = train_seq2seq(s2s, pairs, _tcfg(cfg.span_steps, cfg.lr, cfg.micro_batch, ctx.seed), out / "span",
                        pad_id=v.pad, eos_id=v.eos, name="span-corruption")
    ex_in, ex_out = pairs[0]
    report.row("span corruption (T5): final training loss", round(res["train_loss"], 3),
               note=f"{cfg.span_steps} steps, 15 % of tokens in spans of mean 3; e.g. input '{v.decode(ex_in[:25])}' "
                    f"-> target '{' '.join(v.itos[i] for i in ex_out[:12])}'")


# ---------------------------------------------------------------------------------------- 3. mask-predict
def _mask_predict(ctx: StageContext, cfg: Config, report: StageReport, w, out: Path, ar_model, v, test) -> dict:
    from genforge.eval.metrics import bleu
    from genforge.eval.stats import bootstrap_diff, bootstrap_mean
    from genforge.infer.beam import greedy
    from genforge.infer.mask_predict import mask_predict
    from genforge.model.encoder_decoder import Seq2Seq, Seq2SeqConfig
    from genforge.report import line_plot
    from genforge.train.seq2seq import train_seq2seq

    if ar_model is None:
        return {}
    data = _task_data(w, "translation", cfg.arch_train + cfg.arch_test, ctx.seed)[:cfg.arch_train]
    tr = [(v.encode(s, 60), v.encode(t)) for s, t in data]
    torch.manual_seed(ctx.seed)
    max_len = max(len(t) for _, t in tr) + 4
    cmlm = Seq2Seq(Seq2SeqConfig(vocab_size=len(v), depth=1, decoder_depth=1, width=cfg.width, head_dim=16,
                                 max_seq_len=512, decoder_causal=False, length_classes=max_len + 1))
    train_seq2seq(cmlm, tr, _tcfg(cfg.cmlm_steps, cfg.lr, cfg.micro_batch, ctx.seed), out / "cmlm", pad_id=v.pad,
                  eos_id=v.eos, mode="cmlm", mask_id=v.mask, name="mask-predict")
    refs = [v.decode(t) for _, t in test]
    src, am = _src_batch([s for s, _ in test], v.pad)

    def rep(seqs: list[list[int]]) -> list[float]:  # per-sentence share of tokens repeating the previous one
        return [sum(a == b for a, b in zip(s, s[1:])) / max(1, len(s) - 1) for s in seqs]

    res: dict[str, dict[str, float]] = {}
    t = time.perf_counter()
    ar = greedy(ar_model, src, am, max_len, v.eos)
    res["ar"] = {"bleu": bleu([v.decode(s) for s in ar], refs), "seconds": time.perf_counter() - t,
                 "repeat_rate": sum(rep(ar)) / len(ar)}
    reps = {}
    for n in cfg.iterations:
        t = time.perf_counter()
        seqs = mask_predict(cmlm, src, am, v.mask, iterations=n, max_len=max_len)
        sec = time.perf_counter() - t
        reps[n] = rep(seqs)
        res[f"mp-{n}"] = {"bleu": bleu([v.decode(s) for s in seqs], refs), "seconds": sec,
                          "repeat_rate": sum(reps[n]) / len(seqs)}
    for k, r in res.items():
        report.row(f"translation, {'autoregressive greedy' if k == 'ar' else f'mask-predict, {k[3:]} iterations'}",
                   round(r["bleu"], 1), note=f"corpus BLEU; {r['seconds'] * 1000 / len(test):.1f} ms/sentence "
                   f"(batch of {len(test)}); repeated-token rate {r['repeat_rate']:.3f}")
    lo, hi = min(cfg.iterations), max(cfg.iterations)
    ar_rep = rep(ar)
    report.lesson(f"mask-predict with {lo} iteration repeats more tokens than autoregressive decoding "
                  "(non-autoregressive multi-modality)",
                  (f"repeat rate, mask-predict {lo}", bootstrap_mean(reps[lo])),
                  ("repeat rate, autoregressive", bootstrap_mean(ar_rep)),
                  effect=bootstrap_diff(reps[lo], ar_rep, paired=True), target=0.0,
                  note="each position picks its word independently given the source, so neighbours can pick the "
                       "same likely word")
    report.lesson(f"mask-predict: {hi} iterations repeat fewer tokens than {lo} (multi-modality repaired)",
                  (f"repeat rate, {lo} iteration(s)", bootstrap_mean(reps[lo])),
                  (f"repeat rate, {hi} iterations", bootstrap_mean(reps[hi])),
                  effect=bootstrap_diff(reps[lo], reps[hi], paired=True), target=0.0,
                  note=f"{len(test)} held-out sentences; conditional masked LM trained {cfg.cmlm_steps} steps")
    line_plot(ctx.path("plots", "objectives_mask_predict.png"),
              {"mask-predict": (cfg.iterations, [res[f"mp-{n}"]["bleu"] for n in cfg.iterations]),
               "autoregressive (greedy)": (cfg.iterations, [res["ar"]["bleu"]] * len(cfg.iterations))},
              "Translation BLEU vs mask-predict iterations", "iterations", "corpus BLEU")
    report.plot("plots/objectives_mask_predict.png", "Mask-predict BLEU per iteration count vs autoregressive")
    return res


# ------------------------------------------------------------------------------- 4. LSTM and attention cost
def _corpus(w, seed: int) -> tuple[list[str], WordVocab]:
    """Clean world documents (from the generator itself, so no planted junk), shuffled, and their word vocabulary."""
    import itertools

    from genforge.world.corpus import iter_clean_documents

    texts = list(itertools.islice(iter_clean_documents(w, random.Random(f"objectives-lm-{seed}")), 3000))
    random.Random(seed).shuffle(texts)
    return texts, WordVocab(texts[:2500], max_size=3000)


def _mlm_and_tagging(ctx: StageContext, cfg: Config, report: StageReport, w, out: Path, texts: list[str],
                     v: WordVocab) -> dict:
    """Masked-LM pretraining of genforge's encoder on the corpus, then entity tagging from it vs from scratch."""
    import copy

    from genforge.eval.stats import bootstrap_diff, bootstrap_mean
    from genforge.model.encoder import Encoder, EncoderConfig, MaskedLM, TokenTagger
    from genforge.train.classify import finetune_tagger
    from genforge.train.mlm import WindowData, mlm_loss_fn
    from genforge.train.trainer import Trainer, read_metrics
    from genforge.world.labels import ENTITY_TAGS, entity_examples

    ecfg = EncoderConfig(vocab_size=len(v), depth=2, width=cfg.width, head_dim=16, mlp_hidden=3 * cfg.width,
                         max_seq_len=512)
    torch.manual_seed(ctx.seed)
    mlm = MaskedLM(ecfg)
    stream = torch.tensor([i for t in texts[:2500] for i in v.encode(t) + [v.eos]])
    res = Trainer(mlm, _tcfg(cfg.mlm_steps, cfg.lr, cfg.micro_batch, ctx.seed),
                  mlm_loss_fn(v.mask, len(v), v.pad), WindowData(stream, cfg.lm_window, cfg.micro_batch, ctx.seed),
                  out / "mlm", name="mlm").fit()
    last = (read_metrics(out / "mlm") or [{}])[-1]
    report.row("masked-LM pretraining (15 %, 80/10/10): masked-token accuracy", round(last.get("masked_acc", 0.0), 3),
               note=f"last logged batch; {cfg.mlm_steps} steps on the world corpus, loss {res['train_loss']:.3f}")

    def encode(words: list[str], tags: list[str]) -> tuple[list[int], list[int]]:
        ids, ys = [], []
        for word, tag in zip(words, tags):
            for j, piece in enumerate(_TOKEN.findall(word.lower())):
                ids.append(v.stoi.get(piece, v.unk))
                inner = tag if j == 0 or tag == "O" else "I-" + tag[2:]
                ys.append(ENTITY_TAGS.index("O" if not piece[0].isalnum() else inner))
        return ids, ys

    sents = [encode(*ex) for ex in entity_examples(w, cfg.tag_labels + cfg.tag_test, ctx.seed)]
    train, test = sents[:cfg.tag_labels], sents[cfg.tag_labels:]
    scores: dict[str, list[float]] = {}
    for name in ("MLM-pretrained", "scratch"):
        torch.manual_seed(ctx.seed)
        trunk = copy.deepcopy(mlm.encoder) if name == "MLM-pretrained" else Encoder(ecfg)
        tagger = TokenTagger(trunk, len(ENTITY_TAGS))
        finetune_tagger(tagger, train, _tcfg(cfg.tag_steps, cfg.lr, 8, ctx.seed), out / f"tag_{name}", v.pad)
        tagger.eval()
        per = []
        with torch.no_grad():
            for ids, ys in test:
                pred = tagger(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0].argmax(-1).tolist()
                ent = [i for i, y in enumerate(ys) if y != 0]
                per.append(sum(pred[i] == ys[i] for i in ent) / max(1, len(ent)))
        scores[name] = per
        report.row(f"entity tagging (PER/LOC/OBJ), {cfg.tag_labels} labelled sentences, {name}",
                   str(bootstrap_mean(per)), note="per-sentence accuracy on entity tokens (BIO tags)")
    a, b = scores["MLM-pretrained"], scores["scratch"]
    report.lesson(f"MLM pretraining on the world corpus helps entity tagging with {cfg.tag_labels} labelled sentences",
                  ("entity-token accuracy, MLM-pretrained", bootstrap_mean(a)), ("from scratch", bootstrap_mean(b)),
                  effect=bootstrap_diff(a, b, paired=True), target=0.0,
                  note=f"genforge's encoder ({_n(mlm):,} parameters), {cfg.mlm_steps} MLM steps, "
                       f"{cfg.tag_steps} tagging steps; {len(a)} held-out sentences. MLM learns from only the 15 % "
                       "masked tokens: at tiny its masked-token accuracy stays near the unigram level (~0.1; 400 steps "
                       "or lr 1e-2 measured no better), so little transfers; `small` trains it 10x longer")
    return {"mlm_masked_acc": float(last.get("masked_acc", 0.0)), "tag_mlm": sum(a) / len(a),
            "tag_scratch": sum(b) / len(b)}


def _lstm_vs_transformer(ctx: StageContext, cfg: Config, report: StageReport, texts: list[str], v: WordVocab,
                         out: Path) -> dict:
    from genforge.eval.stats import bootstrap_diff
    from genforge.model.gpt import GPT, GPTConfig
    from genforge.model.lstm import LSTMLM, LSTMConfig, width_for_params
    from genforge.report import line_plot
    from genforge.train.trainer import Trainer
    L = cfg.lm_window + 1
    stream = [i for t in texts for i in v.encode(t) + [v.eos]]
    split = int(len(stream) * 0.85)
    train = torch.tensor(stream[:split])
    test_windows = torch.tensor(stream[split:]).unfold(0, L, L)[:200]  # (N, L), non-overlapping

    class Windows:
        def get_batch(self, step: int, micro: int, rank: int = 0, world: int = 1) -> dict:
            g = torch.Generator().manual_seed(ctx.seed * 7 + step * 13 + micro)
            starts = torch.randint(0, len(train) - L, (cfg.micro_batch,), generator=g)
            return {"w": torch.stack([train[s:s + L] for s in starts.tolist()])}

    def loss(model: nn.Module, batch: dict):
        wv = batch["w"]
        logits = model(wv[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1), wv[:, 1:].flatten(), reduction="sum"), wv[:, 1:].numel(), {}

    torch.manual_seed(ctx.seed)
    gpt = GPT(GPTConfig(vocab_size=len(v), depth=2, width=cfg.width, head_dim=16, max_seq_len=512))
    lstm = LSTMLM(LSTMConfig(vocab_size=len(v), layers=1, width=width_for_params(_n(gpt), len(v), 1)))
    per_pos = {}
    for name, model in (("transformer", gpt), ("LSTM", lstm)):
        Trainer(model, _tcfg(cfg.lm_steps, cfg.lr, cfg.micro_batch, ctx.seed), loss, Windows(), out / f"lm_{name}",
                name=f"lm-{name}").fit()
        model.eval()
        with torch.no_grad():
            logits = model(test_windows[:, :-1])
            nll = F.cross_entropy(logits.transpose(1, 2), test_windows[:, 1:], reduction="none")  # (N, L-1)
        per_pos[name] = nll
        report.row(f"{name} LM: held-out loss", round(nll.mean().item(), 3),
                   note=f"{_n(model):,} parameters, {cfg.lm_steps} steps, word-level, windows of {cfg.lm_window}")
    q = cfg.lm_window // 4
    gain = {k: (x[:, :q].mean(1) - x[:, -q:].mean(1)).tolist() for k, x in per_pos.items()}  # early - late loss
    report.lesson("the transformer uses far context better than an LSTM of the same size (loss falls more "
                  "from the first to the last quarter of the window)",
                  ("early - late loss, transformer", sum(gain["transformer"]) / len(gain["transformer"])),
                  ("early - late loss, LSTM", sum(gain["LSTM"]) / len(gain["LSTM"])),
                  effect=bootstrap_diff(gain["transformer"], gain["LSTM"], paired=True), target=0.0,
                  note=f"{len(test_windows)} held-out windows of {cfg.lm_window} words; at tiny (150 steps) neither "
                       "model has learned to use distant words much yet: the `small` recipe trains 10x longer on "
                       "windows of 128")
    xs = list(range(1, cfg.lm_window + 1))
    line_plot(ctx.path("plots", "objectives_loss_by_position.png"),
              {k: (xs, x.mean(0).tolist()) for k, x in per_pos.items()},
              "Loss by position in the context", "position (words seen + 1)", "held-out loss (nats)")
    report.plot("plots/objectives_loss_by_position.png", "LSTM vs transformer: loss by position in the context")
    return {f"{k}_loss": float(x.mean()) for k, x in per_pos.items()} | {
        f"{k}_early_minus_late": sum(g) / len(g) for k, g in gain.items()}


def _attention_cost(ctx: StageContext, cfg: Config, report: StageReport) -> None:
    from genforge.report import line_plot

    rows = attention_cost(cfg.attn_lengths)
    for r in rows:
        report.row(f"attention at {r['length']} tokens", f"{r['ms']:.2f} ms",
                   note=f"score matrix {r['score_mib']:.1f} MiB (one layer, 4 heads of 32, batch 1, fp32)")
    # growth exponent between consecutive lengths: log2(t(2n)/t(n)); 2 = quadratic
    import math

    exps = [math.log2(b["ms"] / a["ms"]) for a, b in zip(rows, rows[1:]) if a["ms"] > 0]
    if len(exps) >= 2:
        last = exps[-2:]
        report.lesson("attention's time grows about quadratically with context length (exponent > 1.5 at the "
                      "longest lengths)", ("time exponent per doubling", round(sum(last) / 2, 2)),
                      effect=(sum(last) / 2, min(last), max(last)), target=1.5,
                      note="log2 of the time ratio of the last two doublings of the length; the interval is their "
                           "range, not a bootstrap")
    line_plot(ctx.path("plots", "objectives_attention_cost.png"),
              {"time (ms)": ([r["length"] for r in rows], [r["ms"] for r in rows])},
              "Attention time vs context length", "tokens", "ms per forward", logy=True)
    report.plot("plots/objectives_attention_cost.png", "Attention time vs length (log scale)")


def attention_cost(lengths: list[int], heads: int = 4, head_dim: int = 32, repeats: int = 3) -> list[dict]:
    """Time of one attention (scores materialised: softmax(q k^T / sqrt(D)) v) per length, and the score matrix
    size: the T x T term that makes attention quadratic. Best of `repeats` runs."""
    out = []
    g = torch.Generator().manual_seed(0)
    for T in lengths:
        q, k, v = (torch.randn(1, heads, T, head_dim, generator=g) for _ in range(3))
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            s = (q @ k.transpose(-1, -2)) * head_dim ** -0.5  # (1, H, T, T)
            causal = torch.ones(T, T, dtype=torch.bool).tril()
            y = torch.softmax(s.masked_fill(~causal, float("-inf")), -1) @ v
            best = min(best, time.perf_counter() - t)
        out.append({"length": T, "ms": best * 1000, "score_mib": s.numel() * s.element_size() / 2**20,
                    "out_norm": float(y.norm())})
    return out
