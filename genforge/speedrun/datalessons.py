"""Stage "datalessons": what data teaches what (issue 19, item 6).

Three measurements on models pretrained here from scratch on the world's corpus, small enough to train twice:
- **Language vs world knowledge over pretraining tokens.** Minimal pairs scored by the model's log-likelihood
  (BLiMP-style, Warstadt et al. 2020): language = the grammatical sentence beats its agreement-broken twin
  ("Posy Marrow lives in Heronmere." vs "Posy Marrow live in Heronmere."); world knowledge = the true fact beats the
  same sentence with another town or job ("... lives in Uppermere."). The first is the same rule for every person
  and saturates early; the second is one fact per person and keeps improving with tokens (Zhang et al. 2021,
  "When do you need billions of words of pretraining data?": syntax from ~10-100 M words, facts need far more).
- **Cross-training.** The same steps on the corpus with and without its worked-arithmetic and worked-solution
  documents (the corpus's "code-like", procedural share), measured on reasoning tasks by option log-likelihood
  (the gold answer vs a wrong one after the question). Training on code and worked solutions is reported to help
  reasoning (Ma et al. 2023, "At which training stage does code data help LLMs reasoning?").
- **A small instruction-tuned model vs a larger base model** on the same reasoning items (paths in the config;
  the `small` recipe compares the tiny chat model with the small base).

The models are tiny and trained for seconds at `tiny` (a depth-2 model, a few hundred steps), so the curves are
short; `small` trains longer. The default run's pretrained model is not reused: its intermediate states are gone.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from genforge.report import StageReport
from genforge.speedrun import pretrain, tokenizer, world
from genforge.speedrun.stage import StageContext

if TYPE_CHECKING:
    import torch

NAME = "datalessons"
TITLE = "What data teaches what: language vs facts, cross-training, tuning vs size"


@dataclass
class Config:
    depth: int = 2  # the model trained from scratch (width 32 * depth)
    steps: int = 300  # optimizer steps per run
    micro_batch: int = 16
    seq_len: int = 128
    eval_every: int = 50  # probe points along the curve
    docs: int = 4000  # corpus documents generated for each run
    probe_pairs: int = 120  # minimal pairs per probe kind
    reasoning_items: int = 60  # items per reasoning task
    reasoning_tasks: list[str] = field(default_factory=lambda: ["arithmetic", "coin_flip", "multiple_choice"])
    cross_training: bool = True  # train a second model without the procedural documents
    tuned_small: str = ""  # instruction-tuned small model (run-relative or absolute; "" = skip that comparison)
    base_large: str = ""  # larger base model for the same comparison


@dataclass
class Outputs:
    curves: dict[str, dict[str, list[float]]]  # run -> probe -> accuracy per probe point
    tokens: list[int]  # tokens seen at each probe point
    final: dict[str, dict[str, float]]  # run -> probe -> final accuracy
    checkpoint: str = ""  # the model trained with the full mix (a smaller pretrained model for eval's size rows)


# ---- probes --------------------------------------------------------------------------------------------------

def minimal_pairs(tables: dict, n: int, seed: int) -> dict[str, list[tuple[str, str]]]:
    """{"language": [(good, bad)], "knowledge": [(true, false)]} over the same people and sentence frames.

    language breaks subject-verb agreement ("lives" -> "live") in half of the pairs and word order ("lives in" ->
    "in lives") in the other half; knowledge swaps the town or the job for another one of the world. Each pair
    differs in one place, so the comparison isolates that one thing. Why two kinds: agreement alone is one
    decision shared by every pair (does " live" take an "s" after a name?), so a model's drifting prior over that one
    token swung the whole probe between 0.5 and 1.0 from checkpoint to checkpoint in the small run.
    """
    rng = random.Random(f"datalessons-{seed}")
    people = list(tables["people"])
    rng.shuffle(people)
    towns = sorted({p["town"] for p in tables["people"]})
    jobs = sorted({p["job"] for p in tables["people"]})
    lang, know = [], []
    for k, p in enumerate(people[:n]):
        if k % 2 == 0:
            other = rng.choice([t for t in towns if t != p["town"]])
            good = f"{p['name']} lives in {p['town']}."
            bad = f"{p['name']} live in {p['town']}." if k % 4 == 0 else f"{p['name']} in lives {p['town']}."
            lang.append((good, bad))
            know.append((good, f"{p['name']} lives in {other}."))
        else:
            other = rng.choice([j for j in jobs if j != p["job"]])
            good = f"{p['name']} works as a {p['job']}."
            bad = f"{p['name']} work as a {p['job']}." if k % 4 == 1 else f"{p['name']} as works a {p['job']}."
            lang.append((good, bad))
            know.append((good, f"{p['name']} works as a {other}."))
    return {"language": lang, "knowledge": know}


def reasoning_items(tasks_dir: str | Path, names: list[str], n: int, seed: int) -> dict[str, list[tuple[str, list[str],
                                                                                                       int]]]:
    """{task: [(context, options, gold index)]}: multiple choice keeps its options; other tasks get the gold answer
    and one wrong answer of the same kind (another test row's answer), in random order."""
    rng = random.Random(f"datalessons-reasoning-{seed}")
    rows_by_task: dict[str, list[dict]] = {t: [] for t in names}
    with open(Path(tasks_dir) / "test.jsonl") as f:
        for line in f:
            r = json.loads(line)
            if r.get("task") in rows_by_task and len(rows_by_task[r["task"]]) < n:
                rows_by_task[r["task"]].append(r)
    out: dict[str, list[tuple[str, list[str], int]]] = {}
    for t, rows in rows_by_task.items():
        if not rows:
            continue
        answers = sorted({str(r.get("answer", "")) for r in rows} - {""})
        items = []
        for r in rows:
            q = r.get("question", r["prompt"])
            if "options" in r:
                items.append((f"Question: {q}\nAnswer:", [str(o) for o in r["options"]], int(r["gold_index"])))
                continue
            gold = str(r["answer"])
            wrong = [a for a in answers if a != gold]
            if not wrong:
                continue
            opts = [gold, rng.choice(wrong)]
            rng.shuffle(opts)
            items.append((f"Question: {q}\nAnswer: The answer is", opts, opts.index(gold)))
        out[t] = items
    return out


def curve_shape(start: float, mid: float, end: float, n: int) -> str:
    """Words for a probe curve's two halves, a change counting only beyond twice the standard error of the
    difference of two accuracies on `n` items (0.08 at n=300): sampling noise is not a trend."""
    def moved(a: float, b: float) -> int:
        se = math.sqrt(max(a * (1 - a) + b * (1 - b), 1e-9) / max(n, 1))
        return 0 if abs(b - a) <= 2 * se else (1 if b > a else -1)

    first, second = moved(start, mid), moved(mid, end)
    if second > 0:
        return "still rising in the second half"
    if second < 0:
        return "falls in the second half (unstable)"
    return "saturated by mid-training" if first > 0 else "no clear rise"


def pair_accuracy(lm, pairs: list[tuple[str, str]]) -> list[float]:
    """Per pair 1.0 when the first sentence is likelier than the second (summed log-probs)."""
    ll = [x[0] for x in lm.loglikelihood_rolling([s for p in pairs for s in p])]
    return [float(ll[2 * i] > ll[2 * i + 1]) for i in range(len(pairs))]


def option_accuracy(lm, items: list[tuple[str, list[str], int]]) -> list[float]:
    """Per item 1.0 when the gold option is the likeliest continuation (summed log-probs)."""
    pairs = [(ctx, f" {o}") for ctx, opts, _ in items for o in opts]
    ll = [x[0] for x in lm.loglikelihood(pairs)]
    out, k = [], 0
    for _, opts, gold in items:
        scores = ll[k:k + len(opts)]
        k += len(opts)
        out.append(float(max(range(len(opts)), key=scores.__getitem__) == gold))
    return out


# ---- corpus and training -------------------------------------------------------------------------------------

PROCEDURAL = ("arithmetic", "worked")  # the corpus's document kinds that are worked procedures


def corpus_docs(size: str, seed: int, n: int, procedural: bool) -> list[str]:
    """The world's clean documents (entries first, then the open-ended mix), with or without the procedural kinds:
    without them, each procedural draw is replaced by a draw from the other kinds (same document count)."""
    from genforge.world import corpus as wc
    from genforge.world.facts import build_world
    from genforge.world.generate import SIZES

    s = SIZES[size]
    w = build_world(seed, s["people"], s["towns"], s["objects"])
    rng = random.Random(f"datalessons-corpus-{seed}")
    makers = wc.document_makers(w)
    docs = [wc.person_entry(rng, w, p) for p in w.people] + [wc.town_entry(rng, w, t) for t in w.towns]
    others = [k for k, _ in wc.DOC_MIX if k not in PROCEDURAL]
    while len(docs) < n:
        r = rng.random()
        kind = next(k for k, cut in wc.DOC_MIX if r < cut)
        if not procedural and kind in PROCEDURAL:
            kind = rng.choice(others)
        docs.append(makers[kind](rng, w))
    rng.shuffle(docs)
    return docs[:n]


class WindowSource:
    """Random windows of seq_len + 1 tokens from one token stream; a pure function of (seed, step, micro)."""

    def __init__(self, ids: list[int], seq_len: int, batch: int, seed: int):
        import torch

        self.ids, self.seq_len, self.batch, self.seed = torch.tensor(ids), seq_len, batch, seed

    def get_batch(self, step: int, micro: int, rank: int, world: int) -> dict[str, torch.Tensor]:
        import torch

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 97 + micro)
        starts = torch.randint(0, len(self.ids) - self.seq_len - 1, (self.batch,), generator=g)
        rows = torch.stack([self.ids[s:s + self.seq_len + 1] for s in starts.tolist()])  # (B, T + 1)
        return {"input_ids": rows[:, :-1], "labels": rows[:, 1:]}


def train_with_probes(ctx: StageContext, cfg: Config, tok, docs: list[str], probes, out: Path) -> dict:
    """Pretrain a fresh depth-`cfg.depth` model on `docs`; probe at step 0 and every `eval_every` steps.
    Returns {"tokens": [...], probe name: [accuracy...], "items": {probe: final per-item list}}."""
    import torch

    from genforge.checkpoint import write_checkpoint_files
    from genforge.eval.lm import GenforgeLM
    from genforge.model.gpt import GPT, GPTConfig
    from genforge.train.losses import lm_loss
    from genforge.train.trainer import TrainConfig, Trainer

    ids: list[int] = []
    for d in docs:
        ids += tok.encode(d, add_bos=True)
    torch.manual_seed(ctx.seed)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, depth=cfg.depth, max_seq_len=max(cfg.seq_len, 256)))
    tcfg = TrainConfig(max_steps=cfg.steps, micro_batch=cfg.micro_batch, warmup_steps=min(30, cfg.steps // 10),
                       eval_every=cfg.eval_every, ckpt_every=0, resume=False, seed=ctx.seed, progress=False,
                       log_every=max(1, cfg.eval_every))
    curve: dict = {"tokens": []}
    per_tokens = cfg.micro_batch * cfg.seq_len

    def probe(m) -> dict:
        lm = GenforgeLM(m, tok, chat=False, batch_size=32)
        step = len(curve["tokens"]) * cfg.eval_every
        curve["tokens"].append(step * per_tokens)
        res = {}
        for name, fn in probes.items():
            items = fn(lm)
            curve.setdefault(name, []).append(sum(items) / len(items))
            curve.setdefault("items", {})[name] = items
            res[name] = curve[name][-1]
        return res

    model.eval()
    with torch.no_grad():
        probe(model)
    model.train()

    def save_fn(folder: Path) -> None:  # a checkpoint folder like any other (the eval stage reuses it)
        write_checkpoint_files(folder, model, tok, {"depth": cfg.depth, "steps": cfg.steps}, {"stage": NAME})

    Trainer(model, tcfg, lm_loss, WindowSource(ids, cfg.seq_len, cfg.micro_batch, ctx.seed), out, eval_fn=probe,
            save_fn=save_fn, default_lr=model.config.default_lr(), name=NAME).fit()
    curve["train_tokens"] = len(ids)
    curve["checkpoint"] = str(out / "checkpoint")
    return curve


# ---- the stage -----------------------------------------------------------------------------------------------

def run(ctx: StageContext, cfg: Config, report: StageReport, *, world: world.Outputs, tokenizer: tokenizer.Outputs,
        pretrain: pretrain.Outputs) -> Outputs:
    """Two pretraining runs with probes along the way, the lessons, the plots, and the tuned-vs-larger rows.

    `pretrain` is an input only so that `base_large` (this run's pretrained model in the small recipe) exists
    before the comparison reads it; `tuned_small` is another run's chat model."""
    from genforge.eval.stats import bootstrap_diff, bootstrap_proportion
    from genforge.report import line_plot
    from genforge.tokenizer import Tokenizer

    t0, cpu0 = time.perf_counter(), time.process_time()
    tok = Tokenizer.load(tokenizer.tokenizer)
    tables = json.loads((Path(world.dir) / "world.json").read_text())
    pairs = minimal_pairs(tables, cfg.probe_pairs, ctx.seed)
    reason = reasoning_items(world.tasks_dir, cfg.reasoning_tasks, cfg.reasoning_items, ctx.seed)
    flat_reason = [it for items in reason.values() for it in items]
    probes = {"language": lambda lm: pair_accuracy(lm, pairs["language"]),
              "knowledge": lambda lm: pair_accuracy(lm, pairs["knowledge"]),
              "reasoning": lambda lm: option_accuracy(lm, flat_reason)}
    runs = {"with procedural docs": True} | ({"without procedural docs": False} if cfg.cross_training else {})
    curves = {}
    for name, procedural in runs.items():
        docs = corpus_docs(ctx.size, ctx.seed, cfg.docs, procedural)
        curves[name] = train_with_probes(ctx, cfg, tok, docs, probes, ctx.path(NAME, name.replace(" ", "_")))
    main = curves["with procedural docs"]
    tokens = main["tokens"]
    line_plot(ctx.path("plots", "datalessons_curves.png"),
              {"language (agreement and word-order pairs)": (tokens, main["language"]),
               "world knowledge (fact pairs)": (tokens, main["knowledge"]),
               "reasoning (gold vs wrong answer)": (tokens, main["reasoning"])},
              "What pretraining teaches first", "tokens seen", "minimal-pair / option accuracy")
    report.plot("plots/datalessons_curves.png", f"Probe accuracy over pretraining tokens (depth-{cfg.depth} model, "
                f"{cfg.probe_pairs} pairs per probe; chance 0.5 for pairs)")
    mid = len(tokens) // 2
    sizes = {"language": len(pairs["language"]), "knowledge": len(pairs["knowledge"]), "reasoning": len(flat_reason)}
    for probe in ("language", "knowledge", "reasoning"):
        c = main[probe]
        report.row(f"{probe} probe accuracy: step 0 -> {tokens[mid]:,} tokens -> {tokens[-1]:,} tokens",
                   f"{c[0]:.2f} -> {c[mid]:.2f} -> {c[-1]:.2f}", None, curve_shape(c[0], c[mid], c[-1], sizes[probe]))
    lang_end, know_end = main["items"]["language"], main["items"]["knowledge"]
    report.lesson("language knowledge is learned before world knowledge (language pairs more accurate than fact pairs "
                  "at the end of a short pretraining)",
                  ("language minimal pairs", bootstrap_proportion(lang_end)),
                  ("fact minimal pairs", bootstrap_proportion(know_end)),
                  effect=bootstrap_diff(lang_end, know_end, paired=True), target=0.0,
                  note=f"the same {len(lang_end)} people and sentence frames; a pair differs in the verb's agreement "
                       f"or in the town/job. Curves in the plot; {cfg.steps} steps, {tokens[-1]:,} tokens")
    if cfg.cross_training and "without procedural docs" in curves:
        w, wo = main["items"]["reasoning"], curves["without procedural docs"]["items"]["reasoning"]
        report.lesson("cross-training: pretraining with worked-arithmetic / worked-solution documents helps on "
                      "reasoning tasks",
                      ("reasoning accuracy, with", bootstrap_proportion(w)),
                      ("without (same steps, other documents instead)", bootstrap_proportion(wo)),
                      effect=bootstrap_diff(w, wo, paired=True), target=0.0,
                      note=f"{', '.join(reason)}: gold vs one wrong answer (multiple choice: its options) by "
                           f"log-likelihood; n={len(w)} items")
        wol = curves["without procedural docs"]
        line_plot(ctx.path("plots", "datalessons_cross_training.png"),
                  {"with procedural docs": (tokens, main["reasoning"]),
                   "without procedural docs": (wol["tokens"], wol["reasoning"])},
                  "Cross-training: reasoning accuracy over pretraining", "tokens seen", "option accuracy")
        report.plot("plots/datalessons_cross_training.png", "Reasoning-task accuracy (option log-likelihood) with and "
                    "without the corpus's worked-procedure documents")
    _tuned_vs_larger(ctx, cfg, report, flat_reason)
    report.row("datalessons stage seconds", round(time.perf_counter() - t0, 1), None,
               f"CPU {time.process_time() - cpu0:.0f} s; {len(runs)} pretraining runs of {cfg.steps} steps")
    return Outputs(curves={k: {p: v[p] for p in probes} for k, v in curves.items()}, tokens=tokens,
                   final={k: {p: v[p][-1] for p in probes} for k, v in curves.items()},
                   checkpoint=main["checkpoint"])


def _tuned_vs_larger(ctx: StageContext, cfg: Config, report: StageReport, items) -> None:
    """A small instruction-tuned model vs a larger base model on the same reasoning items (option log-likelihood,
    each in its own format: the tuned one through its chat template)."""
    from genforge.checkpoint import load_checkpoint
    from genforge.eval.lm import GenforgeLM
    from genforge.eval.stats import bootstrap_diff

    paths = [Path(p) if Path(p).is_absolute() else Path(ctx.run_dir) / p for p in (cfg.tuned_small, cfg.base_large)]
    if not (cfg.tuned_small and cfg.base_large) or not all((p / "config.json").exists() for p in paths):
        report.row("small instruction-tuned vs larger base model", "not measured", None,
                   "set datalessons.tuned_small and base_large (the small recipe compares the tiny chat model with "
                   "the small base)")
        return
    (ms, ts, _), (ml, tl, _) = load_checkpoint(paths[0]), load_checkpoint(paths[1])
    a = option_accuracy(GenforgeLM(ms, ts, chat=True), items)
    b = option_accuracy(GenforgeLM(ml, tl, chat=False), items)
    size = lambda m: sum(x.numel() for x in m.parameters()) / 1e6  # noqa: E731
    report.lesson(f"a small instruction-tuned model ({size(ms):.1f} M) rivals a larger base model ({size(ml):.1f} M) "
                  "on reasoning items (not more than 0.05 worse)",
                  ("accuracy, small tuned", sum(a) / len(a)), ("accuracy, larger base", sum(b) / len(b)),
                  effect=bootstrap_diff(a, b, paired=True), target=-0.05,
                  note=f"same {len(a)} items, option log-likelihood (Wei et al. 2022, FLAN; Chung et al. 2022)")
