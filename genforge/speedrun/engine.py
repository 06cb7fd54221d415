"""Stage "engine": what the KV cache, batching, speculative decoding, watermarking and compression each buy,
measured on this run's own models.

The SFT model is the target; a one-layer draft is distilled from it (and the same student trained without a
teacher is the distillation baseline); the watermark and compression are measured on the pretrained model,
whose open-ended text has the entropy a watermark needs.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from genforge.infer.sampling import SamplingParams
from genforge.report import StageReport
from genforge.speedrun import pretrain, sft, tokenizer, world
from genforge.speedrun.stage import StageContext

if TYPE_CHECKING:
    import torch.nn as nn

NAME = "engine"
TITLE = "Inference engine: KV cache, batching, speculative decoding, watermark, compression"
WATERMARK_PROMPTS = ["The town of", "Once upon a time", "In the morning", "The old", "Mara", "A river runs",
                     "The market", "Every year"]


@dataclass
class Config:
    prompts: int = 8  # chat prompts (every 7th test row) for decode speed and speculative decoding
    new_tokens: int = 64  # tokens generated per decode measurement
    distill_steps: int = 200  # steps of each one-layer student (KD, no teacher, draft)
    distill_seq_len: int = 128
    speculative_k: int = 4  # draft tokens per target forward
    watermark_prompts: int = 8  # open-ended prompts (of WATERMARK_PROMPTS)
    watermark_tokens: int = 200  # tokens generated per watermarked sample
    compress_seq_len: int = 128  # val sequence length for the compression perplexities
    compress_batches: int = 8  # val batches for the compression perplexities


@dataclass
class Outputs:
    draft: str  # the distilled one-layer draft checkpoint
    speculative_speedup: float
    kv_cache_speedup: float
    watermark_detection: float


def _tokens_per_s(fn, n_tokens: int) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return n_tokens / max(time.perf_counter() - t0, 1e-9), out


def recompute_greedy(model: nn.Module, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding without a KV cache: every token re-reads the whole sequence (the baseline)."""
    import torch

    with torch.no_grad():
        ids = torch.tensor([prompt])
        for _ in range(n):
            nxt = model(ids)[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
        return ids[0, len(prompt):].tolist()


def run(ctx: StageContext, cfg: Config, report: StageReport, *, world: world.Outputs, tokenizer: tokenizer.Outputs,
        pretrain: pretrain.Outputs, sft: sft.Outputs) -> Outputs:
    """KV cache and batching, distillation, speculative decoding, watermark, compression."""
    from genforge.checkpoint import load_checkpoint
    from genforge.infer.engine import Engine
    from genforge.io import read_jsonl
    from genforge.text import render_prompt

    target, tok, _ = load_checkpoint(sft.checkpoint)
    pre, pre_tok, _ = load_checkpoint(pretrain.checkpoint)
    rows = [r for _, r in read_jsonl(f"{world.tasks_dir}/test.jsonl")][::7][:cfg.prompts]
    prompts = [render_prompt(tok, r["prompt"], chat=True) for r in rows]
    eng = Engine(target)
    kv_speedup = kv_cache_and_batching(report, cfg, target, eng, prompts)
    draft_agreement = distillation(ctx, cfg, report, pre, target, tok, pretrain.checkpoint, tokenizer.shards,
                                   world.tasks_dir)
    speedup = speculative(ctx, cfg, report, target, eng, prompts, [tok.eos_id, tok.end_id], draft_agreement)
    wm_prompts = [render_prompt(pre_tok, s) for s in WATERMARK_PROMPTS[:cfg.watermark_prompts]]
    detection = watermark(ctx, cfg, report, pre, wm_prompts)
    compression(ctx, cfg, report, pre, pre_tok, tokenizer.shards, wm_prompts[0])
    return Outputs(draft=str(ctx.path("engine", "draft", "checkpoint")), speculative_speedup=speedup,
                   kv_cache_speedup=kv_speedup, watermark_detection=detection)


def kv_cache_and_batching(report: StageReport, cfg: Config, target: nn.Module, eng, prompts: list[list[int]]) -> float:
    """Decode speed with the KV cache vs recomputing, and batch 8 vs batch 1; returns the cache speedup."""
    n_new, p0 = cfg.new_tokens, prompts[0]
    rate_recompute, ref = _tokens_per_s(lambda: recompute_greedy(target, p0, n_new), n_new)
    rate_cache, out = _tokens_per_s(lambda: eng.generate([p0], SamplingParams(max_new_tokens=n_new))[0], n_new)
    report.row("decode, KV cache (batch 1)", rate_cache, baseline=rate_recompute,
               note=f"tokens/s; baseline = recomputing the whole sequence per token; "
                    f"{rate_cache / rate_recompute:.1f}x; same tokens: {out == ref}")
    batch = (prompts * 8)[:8]
    rate_b8, _ = _tokens_per_s(lambda: eng.generate(batch, SamplingParams(max_new_tokens=n_new)), 8 * n_new)
    report.row("decode, batch 8 (left-padded prompts)", rate_b8, baseline=rate_cache,
               note=f"total tokens/s; baseline = batch 1; {rate_b8 / rate_cache:.1f}x")
    return rate_cache / rate_recompute


def distillation(ctx: StageContext, cfg: Config, report: StageReport, pre: nn.Module, target: nn.Module, tok,
                 pre_ckpt: str, shards: str, tasks_dir: str) -> float:
    """Hinton et al. 2015: a one-layer student of the pretrained model with and without the teacher's soft targets
    (on the pretraining shards, the teacher's own distribution); then the speculative draft, distilled from the
    target on chat turns, where it will be used. Returns the draft's agreement with the target."""
    from genforge.data.sft_data import SFTData, encode_conversations, read_conversations
    from genforge.train.distill import DistillConfig, run_distill

    steps = cfg.distill_steps

    def distill(name: str, teacher, alpha: float, data=None, eval_data=None) -> dict:
        dcfg = DistillConfig(teacher=pre_ckpt, shards=shards, out_dir=str(ctx.path("engine", name)),
                             seq_len=cfg.distill_seq_len, alpha=alpha)
        dcfg.model.depth = 1
        dcfg.train.max_steps, dcfg.train.seed, dcfg.train.progress = steps, ctx.seed, ctx.progress
        dcfg.train.warmup_steps, dcfg.train.resume = max(2, steps // 10), False
        return run_distill(dcfg, data=data, eval_data=eval_data, teacher=teacher, tokenizer=tok)

    d, nt = distill("student_kd", pre, 0.8), distill("student_no_teacher", pre, 0.0)
    report.row("student (1 layer): val loss, distilled", d.get("val_loss"), baseline=nt.get("val_loss"),
               note=f"KD from the pretrained model (T=2, alpha 0.8) vs the same student trained on the data alone "
                    f"(baseline), {steps} steps each; {d['student_params']:,} vs {d['teacher_params']:,} params")
    report.row("student: top-1 agreement with the teacher", d.get("agreement"), baseline=nt.get("agreement"),
               note="share of positions where the student's argmax equals the teacher's")
    convs = read_conversations(f"{tasks_dir}/train.jsonl")
    enc = encode_conversations(tok, convs, target.config.max_seq_len)
    sft_data = SFTData(enc.examples, 16, tok.pad_id, ctx.seed, group_by_length=True)
    draft_res = distill("draft", target, 0.8, data=sft_data, eval_data=sft_data.eval_batches()[:4])
    return draft_res.get("agreement", 0)


def speculative(ctx: StageContext, cfg: Config, report: StageReport, target: nn.Module, eng, prompts: list[list[int]],
                stop: list[int], agreement: float) -> float:
    """Greedy speculative decoding with the distilled draft vs plain decoding; returns the wall-clock speedup."""
    from genforge.checkpoint import load_checkpoint
    from genforge.infer.speculative import speculative_generate

    draft, _, _ = load_checkpoint(ctx.path("engine", "draft", "checkpoint"))
    k, n_new = cfg.speculative_k, cfg.new_tokens
    t_plain = t_spec = 0.0
    same, acc, per_call = True, [], []
    for p in prompts:
        t0 = time.perf_counter()
        plain = eng.generate([p], SamplingParams(max_new_tokens=n_new), stop_ids=stop)[0]
        t_plain += time.perf_counter() - t0
        t0 = time.perf_counter()
        spec, stats = speculative_generate(target, draft, p, SamplingParams(max_new_tokens=n_new), k=k, stop_ids=stop)
        t_spec += time.perf_counter() - t0
        same &= spec == plain
        acc.append(stats["acceptance_rate"])
        per_call.append(stats["tokens_per_target_call"])
    speedup = t_plain / max(t_spec, 1e-9)
    report.row("speculative decoding: wall-clock speedup (greedy)", speedup, baseline=1.0,
               note=f"k={k}, 1-layer draft distilled from the target on chat data (agreement "
                    f"{agreement:.2f}), {len(prompts)} prompts; baseline = our plain decode")
    report.row("speculative decoding: acceptance rate", sum(acc) / len(acc),
               note=f"{sum(per_call) / len(per_call):.2f} tokens per target forward; "
                    f"output identical to greedy: {same}")
    report.note("Speculative decoding cuts target forwards by the tokens-per-forward factor above, but on a "
                "~1M-parameter CPU model a forward costs mostly fixed per-call overhead, so a 1-layer draft is "
                "not much cheaper than the 4-layer target and the optimised plain engine wins on wall clock. "
                "`python benchmarks/speculative.py` (a depth-8 target) shows the regime where it pays.")
    return speedup


def watermark(ctx: StageContext, cfg: Config, report: StageReport, pre: nn.Module,
              wm_prompts: list[list[int]]) -> float:
    """Green-list watermark on the pretrained model (open-ended text has the entropy it needs) at two strengths;
    returns the detection rate at the longest length for the stronger one."""
    from genforge.infer.watermark import WatermarkConfig
    from genforge.infer.watermark_eval import watermark_report
    from genforge.report import line_plot

    wm_len = cfg.watermark_tokens
    curves, det = {}, {}
    for delta in (2.0, 4.0):
        wm = watermark_report(pre, wm_prompts, WatermarkConfig(gamma=0.25, delta=delta), max_new_tokens=wm_len,
                              lengths=tuple(n for n in (16, 32, 64, 128, 200) if n <= wm_len), seed=ctx.seed)
        det = wm["detection_rate_by_length"]
        last = max(det, key=int)
        curves[f"delta {delta:g}"] = ([int(n) for n in det], list(det.values()))
        report.row(f"watermark (delta {delta:g}): detection rate at {last} tokens", det[last],
                   baseline=wm["false_positive_rate"], note="z > 4, gamma 0.25; baseline = false-positive rate on "
                   "unwatermarked text; mean z by length " +
                   ", ".join(f"{n}: {z:.1f}" for n, z in wm["mean_z_by_length"].items()))
        report.row(f"watermark (delta {delta:g}): detection after random token substitution",
                   ", ".join(f"{int(float(r) * 100)}%: {v:.2f}" for r, v in wm["robustness"].items()))
        report.row(f"watermark (delta {delta:g}): quality cost (perplexity under the unwatermarked model)",
                   wm["ppl_watermarked"], baseline=wm["ppl_unwatermarked"], note="baseline = unwatermarked samples")
    report.note("The tiny world's prose is low-entropy (val perplexity near 2), and a green-list watermark can only "
                "steer tokens where the model is unsure (Kirchenbauer et al. 2023, sec. 4): a stronger bias (delta) "
                "buys detection at a cost in perplexity.")
    line_plot(ctx.path("plots", "watermark_detection.png"), curves,
              "Watermark detection vs number of tokens", "tokens scored", "share flagged (z > 4)")
    report.plot("plots/watermark_detection.png", "Watermark detection rate vs number of generated tokens")
    return det[max(det, key=int)]


def compression(ctx: StageContext, cfg: Config, report: StageReport, pre: nn.Module, pre_tok, shards: str,
                p_short: list[int]) -> None:
    """Size, speed and quality of the pretrained model under int8, bf16 and magnitude pruning."""
    import torch

    from genforge.data.shards import TokenShards
    from genforge.infer.compress import model_size_bytes, prune_magnitude, quantize_int8, sparsity, to_bf16
    from genforge.infer.engine import Engine
    from genforge.report import line_plot
    from genforge.train.pretrain import make_eval_fn, token_byte_lengths

    val = TokenShards(shards, "val", cfg.compress_seq_len, 8)
    ppl = make_eval_fn(val, cfg.compress_batches, token_byte_lengths(pre_tok))
    n_new = cfg.new_tokens
    with torch.no_grad():
        base_ppl = ppl(pre)["val_ppl"]

    def speed(m) -> float:
        return _tokens_per_s(lambda: Engine(m).generate([p_short], SamplingParams(max_new_tokens=n_new)), n_new)[0]

    base_speed, base_size = speed(pre), model_size_bytes(pre)
    report.row("fp32 model: size / val perplexity / decode", f"{base_size / 1e6:.2f} MB / {base_ppl:.2f} / "
               f"{base_speed:,.0f} tok/s")
    for name, fn in (("int8 weights (per-channel)", quantize_int8), ("bf16 weights", to_bf16)):
        m = fn(copy.deepcopy(pre))
        with torch.no_grad():
            q_ppl = ppl(m)["val_ppl"]
        report.row(f"{name}: val perplexity", q_ppl, baseline=base_ppl,
                   note=f"size {model_size_bytes(m) / 1e6:.2f} MB vs {base_size / 1e6:.2f}; decode {speed(m):,.0f} "
                        f"vs {base_speed:,.0f} tok/s (unfused CPU kernels: memory, not speed, is the win here)")
    curves = {}
    for structured in (None, "neurons"):
        xs, ys = [], []
        for s in (0.0, 0.25, 0.5, 0.75):
            m = prune_magnitude(copy.deepcopy(pre), s, structured) if s else pre
            with torch.no_grad():
                ys.append(ppl(m)["val_ppl"])
            xs.append(sparsity(m) if structured is None else s)
        curves["unstructured" if structured is None else "MLP neurons"] = (xs, ys)
        report.row(f"pruning ({'unstructured' if structured is None else 'structured, MLP neurons'}): val perplexity "
                   "at 25 / 50 / 75 %", " / ".join(f"{y:.1f}" for y in ys[1:]), baseline=base_ppl,
                   note="magnitude pruning, no retraining; baseline = dense")
    line_plot(ctx.path("plots", "pruning.png"), curves, "Sparsity vs quality (no retraining)", "sparsity",
              "val perplexity", logy=True)
    report.plot("plots/pruning.png", "Magnitude pruning: sparsity vs validation perplexity")
