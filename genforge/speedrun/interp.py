"""Stage "interp": look inside the models — attention, logit lens, probes with controls, the world map,
ICL label anchors, a lie detector, and calibration of multiple-choice answers (issue 18, items 1-2).

Every lesson reads the run's own checkpoints (pretrained, SFT chat, aligned) through `genforge.interp`;
nothing is trained but linear probes (on the shared Trainer). Cheap at `tiny` (about a minute of CPU).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from genforge.report import StageReport, line_plot
from genforge.speedrun import align, cai, pretrain, sft, world
from genforge.speedrun.stage import StageContext

NAME = "interp"
TITLE = "Interpretability and calibration"


@dataclass
class Config:
    """What the interpretability lessons measure; defaults = the `tiny` size."""

    probe_people: int = 400  # people whose name representations are probed (cross-validated over all of them)
    probe_folds: int = 2  # every person is a test item once: n = probe_people (a 25 % test split left n = 100,
    # too few to separate a 0.11 accuracy gain from its control)
    probe_steps: int = 150  # Trainer steps per linear probe
    probe_l2: float = 1e-3  # ridge penalty of the classification probes
    map_folds: int = 5  # cross-validation folds over the towns for the world-map probe
    map_l2: float = 10.0  # ridge penalty of the map probe (few towns, 128-d features: strong)
    map_shuffles: int = 3  # shuffled-coordinate controls averaged (one permutation of 40 towns is noisy)
    lie_people: int = 200  # people whose true/false statements train (75 %) and test (25 %) the lie detector
    lie_sums: int = 200  # true/false sums ("7 plus 5 is 12.") in the lie detector's second family
    icl_prompts: int = 100  # few-shot prompts for the label-anchor analysis
    icl_shots: int = 8
    mc_items: int = 300  # multiple-choice questions for calibration
    calib_bins: int = 10
    lens_docs: int = 32  # corpus documents (first 64 tokens) for the logit-lens agreement curve
    models: list[str] = field(default_factory=lambda: ["pretrain", "sft", "dpo", "ppo", "rlaif"])
    # calibration's models: pretrain | sft | dpo | ppo (the align stage's) | rlaif (the cai stage's)


# how the report names each model of `Config.models`
MODEL_LABELS = {"pretrain": "pretrained", "sft": "SFT", "dpo": "DPO", "ppo": "PPO (RLHF)", "ppo_kl0": "PPO, no KL",
                "grpo": "GRPO", "rlaif": "RLAIF (CAI)"}


@dataclass
class Outputs:
    world_map_r2: dict[str, float]  # best layer's held-out R^2: real and shuffled
    probe_accuracy: dict[str, dict[str, float]]  # attribute -> {real, control} at the best layer
    lie_detector: dict[str, float]  # probe vs asked accuracy
    icl_read_ratio: list[float]  # per layer: answer->label words / answer->other tokens (per token)
    ece: dict[str, float]  # model -> ECE
    accuracy: dict[str, float]  # model -> multiple-choice accuracy
    cpu_seconds: float


def run(ctx: StageContext, cfg: Config, report: StageReport, *, world: world.Outputs, pretrain: pretrain.Outputs,
        sft: sft.Outputs, align: align.Outputs, cai: cai.Outputs) -> Outputs:
    from genforge.checkpoint import load_checkpoint
    from genforge.world.facts import build_world
    from genforge.world.generate import SIZES

    t0 = time.process_time()
    size = SIZES.get(ctx.size, SIZES["tiny"])
    w = build_world(ctx.seed, size["people"], size["towns"], size["objects"])
    base, tok, _ = load_checkpoint(pretrain.checkpoint)
    base.eval()
    chat, chat_tok, _ = load_checkpoint(sft.checkpoint)
    chat.eval()
    timings: dict[str, float] = {}

    def timed(name, fn, *a):
        s = time.process_time()
        out = fn(*a)
        timings[name] = time.process_time() - s
        return out

    timed("attention", _attention_lesson, ctx, report, base, tok, w)
    timed("logit lens", _lens_lesson, ctx, report, base, tok, world.dir, cfg)
    probe_acc = timed("probes", _probe_lessons, ctx, report, base, tok, w, cfg)
    map_r2 = timed("world map", _map_lesson, ctx, report, base, tok, w, cfg)
    read_ratio = timed("icl anchors", _icl_lesson, ctx, report, base, tok, cfg)
    lie = timed("lie detector", _lie_lesson, ctx, report, chat, chat_tok, w, cfg)
    paths = {"pretrain": pretrain.checkpoint, "sft": sft.checkpoint, "dpo": align.dpo, "ppo": align.ppo,
             "rlaif": cai.rlaif}
    ece, acc = timed("calibration", _calibration_lesson, ctx, report, paths, w, cfg)
    cpu = time.process_time() - t0
    report.row("CPU time", round(cpu, 1), note="seconds of process CPU time: " +
               ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    return Outputs(world_map_r2=map_r2, probe_accuracy=probe_acc, lie_detector=lie, icl_read_ratio=read_ratio,
                   ece=ece, accuracy=acc, cpu_seconds=cpu)


# ---------------------------------------------------------------- attention and the logit lens
def _attention_lesson(ctx: StageContext, report: StageReport, model, tok, w) -> None:
    from genforge.interp.attention import attention_weights, check_reconstruction, heatmap

    p = w.people[0]
    text = f"{p.name} lives in {p.town}. {p.pronoun.capitalize()} works as a {p.job}."
    ids = torch.tensor([tok.encode(text, add_bos=True)])
    err = check_reconstruction(model, ids)
    report.row("attention weights reproduce the layer (max |o_proj(weights @ V) - output|)", f"{err:.1e}",
               note="weights recomputed from each attention module's inputs by a forward pre-hook")
    ws = attention_weights(model, ids)[:, 0]  # (L, H, T, T)
    tokens = [tok.decode([int(i)]) for i in ids[0]]
    heatmap(ctx.path("plots", "interp_attention.png"), ws, tokens, f"Attention, pretrained model: {text!r}")
    report.plot("plots/interp_attention.png", "Attention weights per layer (heads averaged), pretrained model")


def _lens_lesson(ctx: StageContext, report: StageReport, model, tok, world_dir: str, cfg: Config) -> None:
    from genforge.eval.stats import bootstrap_diff, bootstrap_mean
    from genforge.interp.logit_lens import agreement_by_layer, logit_lens, top_tokens
    from genforge.io import read_jsonl

    docs = [d["text"] for _, d in read_jsonl(f"{world_dir}/corpus.jsonl")][-cfg.lens_docs:]  # the corpus tail
    seqs = [tok.encode(d, add_bos=True)[:64] for d in docs]
    seqs = [s for s in seqs if len(s) == 64]
    if not seqs:
        return
    ids = torch.tensor(seqs)
    same, nxt = agreement_by_layer(model, ids)  # (L+1, B, T-1)
    per_doc = nxt.float().mean(-1).numpy()  # (L+1, B)
    L = per_doc.shape[0]
    line_plot(ctx.path("plots", "interp_logit_lens.png"),
              {"top-1 = actual next token": (list(range(L)), per_doc.mean(1).tolist()),
               "top-1 = final layer's top-1": (list(range(L)), same.float().mean((1, 2)).tolist())},
              "Logit lens, pretrained model", "layer (0 = embeddings)", "share of positions")
    report.plot("plots/interp_logit_lens.png", "Logit lens: how often each layer's decoded residual already "
                "predicts the next token")
    report.lesson("logit lens: the last layer predicts the next token better than the middle layer",
                  (f"next-token accuracy, layer {L - 1}", bootstrap_mean(per_doc[-1])),
                  (f"layer {L // 2}", bootstrap_mean(per_doc[L // 2])),
                  effect=bootstrap_diff(per_doc[-1], per_doc[L // 2], paired=True), target=0.0,
                  note=f"{len(seqs)} corpus documents, first 64 tokens; the lens decodes every layer through the "
                       "final norm and head (checked against nnsight on the HF-loaded checkpoint in the tests)")
    first = ids[:1, :12]
    lens = logit_lens(model, first)
    rows = ["| layer | " + " | ".join(tok.decode([int(t)]).replace("|", "/").replace("\n", "\\n")
                                      for t in first[0, 1:12]) + " |", "|---" * 12 + "|"]
    for layer in range(L):
        tops = [top_tokens(lens, tok, pos)[layer][0].replace("|", "/").replace("\n", "\\n") for pos in range(11)]
        rows.append(f"| {layer} | " + " | ".join(f"`{t}`" for t in tops) + " |")
    report.note("Logit lens on a document's opening (header: the actual next tokens; cells: each layer's top-1 "
                "guess for it):\n\n" + "\n".join(rows))


# ---------------------------------------------------------------- probes and the world map
def _probe_cfg(cfg: Config, l2: float):
    from genforge.interp.probes import ProbeConfig, _probe_train_defaults

    tc = _probe_train_defaults()
    tc.max_steps = cfg.probe_steps
    return ProbeConfig(train=tc, l2=l2)


def _probe_lessons(ctx: StageContext, report: StageReport, model, tok, w, cfg: Config) -> dict:
    from genforge.eval.stats import bootstrap_diff, bootstrap_proportion
    from genforge.interp.probes import cross_validated
    from genforge.interp.worldmap import entity_features

    people = w.people[:cfg.probe_people]
    # the full name's last token (the surname): a first-name token would let the probe read the token's identity
    # (first names repeat across people) instead of what the model carries to the end of the name
    feats = entity_features(model, tok, [p.name for p in people],
                            contexts=("{}", "A letter from {}", "I met {}", "Everyone knows {}"))
    folds = max(2, cfg.probe_folds)
    attrs = {"pronoun (she/he)": [p.pronoun for p in people], "occupation": [p.job for p in people],
             "town": [p.town for p in people]}
    out, series = {}, {}
    pc = _probe_cfg(cfg, cfg.probe_l2)
    knows = {attr: f"; does the model know it? '{tmpl}' ranks the right one of {n} first for "
                   f"{acc} of {len(people[:60])} people (chance {1 / n:.3f}): a fact the model does not hold "
                   "cannot be read off its states"
             for attr, tmpl, (acc, n) in (("occupation", "<name> works as a <job>", _fact_recall(
                 model, tok, people[:60], "{} works as a", [p.job for p in people])),
                                        ("town", "<name> lives in <town>", _fact_recall(
                 model, tok, people[:60], "{} lives in", [p.town for p in people])))}
    for attr, values in attrs.items():
        classes = sorted(set(values))
        y = torch.tensor([classes.index(v) for v in values])
        res = cross_validated(feats, y, folds, classes=len(classes), cfg=pc, seed=ctx.seed)
        best = max(res, key=lambda r: r.train_real - r.train_control)  # chosen on training data only
        series[f"{attr}: probe"] = ([r.layer for r in res], [float(np.mean(r.real)) for r in res])
        series[f"{attr}: control"] = ([r.layer for r in res], [float(np.mean(r.control)) for r in res])
        majority = max(np.mean(y.numpy() == c) for c in range(len(classes)))
        report.lesson(f"probes: {attr} is linearly readable from a person's name (held-out people, above the "
                      "shuffled-label control)",
                      (f"probe accuracy, layer {best.layer}", bootstrap_proportion(best.real)),
                      ("control (shuffled labels)", bootstrap_proportion(best.control)),
                      effect=bootstrap_diff(best.real, best.control, paired=True), target=0.0,
                      note=f"{len(people)} people, {folds}-fold cross-validated (each predicted once by a probe that "
                           f"never saw them), {len(classes)} classes (majority class {majority:.2f}); layer chosen by "
                           f"train accuracy minus control's; train accuracy {best.train_real:.2f} vs control "
                           f"{best.train_control:.2f} (capacity)" + knows.get(attr, ""))
        out[attr] = {"real": float(np.mean(best.real)), "control": float(np.mean(best.control)), "layer": best.layer}
    line_plot(ctx.path("plots", "interp_probes.png"), series, "Linear probes on name representations (held-out)",
              "layer (0 = embeddings)", "accuracy")
    report.plot("plots/interp_probes.png", "Probe accuracy by layer vs the shuffled-label control")
    return out


def _fact_recall(model, tok, people, template: str, values: list[str]):
    """(top-1 accuracy interval, options): how often the person's true value is the likeliest continuation of
    template.format(name) among all values of the attribute."""
    from genforge.eval.lm import GenforgeLM
    from genforge.eval.stats import bootstrap_proportion

    opts = sorted(set(values))
    gold = {p.name: v for p, v in zip(people, values)}
    ll = GenforgeLM(model, tok, batch_size=64).loglikelihood([(template.format(p.name), f" {o}") for p in people
                                                              for o in opts])
    hits = [float(opts[int(np.argmax([ll[i * len(opts) + j][0] for j in range(len(opts))]))] == gold[p.name])
            for i, p in enumerate(people)]
    return bootstrap_proportion(hits), len(opts)


def _map_lesson(ctx: StageContext, report: StageReport, model, tok, w, cfg: Config) -> dict:
    from genforge.eval.stats import bootstrap_diff, bootstrap_mean
    from genforge.interp.probes import cross_validated, train_probe
    from genforge.interp.worldmap import entity_features, map_plot, pca_2d
    from genforge.world.geo import town_coordinates

    coords = town_coordinates(w)
    names = [t.name for t in w.towns]
    y = torch.tensor([coords[n] for n in names])
    feats = entity_features(model, tok, names)
    res = cross_validated(feats, y, cfg.map_folds, cfg=_probe_cfg(cfg, cfg.map_l2), seed=ctx.seed,
                          shuffles=cfg.map_shuffles)
    # why (or why not): does the model even know which region each town is in? (the corpus states it)
    from genforge.eval.lm import GenforgeLM
    from genforge.eval.stats import bootstrap_proportion

    regions = sorted({t.region for t in w.towns})
    ll = GenforgeLM(model, tok).loglikelihood([(f"{t.name} is a town in", f" {r}") for t in w.towns for r in regions])
    knows = [float(regions[int(np.argmax([ll[i * len(regions) + j][0] for j in range(len(regions))]))] == t.region)
             for i, t in enumerate(w.towns)]
    known = bootstrap_proportion(knows)
    best = max(res, key=lambda r: r.train_real - r.train_control)
    report.lesson("world map: town coordinates are linearly recoverable from town-name representations (held-out "
                  "R^2 above shuffled coordinates)",
                  (f"R^2, held-out towns, layer {best.layer}", bootstrap_mean(best.real)),
                  (f"shuffled coordinates (mean of {cfg.map_shuffles})", bootstrap_mean(best.control)),
                  effect=bootstrap_diff(best.real, best.control, paired=True), target=0.0,
                  effect_name="R^2 difference",
                  note=f"{len(names)} towns, {cfg.map_folds}-fold cross-validated ridge probes on the Trainer; the "
                       "corpus states no coordinate, only travel distances and directions (world/geo.py); "
                       f"layer chosen on training folds; the model picks each town's region (stated in the corpus) "
                       f"for {known} of towns (chance {1 / len(regions):.3f}): the map needs towns it has memorised")
    report.row("the model knows each town's region ('<town> is a town in ...', likeliest of the regions)",
               str(known), baseline=round(1 / len(regions), 3),
               note="regions cluster on the planted map, so without this knowledge no probe can draw the map")
    if known.low <= 1 / len(regions):
        report.note(f"World map: this model picks each town's region no better than chance ({known}), so its town "
                    "names carry no location for a probe to find; the map lesson needs a model that has memorised "
                    "the towns (run size=small, or pretrain longer).")
    for r in res:
        report.row(f"world map R^2, layer {r.layer}", round(float(np.mean(r.real)), 3),
                   baseline=round(float(np.mean(r.control)), 3), note="held-out towns (baseline: shuffled)")
    # the picture: PCA of the best layer and the probe's out-of-fold predictions
    x = feats[best.layer]
    preds = torch.zeros_like(y)
    order = list(range(len(names)))
    random.Random(ctx.seed).shuffle(order)
    for k in range(cfg.map_folds):
        test = order[k::cfg.map_folds]
        train = [i for i in order if i not in set(test)]
        p = train_probe(x[train], y[train], _probe_cfg(cfg, cfg.map_l2), seed=ctx.seed + k)
        with torch.no_grad():
            preds[test] = p(x[test])
    map_plot(ctx.path("plots", "interp_world_map.png"), names, y, pca_2d(x), preds,
             [t.region for t in w.towns], f"Town names, pretrained model, layer {best.layer}")
    report.plot("plots/interp_world_map.png", "The world map: planted coordinates, the PCA of town-name "
                "representations, and a linear probe's held-out predictions")
    return {"real": float(np.mean(best.real)), "shuffled": float(np.mean(best.control)), "layer": best.layer}


# ---------------------------------------------------------------- ICL anchors
def _icl_lesson(ctx: StageContext, report: StageReport, model, tok, cfg: Config) -> list[float]:
    from genforge.eval.stats import bootstrap_diff, bootstrap_mean, bootstrap_proportion
    from genforge.interp.icl_anchors import anchor_scores, pronoun_prompts
    from genforge.world import names

    prompts = pronoun_prompts(tok, names.FEMALE_NAMES, names.MALE_NAMES, cfg.icl_prompts, cfg.icl_shots, ctx.seed)
    s = anchor_scores(model, tok, prompts)
    rl, ro = np.array(s.read_label), np.array(s.read_other)  # (N, L)
    go, gx = np.array(s.gather_own), np.array(s.gather_other)
    L = rl.shape[1]
    layers = list(range(L))
    line_plot(ctx.path("plots", "interp_icl_anchors.png"),
              {"answer -> label words": (layers, rl.mean(0).tolist()), "answer -> other tokens": (layers,
                                                                                                  ro.mean(0).tolist()),
               "label word -> own demonstration": (layers, go.mean(0).tolist()),
               "label word -> earlier text": (layers, np.nanmean(gx, 0).tolist())},
              "ICL label anchors (attention per token, heads averaged)", "layer", "attention per token")
    report.plot("plots/interp_icl_anchors.png", f"Label words as anchors on {len(prompts)} {cfg.icl_shots}-shot "
                "name -> pronoun prompts (pretrained model)")
    report.row("few-shot accuracy (name -> pronoun)", str(bootstrap_proportion(s.correct)),
               note="the gold pronoun is likelier than the other at the answer position")
    report.lesson("ICL anchors: in the last layer the answer position attends more (per token) to the label words "
                  "than to the other tokens",
                  (f"answer -> label words, layer {L - 1}", bootstrap_mean(rl[:, -1])),
                  ("answer -> other tokens", bootstrap_mean(ro[:, -1])),
                  effect=bootstrap_diff(rl[:, -1], ro[:, -1], paired=True), target=0.0,
                  note="attention mass per token, BOS (the attention sink) left out of both groups; Wang et al. 2023; "
                       f"the model's few-shot accuracy is {bootstrap_proportion(s.correct)} (chance 0.5): the anchor "
                       "read-out is the mechanism of a model that does the task in context, which this one does not")
    ok = ~np.isnan(gx[:, 0])
    report.lesson("ICL anchors: in the first layer label words gather their own demonstration (per token, more than "
                  "earlier text)",
                  ("label word -> own demonstration, layer 0", bootstrap_mean(go[ok, 0])),
                  ("label word -> earlier text", bootstrap_mean(gx[ok, 0])),
                  effect=bootstrap_diff(go[ok, 0], gx[ok, 0], paired=True), target=0.0,
                  note="the shallow-layer half of the anchor story; recency also favours the own demonstration")
    return (rl.mean(0) / np.maximum(ro.mean(0), 1e-12)).tolist()


# ---------------------------------------------------------------- lie detector
def _sum_statements(n: int, seed: int):
    from genforge.interp.lie_detector import Statement

    rng = random.Random(f"lie-sums-{seed}")
    out = []
    for k in range(n // 2):
        a, b = rng.randint(0, 30), rng.randint(0, 30)
        wrong = a + b + rng.choice([-3, -2, -1, 1, 2, 3])
        out += [Statement(f"{a} plus {b} is {a + b}.", True, f"sum{k}", "sum"),
                Statement(f"{a} plus {b} is {max(0, wrong) if wrong != a + b else a + b + 1}.", False, f"sum{k}",
                          "sum")]
    return out


def _lie_lesson(ctx: StageContext, report: StageReport, model, tok, w, cfg: Config) -> dict:
    from genforge.eval.stats import bootstrap_diff, bootstrap_proportion
    from genforge.interp.hooks import features_at
    from genforge.interp.lie_detector import asked_confidence, auc, statements
    from genforge.interp.probes import probe_layers

    people = [p.name for p in w.people[:cfg.lie_people]]
    items = statements(w, people, ctx.seed) + _sum_statements(cfg.lie_sums, ctx.seed)
    # split by person / sum so that test statements are about entities the probe never saw
    subjects = sorted({s.person for s in items})
    random.Random(ctx.seed).shuffle(subjects)
    test_subjects = set(subjects[int(0.75 * len(subjects)):])
    train_idx = [i for i, s in enumerate(items) if s.person not in test_subjects]
    test_idx = [i for i, s in enumerate(items) if s.person in test_subjects]
    seqs = [tok.encode(s.text, add_bos=True) for s in items]
    feats = features_at(model, seqs, [-1] * len(seqs), pad_id=tok.pad_id or 0)
    y = torch.tensor([int(s.true) for s in items])
    res = probe_layers(feats, y, train_idx, test_idx, classes=2, cfg=_probe_cfg(cfg, cfg.probe_l2), seed=ctx.seed)
    best = max(res, key=lambda r: r.train_real - r.train_control)
    conf = asked_confidence(model, tok, [items[i] for i in test_idx])
    asked = [float((c > 0.5) == items[i].true) for c, i in zip(conf, test_idx)]
    # Is there a belief to detect? The model's own likelihood of each true statement vs its false twin (items come
    # in (true, false) pairs): at 0.5 the model does not hold the facts, and no reader of its states can beat chance.
    from genforge.eval.lm import GenforgeLM

    ll = GenforgeLM(model, tok, batch_size=64).loglikelihood_rolling([s.text for s in items])
    prefers = {fam: bootstrap_proportion([float(ll[k][0] > ll[k + 1][0]) for k in range(0, len(items) - 1, 2)
                                          if items[k].attribute == fam and items[k].true and not items[k + 1].true])
               for fam in ("job", "town", "sum")}
    report.row("the model's likelihood prefers the true statement of each true/false pair",
               ", ".join(f"{f} {v}" for f, v in prefers.items()), baseline=0.5,
               note="all statements, same model; this is the knowledge a lie detector would read")
    report.lesson("lie detector: a probe on hidden states tells true from false statements (held-out subjects) "
                  "better than asking the model",
                  (f"probe accuracy, layer {best.layer}", bootstrap_proportion(best.real)),
                  ("asked: P(yes) > P(no)", bootstrap_proportion(asked)),
                  effect=bootstrap_diff(best.real, asked, paired=True), target=0.0,
                  note=f"SFT chat model; {len(test_idx)} test statements (jobs, towns, sums; half true); shuffled "
                       f"control {np.mean(best.control):.2f}; layer chosen by train accuracy minus control's; the "
                       "model's own likelihood prefers the true twin in " + ", ".join(f"{f} {v}" for f, v in
                                                                                        prefers.items()) + " of pairs")
    by_fam = {}
    for fam in ("job", "town", "sum"):
        ix = [k for k, i in enumerate(test_idx) if items[i].attribute == fam]
        if ix:
            by_fam[fam] = (np.mean([best.real[k] for k in ix]), np.mean([asked[k] for k in ix]))
    report.row("lie detector by family (probe / asked accuracy)",
               ", ".join(f"{f} {a:.2f} / {b:.2f}" for f, (a, b) in by_fam.items()))
    report.row("lie detector probe accuracy by layer (held-out; control)",
               ", ".join(f"{r.layer}: {np.mean(r.real):.2f} ({np.mean(r.control):.2f})" for r in res),
               note="layer 0 is the final token's embedding, the same for every statement: chance by construction")
    report.row("asked confidence ROC AUC", round(auc(conf, [items[i].true for i in test_idx]), 3), baseline=0.5)
    return {"probe": float(np.mean(best.real)), "asked": float(np.mean(asked)),
            "control": float(np.mean(best.control)), "layer": best.layer}


# ---------------------------------------------------------------- calibration
def _calibration_lesson(ctx: StageContext, report: StageReport, paths: dict[str, str], w,
                        cfg: Config) -> tuple[dict, dict]:
    from genforge.checkpoint import load_checkpoint
    from genforge.eval.stats import bootstrap_proportion
    from genforge.interp.calibration import bootstrap_ece, confidence_correct, letter_probs, mc_items, reliability_plot

    items = mc_items(w, cfg.mc_items, ctx.seed)
    gold = [it["gold"] for it in items]
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    all_probs: dict[str, np.ndarray] = {}
    for key in cfg.models:
        label = MODEL_LABELS.get(key, key)
        if key not in paths:
            report.row(f"calibration: {label}", "skipped", note=f"no checkpoint '{key}' in this run")
            continue
        model, tok, _ = load_checkpoint(paths[key])
        model.eval()
        probs = letter_probs(model, tok, items, chat=key != "pretrain")
        curves[label] = confidence_correct(probs, gold)
        all_probs[label] = probs
    reliability_plot(ctx.path("plots", "interp_calibration.png"), curves,
                     f"Reliability of multiple-choice answers ({len(items)} questions)", cfg.calib_bins)
    report.plot("plots/interp_calibration.png", "Reliability diagrams: accuracy vs confidence per model")
    ece, acc = {}, {}
    for label, (conf, correct) in curves.items():
        e = bootstrap_ece(conf, correct, bins=cfg.calib_bins, seed=ctx.seed)
        ece[label], acc[label] = e.estimate, float(correct.mean())
        report.row(f"ECE, {label}", str(e), note=f"accuracy {bootstrap_proportion(correct)}, mean confidence "
                                          f"{conf.mean():.2f} (chance 0.25)")
    aligned = next((k for k in ("PPO (RLHF)", "DPO") if k in curves), None)
    if "SFT" in curves and aligned:
        d = bootstrap_ece(*curves[aligned], other=curves["SFT"], bins=cfg.calib_bins, seed=ctx.seed)
        report.lesson(f"calibration: alignment ({aligned}) raises the expected calibration error over SFT (as the "
                      "GPT-4 report found for RLHF)",
                      (f"ECE, {aligned}", ece[aligned]), ("ECE, SFT", ece["SFT"]), effect=d, target=0.0,
                      effect_name="ECE difference",
                      note=f"{len(items)} four-option questions about the world; confidence = the chosen letter's "
                           "probability after 'The answer is'; paired bootstrap over questions; alignment moved the "
                           "letter probabilities by a mean |change| of "
                           f"{np.abs(all_probs[aligned] - all_probs['SFT']).mean():.3f} (accuracy "
                           f"{acc[aligned]:.2f} vs {acc['SFT']:.2f}, chance 0.25): an alignment that barely changes "
                           "the answers cannot change their calibration")
    if "pretrained" in curves:
        e = bootstrap_ece(*curves["pretrained"], bins=cfg.calib_bins, seed=ctx.seed)
        report.lesson("calibration: the pretrained model is calibrated (ECE < 0.10)",
                      ("ECE, pretrained", e), None, effect=e, target=0.10, direction="below", effect_name="ECE",
                      note=f"reliability diagram above; accuracy {acc['pretrained']:.2f} (chance 0.25) at mean "
                           f"confidence {curves['pretrained'][0].mean():.2f}: a model at chance is calibrated only if "
                           "its letter distribution is flat, so this measures its letter prior; the letter format is "
                           "the better-calibrated reading here (option likelihoods after 'Question: ... Answer:', the "
                           "corpus's own Q&A form, are peakier still)")
    return ece, acc
