"""Stage "image": how the image families compare, what fewer sampling steps cost, and whether text steers a
diffusion model, measured on scikit-learn's digits (8x8) and the world's shapes (16x16 RGB with captions).

1. Families on digits: DDPM (small U-Net eps-predictor, T=200, cosine schedule), GAN (MLP, EMA generator), VAE and
   RealNVP (early stopping on test bits/dim), each trained on the shared Trainer; FID on features of a classifier
   trained here, beside real-vs-real (train images against the test images: the floor) and uniform noise (the
   ceiling). Intervals are percentile bootstraps over the generated images. Not comparable with CIFAR-10 / Inception
   FIDs.
2. Samplers: the same DDPM sampled ancestrally with all T steps and with DDIM at a few step counts from the same
   starting noise: FID against sampling time.
3. Text to image: a DDPM on shapes conditioned on captions through a small text encoder trained with it (10 % of
   captions dropped, so one network is also unconditional), sampled for held-out captions at several
   classifier-free guidance scales (0 = unconditional); a held-out attribute classifier, trained on other
   pictures, checks whether each image has the requested colour and shape.
4. AR vs mask-predict vs diffusion: a VQ-VAE turns digits into 4x4 tokens; an AR prior (the project's GPT, one
   token per forward) and MaskGIT (the project's encoder, K parallel steps) model them; FID against CPU time per
   image beside the DDPM and DDIM of part 1.
5. Video: next-frame prediction on the world's moving-shape clips with factorised (space, then time) vs full 3-D
   attention: counted FLOPs, CPU time per forward, future-frame error and centroid drift against the true motion.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from genforge.report import StageReport, fmt
from genforge.speedrun.stage import StageContext

if TYPE_CHECKING:
    import numpy as np

NAME = "image"
TITLE = "Image generation: families, samplers, text to image"
FAMILY_TITLES = {"ddpm": "DDPM (ancestral sampling)", "gan": "GAN (MLP, EMA generator)", "vae": "VAE (MLP)",
                 "flow": "RealNVP flow (best test bits/dim)"}


def _ci(iv: Any) -> str:
    """'12.3 [10.1, 14.8]': a report cell for an interval."""
    return f"{fmt(iv.estimate)} [{fmt(iv.low)}, {fmt(iv.high)}]"


@dataclass
class Config:
    families: list[str] = field(default_factory=lambda: ["ddpm", "gan", "vae", "flow"])
    ddpm_steps: int = 1000  # optimizer steps per family on digits (see `genforge image train` for each)
    ddpm_hidden: int = 256  # MLP width, or U-Net base channels * 16
    ddpm_batch: int = 64
    # measured on digits (tiny, ~20 s CPU each): an MLP eps-predictor plateaus at FID ~65-75 whatever the steps
    # (1500 -> 3000), lr (3e-3), width (512) or schedule; a small U-Net reaches 27 in 1000 steps, and with the cosine
    # schedule (Nichol & Dhariwal 2021) DDIM with few steps stays close (31 vs 44 with the linear one)
    ddpm_arch: str = "unet"
    ddpm_schedule: str = "squaredcos_cap_v2"
    gan_steps: int = 3000
    vae_steps: int = 3000
    vae_beta: float = 0.3  # KL weight (beta-VAE). Measured on digits at tiny (3000 steps, one seed, FID against the
    # test digits): prior samples score 57 at beta 1, 49 with latent 8, 39 at 0.5, 29 at 0.3, 28 at 0.2
    flow_steps: int = 1000
    flow_eval_every: int = 100
    timesteps: int = 200  # T of both diffusion models
    n_samples: int = 400  # generated digits per family (FID uses min(this, the 359 test digits))
    classifier_steps: int = 600  # the FID feature classifier (digits) and the attribute classifier (shapes)
    ddim_steps: list[int] = field(default_factory=lambda: [10, 25, 50])
    fid_target_ratio: float = 0.25  # claim: a family's FID is below this share of the noise baseline's
    text_steps: int = 3000  # text-conditioned DDPM on shapes
    text_arch: str = "unet"  # 'unet' or 'mlp' (an MLP narrower than the image cannot pass x_t through: noise)
    text_hidden: int = 256  # MLP width, or U-Net base channels * 16
    text_image_size: int = 8  # shapes are drawn at this size (8 keeps tiny in budget but blurs circle vs square;
    # 16x16 U-Net steps cost ~4x more: `small`)
    text_batch: int = 64
    n_shapes: int = 3000  # training pictures for the text-conditioned model
    text_prompts: int = 200  # held-out captions, one image each per guidance scale
    text_sample_steps: int = 50  # DDIM steps for the guidance sweep
    guidance_scales: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 3.0, 5.0])
    guided_scale: float = 3.0  # the scale the guidance claim is about (fixed in advance, not picked after)
    text_gain_target: float = 0.2  # claim: conditioning raises the colour+shape hit rate by more than this
    colour_gain_target: float = 0.1  # claim: conditioning raises the colour hit rate by more than this
    bootstrap: int = 200  # resamples of each FID interval
    # AR vs mask-predict vs diffusion over VQ tokens of digits
    vq_steps: int = 300  # VQ-VAE (8x8 digits -> 4x4 tokens)
    vq_hidden: int = 32
    vq_codebook: int = 64
    token_steps: int = 400  # each token prior (AR, MaskGIT)
    token_depth: int = 2
    token_width: int = 64
    maskgit_steps: list[int] = field(default_factory=lambda: [2, 4, 8])  # K decoding steps sampled
    maskgit_main: int = 4  # the K the speed claim is about (fixed in advance)
    latency_images: int = 20  # images drawn one at a time for the per-image latency
    token_speedup_target: float = 3.0  # claim: mask-predict >= this x faster per image than AR...
    token_fid_ratio: float = 1.5  # ... at a FID no worse than this x AR's
    # video: next-frame prediction with factorised vs full 3-D attention
    video_steps: int = 400
    video_batch: int = 16
    video_patch: int = 4  # 16x16 frames in 4x4 patches: 16 tokens a frame, 128 a clip (2: 512 tokens, `small`)
    video_width: int = 32
    video_clips: int = 2000
    video_test_clips: int = 200
    video_drift_margin: float = 0.5  # claim: factorised's centroid drift is within this many pixels of full's


@dataclass
class Outputs:
    fid: dict[str, float]  # family -> FID on digits
    fid_real_vs_real: float
    fid_noise: float
    sampler_fid: dict[str, float]  # "ddpm-200", "ddim-25", ... -> FID
    faithfulness: dict[str, float]  # guidance scale -> share of images with the requested colour and shape
    checkpoints: dict[str, str]  # family (and "text") -> checkpoint folder


def run(ctx: StageContext, cfg: Config, report: StageReport) -> Outputs:
    """Families on digits, DDPM vs DDIM, text-conditioned shapes with a guidance sweep."""
    import torch

    from genforge.image import metrics
    from genforge.image.run import DataOptions, load_data

    torch.manual_seed(ctx.seed)
    digits = load_data(DataOptions(dataset="digits", seed=ctx.seed))
    t0 = time.process_time()
    clf = metrics.train_classifier(digits.train.images, digits.train.labels, steps=cfg.classifier_steps,
                                   seed=ctx.seed)
    acc = metrics.accuracy(clf, digits.test.images, digits.test.labels)["digit"]
    n = len(digits.test)
    f_real = metrics.extract_features(clf, digits.test.images)
    f_train = metrics.extract_features(clf, digits.train.images[:n])
    noise = torch.rand((n, *digits.shape), generator=torch.Generator().manual_seed(ctx.seed + 1))
    rr = metrics.bootstrap_fid(f_real, f_train, n_resamples=cfg.bootstrap, seed=ctx.seed)
    fn = metrics.bootstrap_fid(f_real, metrics.extract_features(clf, noise), n_resamples=cfg.bootstrap, seed=ctx.seed)
    report.note(f"FID is the Fréchet distance (pytorch-fid's implementation) between features of a small CNN trained "
                f"in this run on the digits training split (test accuracy {acc:.3f}, {cfg.classifier_steps} steps, "
                f"{time.process_time() - t0:.0f} s CPU), over the {n} test digits. It compares runs here only, "
                "never with CIFAR-10 / Inception FIDs. Intervals: 95 % percentile bootstrap over the generated images.")
    report.row("FID real vs real (train digits vs test digits)", _ci(rr), note="the floor a perfect generator reaches")
    report.row("FID uniform noise vs test digits", _ci(fn), note="the ceiling")

    fids, ckpts, models, times = _families(ctx, cfg, report, digits, clf, f_real, rr, fn)
    sampler_fid = _samplers(ctx, cfg, report, models.get("ddpm"), clf, f_real, digits, times)
    faith, text_ckpt = _text_to_image(ctx, cfg, report)
    ckpts.update(_token_models(ctx, cfg, report, digits, clf, f_real, models.get("ddpm")))
    ckpts.update(_video(ctx, cfg, report))
    ckpts["text"] = text_ckpt
    return Outputs(fid={k: v.estimate for k, v in fids.items()}, fid_real_vs_real=rr.estimate,
                   fid_noise=fn.estimate, sampler_fid=sampler_fid, faithfulness=faith, checkpoints=ckpts)


def _train_cfg(ctx: StageContext, cfg: Config, family: str, out: str) -> Any:
    from genforge.image.diffusion import DiffusionConfig
    from genforge.image.flow import FlowConfig
    from genforge.image.run import ImageTrainConfig
    from genforge.image.vae import VAEConfig

    steps = {"ddpm": cfg.ddpm_steps, "gan": cfg.gan_steps, "vae": cfg.vae_steps, "flow": cfg.flow_steps}[family]
    return ImageTrainConfig(family=family, out_dir=out, dataset="digits", seed=ctx.seed, steps=steps,
                            batch_size=cfg.ddpm_batch if family == "ddpm" else 64, ckpt_every=max(100, steps // 2),
                            eval_every=cfg.flow_eval_every, resume=False, threads=ctx.threads,
                            progress=ctx.progress, ddpm=DiffusionConfig(hidden=cfg.ddpm_hidden,
                                                                        num_train_timesteps=cfg.timesteps,
                                                                        arch=cfg.ddpm_arch,
                                                                        beta_schedule=cfg.ddpm_schedule),
                            flow=FlowConfig(), vae=VAEConfig(beta=cfg.vae_beta))


def _families(ctx: StageContext, cfg: Config, report: StageReport, digits: Any, clf: Any, f_real: np.ndarray,
              rr: Any, fn: Any) -> tuple[dict, dict, dict, dict]:
    """Train each family, sample, FID with its interval; a lesson per family; one grid of every family."""
    import torch

    from genforge.image import metrics
    from genforge.image.run import generate, train
    from genforge.world.images import save_grid

    fids, ckpts, models, times = {}, {}, {}, {}
    grids = []
    for fam in cfg.families:
        out = ctx.path("image", fam, ".keep").parent
        tcfg = _train_cfg(ctx, cfg, fam, str(out))
        t0, c0 = time.perf_counter(), time.process_time()
        model, summary = train(tcfg, digits)
        train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
        t1, c1 = time.perf_counter(), time.process_time()
        samples = generate(fam, model, cfg.n_samples, tcfg, ctx.seed + 1)
        sample_s, sample_cpu = time.perf_counter() - t1, time.process_time() - c1
        f_fake = metrics.extract_features(clf, samples[: len(f_real)])
        fid = metrics.bootstrap_fid(f_real, f_fake, n_resamples=cfg.bootstrap, seed=ctx.seed)
        pr = metrics.precision_recall(f_real, f_fake)
        fids[fam], ckpts[fam], models[fam] = fid, str(out / "checkpoint"), model
        times[fam] = (sample_s, fid.estimate)
        extra = ""
        if fam == "flow":
            train_bpd = model.bpd(digits.train.images[: len(f_real)], "best")
            extra = (f"; early stopping kept step {int(model.best_step)} of {summary['step']} (test "
                     f"{float(model.best_bpd):.3f} bits/dim, train {train_bpd:.3f})")
        report.row(f"{FAMILY_TITLES[fam]}: FID", _ci(fid), rr.estimate,
                   note=f"{summary['step']} steps, train {train_s:.0f} s wall / {train_cpu:.0f} s CPU, sampling "
                        f"{cfg.n_samples} in {sample_s:.1f} s (CPU {sample_cpu:.1f} s); precision "
                        f"{pr['precision']:.2f}, recall {pr['recall']:.2f}; baseline = real vs real{extra}")
        ratio = (fid.estimate / fn.estimate, fid.low / fn.estimate, fid.high / fn.estimate, fid.n)
        report.lesson(f"{FAMILY_TITLES[fam]} learns digits: FID below {cfg.fid_target_ratio:g} x the noise baseline's",
                      (f"FID, {fam}", fid), ("FID, uniform noise", fn), effect=ratio, target=cfg.fid_target_ratio,
                      direction="below", effect_name="FID / noise FID",
                      note=f"real vs real {rr.estimate:.3g}; {summary['step']} steps in {train_cpu:.0f} s CPU")
        grids.append(samples[:16])
    if grids:
        path = ctx.path("plots", "image_families.png")
        save_grid(torch.cat(grids), path, nrow=16)
        report.plot("plots/image_families.png", "Digits from each family, one row each: "
                    + ", ".join(FAMILY_TITLES[f] for f in cfg.families))
    return fids, ckpts, models, times


def _samplers(ctx: StageContext, cfg: Config, report: StageReport, model: Any, clf: Any, f_real: np.ndarray,
              digits: Any, times: dict) -> dict[str, float]:
    """The DDPM sampled with all T ancestral steps vs DDIM with fewer: FID against sampling time."""
    if model is None:
        return {}
    from genforge.image import metrics
    from genforge.report import line_plot
    from genforge.world.images import save_grid

    n = len(f_real)
    out: dict[str, float] = {}
    xs, ys = [], []
    rows = {}

    def run_one(sampler: str, steps: int) -> tuple[Any, float, Any]:
        c0 = time.process_time()
        s = model.sample(n, None, 1.0, sampler, steps, seed=ctx.seed + 1)
        return s, time.process_time() - c0, metrics.extract_features(clf, s)

    base, base_s, f_base = run_one("ddpm", cfg.timesteps)
    fid_base = metrics.bootstrap_fid(f_real, f_base, n_resamples=cfg.bootstrap, seed=ctx.seed)
    out[f"ddpm-{cfg.timesteps}"] = fid_base.estimate
    xs.append(base_s)
    ys.append(fid_base.estimate)
    rows[f"DDPM {cfg.timesteps}"] = base[:16]
    for k in cfg.ddim_steps:
        s, sec, f = run_one("ddim", k)
        diff = metrics.bootstrap_fid(f_real, f, f_base, n_resamples=cfg.bootstrap, seed=ctx.seed)
        fid = metrics.frechet_distance(f_real, f)
        out[f"ddim-{k}"] = fid
        xs.append(sec)
        ys.append(fid)
        rows[f"DDIM {k}"] = s[:16]
        report.row(f"DDIM {k} steps: FID", fid, fid_base.estimate,
                   note=f"sampling {n} in {sec:.1f} s CPU vs {base_s:.1f} s for DDPM {cfg.timesteps} "
                        f"({base_s / max(sec, 1e-9):.1f}x faster); FID difference {diff}; same model, same x_T")
        if k == sorted(cfg.ddim_steps)[len(cfg.ddim_steps) // 2]:
            report.lesson(f"DDIM with {k} steps samples >= 4x faster than {cfg.timesteps}-step DDPM",
                          (f"CPU s, DDIM {k}", round(sec, 2)), (f"CPU s, DDPM {cfg.timesteps}", round(base_s, 2)),
                          effect=base_s / max(sec, 1e-9), target=4.0, effect_name="speedup (time, no CI)",
                          note=f"FID {fid:.3g} vs {fid_base.estimate:.3g}; difference {diff}")
    import torch

    save_grid(torch.cat(list(rows.values())), ctx.path("plots", "image_samplers.png"), nrow=16)
    report.plot("plots/image_samplers.png", "The same DDPM, same starting noise, one row per sampler: "
                + ", ".join(rows))
    series = {f"DDPM, {cfg.timesteps} ancestral steps": (xs[:1], ys[:1]),
              f"same model, DDIM {'/'.join(map(str, cfg.ddim_steps))} steps": (xs[1:], ys[1:])}
    for fam, (sec, fid) in times.items():
        if fam != "ddpm":
            series[fam] = ([sec], [fid])
    line_plot(ctx.path("plots", "image_quality_vs_time.png"), series, "Sample quality against sampling time",
              f"seconds to sample {n} digits", "FID (lower is better)")
    report.plot("plots/image_quality_vs_time.png", "FID against sampling time: DDPM with all steps and DDIM with "
                f"{', '.join(map(str, cfg.ddim_steps))} steps; the other families (one forward pass) as points")
    return out


def _text_to_image(ctx: StageContext, cfg: Config, report: StageReport) -> tuple[dict[str, float], str]:
    """Text-conditioned DDPM on shapes: colour+shape faithfulness for held-out captions across guidance scales."""
    import torch

    from genforge.eval.stats import bootstrap_diff, bootstrap_proportion
    from genforge.image import metrics
    from genforge.image.diffusion import DiffusionConfig
    from genforge.image.run import DataSplit, ImageTrainConfig, train
    from genforge.image.text import CaptionTokenizer
    from genforge.report import line_plot
    from genforge.world.images import make_shapes, save_grid

    size = cfg.text_image_size
    data = DataSplit(make_shapes(cfg.n_shapes, ctx.seed, size=size), make_shapes(cfg.n_shapes // 5, ctx.seed + 10_000,
                                                                               size=size), 256)
    out = ctx.path("image", "text", ".keep").parent
    tcfg = ImageTrainConfig(family="ddpm", out_dir=str(out), dataset="shapes", n_shapes=cfg.n_shapes, seed=ctx.seed,
                            steps=cfg.text_steps, batch_size=cfg.text_batch, ckpt_every=max(100, cfg.text_steps // 2),
                            resume=False, threads=ctx.threads, progress=ctx.progress,
                            ddpm=DiffusionConfig(cond="text", arch=cfg.text_arch, hidden=cfg.text_hidden,
                                                 num_train_timesteps=cfg.timesteps))
    c0 = time.process_time()
    model, summary = train(tcfg, data)
    train_cpu = time.process_time() - c0
    # the judge: an attribute classifier trained on pictures the generator never saw (another seed)
    held = make_shapes(cfg.n_shapes, ctx.seed + 20_000, size=size)
    judge = metrics.train_classifier(held.images, held.labels, steps=cfg.classifier_steps, seed=ctx.seed + 2)
    judge_acc = metrics.accuracy(judge, data.test.images, data.test.labels)
    prompts = data.test.subset(list(range(min(cfg.text_prompts, len(data.test)))))
    ids = CaptionTokenizer()(prompts.captions)
    want = {k: prompts.labels[k] for k in ("colour", "shape")}
    hits: dict[float, np.ndarray] = {}
    colour_hits: dict[float, np.ndarray] = {}
    faith: dict[str, float] = {}
    grid_rows = []
    for scale in cfg.guidance_scales:
        c1 = time.process_time()
        imgs = model.sample(len(ids), ids, scale, "ddim", cfg.text_sample_steps, seed=ctx.seed + 3)
        sec = time.process_time() - c1
        with torch.no_grad():
            pred = judge(imgs)
        per = {k: (pred[k].argmax(-1) == v) for k, v in want.items()}
        both = (per["colour"] & per["shape"]).float().numpy()
        hits[scale] = both
        colour_hits[scale] = per["colour"].float().numpy()
        faith[f"{scale:g}"] = float(both.mean())
        report.row(f"text to image, guidance {scale:g}: requested colour and shape", _ci(bootstrap_proportion(both)),
                   note=f"colour {per['colour'].float().mean():.2f}, shape {per['shape'].float().mean():.2f}; "
                        f"{len(ids)} held-out captions, DDIM {cfg.text_sample_steps} steps, {sec:.1f} s CPU"
                        + ("; scale 0 = unconditional" if scale == 0 else ""))
        grid_rows.append(imgs[:12])
    arch = "a small U-Net" if cfg.text_arch == "unet" else "an MLP"
    report.note(f"Text to image: a DDPM ({arch} eps-predictor, {summary['step']} steps, {train_cpu:.0f} s CPU) on "
                f"{cfg.n_shapes} captioned {size}x{size} shapes, conditioned through a bag-of-words text encoder "
                f"trained with it. The judge is an attribute classifier trained on {cfg.n_shapes} other pictures "
                f"(accuracy on real test pictures: colour {judge_acc['colour']:.3f}, shape {judge_acc['shape']:.3f}, "
                f"size {judge_acc['size']:.3f}, position {judge_acc['position']:.3f}); chance for colour and shape "
                "together is 1/12.")
    if 0.0 in hits and 1.0 in hits:
        report.lesson("Text conditioning draws the requested colour more often than unconditional sampling "
                      f"(+{cfg.colour_gain_target:g})",
                      ("colour hit rate, conditional (scale 1)", bootstrap_proportion(colour_hits[1.0])),
                      ("unconditional (scale 0)", bootstrap_proportion(colour_hits[0.0])),
                      effect=bootstrap_diff(colour_hits[1.0], colour_hits[0.0], paired=True),
                      target=cfg.colour_gain_target, note="paired over held-out captions; chance is 1/4")
        report.lesson("Text conditioning draws the requested colour and shape far more often than unconditional "
                      f"sampling (+{cfg.text_gain_target:g})",
                      ("colour+shape hit rate, conditional (scale 1)", bootstrap_proportion(hits[1.0])),
                      ("unconditional (scale 0)", bootstrap_proportion(hits[0.0])),
                      effect=bootstrap_diff(hits[1.0], hits[0.0], paired=True), target=cfg.text_gain_target,
                      note="paired over held-out captions")
    if 1.0 in hits and cfg.guided_scale in hits:
        report.lesson(f"Classifier-free guidance (scale {cfg.guided_scale:g}) is more faithful than plain "
                      "conditioning (scale 1)",
                      (f"hit rate, scale {cfg.guided_scale:g}", bootstrap_proportion(hits[cfg.guided_scale])),
                      ("hit rate, scale 1", bootstrap_proportion(hits[1.0])),
                      effect=bootstrap_diff(hits[cfg.guided_scale], hits[1.0], paired=True), target=0.0,
                      note="paired over held-out captions; the scale was fixed before the run")
    save_grid(torch.cat(grid_rows), ctx.path("plots", "image_text_guidance.png"), nrow=12)
    report.plot("plots/image_text_guidance.png", "One row per guidance scale (" + ", ".join(
        f"{s:g}" for s in cfg.guidance_scales) + "), the same 12 captions per column: "
        + "; ".join(prompts.captions[:4]) + "; ...")
    scales = list(hits)
    line_plot(ctx.path("plots", "image_guidance_sweep.png"),
              {"colour and shape right": (scales, [float(hits[s].mean()) for s in scales])},
              "Classifier-free guidance sweep", "guidance scale (0 = unconditional, 1 = conditional)",
              "share of images")
    report.plot("plots/image_guidance_sweep.png", "Faithfulness to the caption against the guidance scale")
    return faith, str(out / "checkpoint")


# ------------------------------------------------------------------------------------------------------------------
# AR vs mask-predict vs diffusion over VQ tokens; video with factorised vs full attention (issue 17, second wave).
def _fid_ratio(f_real: np.ndarray, a: np.ndarray, b: np.ndarray, n_resamples: int, seed: int) -> tuple:
    """FID(a) / FID(b) against the same real features, with a percentile bootstrap over both generated sets
    (resampled independently: the two sets share no starting noise)."""
    import numpy as np

    from genforge.image import metrics

    rng = np.random.default_rng(seed)
    est = metrics.frechet_distance(f_real, a) / metrics.frechet_distance(f_real, b)
    boots = [metrics.frechet_distance(f_real, a[rng.integers(0, len(a), len(a))])
             / metrics.frechet_distance(f_real, b[rng.integers(0, len(b), len(b))]) for _ in range(n_resamples)]
    return est, float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975)), len(a)


def _token_models(ctx: StageContext, cfg: Config, report: StageReport, digits: Any, clf: Any, f_real: np.ndarray,
                  ddpm: Any) -> dict[str, str]:
    """VQ-VAE on digits, then an AR prior (one token per forward) and MaskGIT (K forwards) over its tokens, against
    the DDPM (T forwards) and DDIM: FID against CPU seconds per image, one image at a time and in a batch."""
    import statistics

    import torch

    from genforge.image import metrics
    from genforge.image.ar import ARConfig
    from genforge.image.maskgit import MaskGITConfig
    from genforge.image.run import ImageTrainConfig, train
    from genforge.image.vq import VQConfig
    from genforge.report import line_plot
    from genforge.world.images import save_grid

    n = len(f_real)
    base = {"dataset": "digits", "seed": ctx.seed, "batch_size": 64, "resume": False, "threads": ctx.threads,
            "progress": ctx.progress}
    c0 = time.process_time()
    vq_dir = ctx.path("image", "vq", ".keep").parent
    vq, _ = train(ImageTrainConfig(family="vq", out_dir=str(vq_dir), steps=cfg.vq_steps, ckpt_every=cfg.vq_steps,
                                   vq=VQConfig(hidden=cfg.vq_hidden, codebook_size=cfg.vq_codebook), **base), digits)
    vq_cpu = time.process_time() - c0
    use = vq.usage(digits.test.images)
    f_rec = metrics.extract_features(clf, vq.reconstruct(digits.test.images))
    fid_rec = metrics.frechet_distance(f_real, f_rec)
    report.row("VQ-VAE on digits: reconstruction FID (the floor for token models)", fid_rec,
               note=f"{cfg.vq_steps} steps, {vq_cpu:.0f} s CPU; {vq.config.n_tokens} tokens per image, codebook "
                    f"{cfg.vq_codebook}: test MSE {use['recon_mse']:.4f}, perplexity {use['perplexity']:.1f}, "
                    f"{use['codes_used']:.0%} of codes used")
    ckpts = {"vq": str(vq_dir / "checkpoint")}
    models, train_cpu = {}, {}
    for fam in ("ar", "maskgit"):
        out = ctx.path("image", fam, ".keep").parent
        extra = {"ar": ARConfig(depth=cfg.token_depth, width=cfg.token_width),
                 "maskgit": MaskGITConfig(depth=cfg.token_depth, width=cfg.token_width)}[fam]
        c1 = time.process_time()
        models[fam], _ = train(ImageTrainConfig(family=fam, out_dir=str(out), vq_checkpoint=ckpts["vq"],
                                                steps=cfg.token_steps, ckpt_every=cfg.token_steps,
                                                **{fam: extra}, **base), digits)
        train_cpu[fam] = time.process_time() - c1
        ckpts[fam] = str(out / "checkpoint")

    # samplers: name -> (batch sampler of n images, one-image sampler taking a seed, forwards per image)
    labels = torch.arange(n) % 10
    samplers: dict[str, tuple] = {
        "AR (16 tokens, 1 per forward)": (lambda: models["ar"].sample(n, ctx.seed + 1, labels=labels),
                                          lambda s: models["ar"].sample(1, s, labels=torch.tensor([s % 10]))),
    }
    for k in cfg.maskgit_steps:
        samplers[f"MaskGIT ({k} steps)"] = (
            lambda k=k: models["maskgit"].sample(n, ctx.seed + 1, labels=labels, steps=k),
            lambda s, k=k: models["maskgit"].sample(1, s, labels=torch.tensor([s % 10]), steps=k))
    if ddpm is not None:
        T = cfg.timesteps
        samplers[f"DDPM ({T} steps)"] = (lambda: ddpm.sample(n, None, 1.0, "ddpm", T, seed=ctx.seed + 1),
                                         lambda s: ddpm.sample(1, None, 1.0, "ddpm", T, seed=s))
        k = sorted(cfg.ddim_steps)[len(cfg.ddim_steps) // 2]
        samplers[f"DDIM ({k} steps)"] = (lambda: ddpm.sample(n, None, 1.0, "ddim", k, seed=ctx.seed + 1),
                                         lambda s: ddpm.sample(1, None, 1.0, "ddim", k, seed=s))
    feats, batch_s, single_s, grids = {}, {}, {}, []
    for name, (many, one) in samplers.items():
        c1 = time.process_time()
        imgs = many()
        batch_s[name] = (time.process_time() - c1) / n
        one(0)  # warm-up (first-call allocations)
        per = []
        for s in range(cfg.latency_images):
            c1 = time.process_time()
            one(s)
            per.append(time.process_time() - c1)
        single_s[name] = statistics.median(per)  # the median: robust to other processes' bursts on a shared CPU
        feats[name] = metrics.extract_features(clf, imgs)
        grids.append(imgs[:16])
    fids = {}
    for name in samplers:
        fids[name] = metrics.bootstrap_fid(f_real, feats[name], n_resamples=cfg.bootstrap, seed=ctx.seed)
        trained = next((f"; prior {cfg.token_steps} steps, {train_cpu[f]:.0f} s CPU" for f, key in
                        (("ar", "AR"), ("maskgit", "MaskGIT")) if name.startswith(key)), "")
        report.row(f"{name}: FID", _ci(fids[name]), fid_rec if name[:2] in ("AR", "Ma") else None,
                   note=f"{single_s[name] * 1000:.1f} ms CPU per image one at a time (median of "
                        f"{cfg.latency_images}), {batch_s[name] * 1000:.2f} ms "
                        f"per image in a batch of {n}{trained}"
                        + ("; baseline = VQ reconstructions" if name[:2] in ("AR", "Ma") else ""))
    ar_name = next(iter(samplers))
    mg_name = f"MaskGIT ({cfg.maskgit_main} steps)"
    if mg_name in samplers:
        speed = single_s[ar_name] / max(single_s[mg_name], 1e-12)
        ratio = _fid_ratio(f_real, feats[mg_name], feats[ar_name], cfg.bootstrap, ctx.seed)
        report.lesson(f"Mask-predict ({cfg.maskgit_main} steps) draws an image >= {cfg.token_speedup_target:g}x "
                      "faster than AR (one image at a time)",
                      (f"ms CPU per image, {mg_name}", round(single_s[mg_name] * 1000, 2)),
                      (f"ms CPU per image, {ar_name}", round(single_s[ar_name] * 1000, 2)), effect=speed,
                      target=cfg.token_speedup_target, effect_name="speedup (time, no CI)",
                      note=f"{cfg.maskgit_main} forwards of 17 tokens vs 16 one-token forwards with a KV cache; in a "
                           f"batch of {n} AR is {batch_s[mg_name] / max(batch_s[ar_name], 1e-12):.1f}x faster per "
                           "image (it computes each token once; mask-predict recomputes all tokens each step)")
        report.lesson(f"...at a FID no worse than {cfg.token_fid_ratio:g}x AR's",
                      (f"FID, {mg_name}", fids[mg_name]), (f"FID, {ar_name}", fids[ar_name]), effect=ratio,
                      target=cfg.token_fid_ratio, direction="below", effect_name="FID ratio",
                      note=f"VQ reconstructions {fid_rec:.3g}; both priors {cfg.token_steps} steps on the same tokens")
    save_grid(torch.cat(grids), ctx.path("plots", "image_tokens.png"), nrow=16)
    report.plot("plots/image_tokens.png", "One row per sampler: " + ", ".join(samplers)
                + " (AR and MaskGIT draw digits 0..9 in turn; the DDPM is unconditional)")
    series = {name: ([single_s[name] * 1000], [fids[name].estimate]) for name in samplers}
    mg = [f"MaskGIT ({k} steps)" for k in cfg.maskgit_steps]
    series = {k: v for k, v in series.items() if k not in mg}
    series["MaskGIT, " + "/".join(map(str, cfg.maskgit_steps)) + " steps"] = (
        [single_s[k] * 1000 for k in mg], [fids[k].estimate for k in mg])
    line_plot(ctx.path("plots", "image_tokens_quality_vs_time.png"), series,
              "AR vs mask-predict vs diffusion on digits", "ms CPU per image (one image at a time)",
              "FID (lower is better)")
    report.plot("plots/image_tokens_quality_vs_time.png", "FID against CPU time per image, one image at a time")
    return ckpts


def _video(ctx: StageContext, cfg: Config, report: StageReport) -> dict[str, str]:
    """Next-frame video models with factorised vs full 3-D attention on the world's clips: FLOPs, CPU time per
    forward, future-frame error and centroid drift against the true motion, beside a copy-the-last-frame baseline."""
    import torch

    from genforge.eval.stats import bootstrap_diff, bootstrap_mean
    from genforge.image.run import train_video
    from genforge.image.video import VideoConfig, centroids, flops
    from genforge.world.images import make_clips, save_grid

    clips, _, _ = make_clips(cfg.video_clips, ctx.seed + 30_000)
    test, _, lab = make_clips(cfg.video_test_clips, ctx.seed + 40_000)
    k = 2  # context frames
    true = torch.stack([lab["rows"], lab["cols"]], -1).float()[:, k:]  # (N, T-k, 2)
    truth = test[:, k:]

    def scores(pred: torch.Tensor) -> tuple:
        err = (pred - truth).pow(2).flatten(1).mean(1).numpy()  # per clip
        drift = (centroids(pred) - true).norm(dim=-1).mean(1).numpy()
        return err, drift

    copy_err, copy_drift = scores(test[:, k - 1:k].expand_as(truth))
    ckpts, res, grid = {}, {}, [truth[0], test[0, k - 1:k].expand_as(truth[0])]
    for att in ("factorised", "full"):
        vcfg = VideoConfig(attention=att, patch=cfg.video_patch, width=cfg.video_width, context=k)
        out = ctx.path("image", f"video_{att}", ".keep").parent
        c0 = time.process_time()
        model, _ = train_video(vcfg, clips, out, steps=cfg.video_steps, batch_size=cfg.video_batch, seed=ctx.seed,
                               threads=ctx.threads, progress=ctx.progress)
        train_cpu = time.process_time() - c0
        with torch.no_grad():
            model(test[:32])  # warm-up
            c0 = time.process_time()
            for _ in range(3):
                model(test[:32])
            fwd = (time.process_time() - c0) / 3 / 32
            pred = model.rollout(test[:, :k])[:, k:]
        err, drift = scores(pred)
        res[att] = (err, drift, fwd, flops(vcfg))
        ckpts[f"video_{att}"] = str(out / "checkpoint")
        grid.append(pred[0])
        report.row(f"video, {att} attention: future-frame MSE / centroid drift (px)",
                   f"{err.mean():.4f} / {drift.mean():.2f}", f"{copy_err.mean():.4f} / {copy_drift.mean():.2f}",
                   note=f"{flops(vcfg) / 1e6:.1f} MFLOPs and {fwd * 1000:.2f} ms CPU per 8-frame forward, "
                        f"{vcfg.frames * vcfg.patches} tokens; {cfg.video_steps} steps in {train_cpu:.0f} s CPU; "
                        f"{len(test)} test clips rolled out from {k} frames; baseline = copy the last given frame")
    for patch in (4, 2, 1):  # the counted cost at finer patches (no training: FLOPs are a property of the shapes)
        f_fact, f_full = (flops(VideoConfig(attention=a, patch=patch, width=cfg.video_width, context=k))
                          for a in ("factorised", "full"))
        tokens = VideoConfig(patch=patch).patches * VideoConfig().frames
        report.row(f"video attention cost at {patch}x{patch} patches ({tokens} tokens): MFLOPs factorised / full",
                   f"{f_fact / 1e6:.1f} / {f_full / 1e6:.1f}", note=f"full / factorised = {f_full / f_fact:.2f}x; "
                   "counted matrix-multiply FLOPs per 8-frame forward (`image.video.flops`)")
    (ef, df, tf, ff), (eu, du, tu, fu) = res["factorised"], res["full"]
    report.lesson("Factorised (space, then time) attention costs less than full 3-D attention per forward",
                  ("MFLOPs, factorised", round(ff / 1e6, 1)), ("MFLOPs, full 3-D", round(fu / 1e6, 1)),
                  effect=fu / ff, target=1.0, effect_name="FLOPs ratio full / factorised (counted)",
                  note=f"measured CPU per clip forward: {tf * 1000:.2f} vs {tu * 1000:.2f} ms "
                       f"({tu / max(tf, 1e-12):.2f}x); {cfg.video_patch}x{cfg.video_patch} patches, width "
                       f"{cfg.video_width}")
    report.lesson(f"...at a centroid drift within {cfg.video_drift_margin:g} px of full attention's",
                  ("drift (px), factorised", bootstrap_mean(df)), ("drift (px), full 3-D", bootstrap_mean(du)),
                  effect=bootstrap_diff(df, du, paired=True), target=cfg.video_drift_margin, direction="below",
                  note=f"paired over {len(test)} test clips; copy-last-frame drift {copy_drift.mean():.2f} px, true "
                       "frames' own centroids are ~0.4 px off the planted centres (triangles)")
    report.lesson("Both video models track the motion better than copying the last frame (factorised)",
                  ("drift (px), factorised", bootstrap_mean(df)), ("drift (px), copy last frame",
                                                                  bootstrap_mean(copy_drift)),
                  effect=bootstrap_diff(df, copy_drift, paired=True), target=0.0, direction="below",
                  note=f"full 3-D: {du.mean():.2f} px; future-frame MSE factorised {ef.mean():.4f}, full "
                       f"{eu.mean():.4f}, copy {copy_err.mean():.4f}")
    save_grid(torch.cat(grid), ctx.path("plots", "image_video.png"), nrow=truth.shape[1])
    report.plot("plots/image_video.png", "One test clip's frames 3-8: truth, copy of frame 2, factorised, full 3-D")
    return ckpts
