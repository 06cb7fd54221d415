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
4. CLIP score: a small CLIP trained here on (picture, caption) pairs; real vs shuffled pairs and zero-shot caption
   retrieval show it works, then it scores the guidance sweep, and a rerun of DDIM's old clipping shows why
   guidance did not help before.
5. Latent diffusion (VAE on images alone -> text-conditioned diffusion in its 16-number latent -> decoder) at
   16x16 against a pixel U-Net at 16x16 given about the same training CPU; sampling cost; its guidance sweep.
   The latent model's VAE also shows the seed's noise editing: "the red direction" added to a latent turns a
   picture red (judged), and a straight line between two latents decodes to a morph.
6. Textual inversion: one new token learned from 5 pictures of a colour+shape pairing the latent model never saw,
   against a random token and the nearest existing word, in every size x position context.
7. Precision/recall (Kynkäänniemi et al. 2019) of every family on digits, beside its FID.
8. AR vs mask-predict vs diffusion: a VQ-VAE turns digits into 4x4 tokens; an AR prior (the project's GPT, one
   token per forward) and MaskGIT (the project's encoder, K parallel steps) model them; FID against CPU time per
   image beside the DDPM and DDIM of part 1.
9. Video: next-frame prediction on the world's moving-shape clips with factorised (space, then time) vs full 3-D
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
    vae_steps: int = 2000
    vae_beta: float = 0.3  # KL weight (beta-VAE). Measured on digits at tiny (3000 steps, one seed, FID against the
    # test digits): prior samples score 57 at beta 1, 49 with latent 8, 39 at 0.5, 29 at 0.3, 28 at 0.2
    flow_steps: int = 1000
    flow_eval_every: int = 100
    timesteps: int = 200  # T of both diffusion models
    n_samples: int = 400  # generated digits per family (FID uses min(this, the 359 test digits))
    classifier_steps: int = 600  # the FID feature classifier (digits) and the attribute classifier (shapes)
    ddim_steps: list[int] = field(default_factory=lambda: [10, 25, 50])
    fid_target_ratio: float = 0.25  # claim: a family's FID is below this share of the noise baseline's
    text_steps: int = 2000  # text-conditioned DDPM on shapes (3000 cost 91 s CPU, over the stage budget)
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
    # CLIP score, latent text-to-image, textual inversion (all at latent_size; ~60 s CPU at tiny)
    judge_steps: int = 1000  # attribute classifier at latent_size (shape accuracy at 16x16: 600 steps 0.79, 1000
    # steps 0.99)
    clip_steps: int = 100  # a small CLIP on (picture, caption) pairs (R@1 ~1.0 after 100 steps at 16x16)
    clip_dim: int = 64
    clip_width: int = 32
    clip_pairs: int = 3000  # training pairs per picture size (latent_size, and text_image_size upsampled)
    clip_test: int = 400  # held-out pairs for real vs shuffled and retrieval
    latent_size: int = 16  # the latent model's pictures (the pixel model above uses text_image_size)
    latent_shapes: int = 3000  # its training pictures (minus the inversion concept's)
    latent_dim: int = 16  # VAE latent: 16 numbers for 16x16x3 = 768 pixels
    latent_vae_steps: int = 1200  # part 1: the VAE on images alone
    latent_steps: int = 1200  # part 2: the latent denoiser
    latent_pixel_steps: int = 320  # a pixel U-Net at latent_size given about the latent model's training CPU
    # (measured: ~53 ms per U-Net step at 16x16 vs ~14 ms per VAE + latent step pair)
    latent_prompts: int = 200  # held-out captions
    inversion_concept: str = "yellow triangle"  # a colour+shape pairing held out of the latent model's training
    inversion_images: int = 5
    inversion_steps: int = 300
    inversion_lr: float = 0.05
    inversion_samples: int = 10  # pictures per size x position context (10 contexts)
    # VAE noise editing: latent + strength * (mean red latent - mean other latent). At strength 1 a picture moves by
    # the gap between the two groups' means only, which leaves many short of "red" (measured at tiny on other draws:
    # judged red 0.41-0.54 at 1, 0.75 at 1.5, 0.88 at 2, 0.94 at 3; shape kept ~0.5 at every strength)
    edit_strength: float = 2.0
    # AR vs mask-predict vs diffusion over VQ tokens of digits
    vq_steps: int = 300  # VQ-VAE (8x8 digits -> 4x4 tokens)
    vq_hidden: int = 32
    vq_codebook: int = 64
    token_steps: int = 300  # each token prior (AR, MaskGIT)
    token_depth: int = 2
    token_width: int = 64
    maskgit_steps: list[int] = field(default_factory=lambda: [2, 4, 8])  # K decoding steps sampled
    maskgit_main: int = 4  # the K the speed claim is about (fixed in advance)
    latency_images: int = 10  # images drawn one at a time for the per-image latency
    token_speedup_target: float = 3.0  # claim: mask-predict >= this x faster per image than AR...
    token_fid_ratio: float = 1.5  # ... at a FID no worse than this x AR's
    # video: next-frame prediction with factorised vs full 3-D attention
    video_steps: int = 300
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
    clip: dict[str, float] = field(default_factory=dict)  # real / shuffled CLIP score, caption R@1
    clip_score: dict[str, float] = field(default_factory=dict)  # guidance scale -> CLIP score (pixel text model)
    latent: dict[str, float] = field(default_factory=dict)  # latent vs pixel: hit rates, CLIP, CPU seconds
    inversion: dict[str, float] = field(default_factory=dict)  # arm -> success rate
    precision_recall: dict[str, dict[str, float]] = field(default_factory=dict)  # family -> precision, recall
    vae_editing: dict[str, float] = field(default_factory=dict)  # share judged red before / after the edit


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
    more = _clip_latent_inversion(ctx, cfg, report, digits=digits, clf=clf, f_real=f_real, models=models, faith=faith,
                                  text_ckpt=text_ckpt)
    return Outputs(fid={k: v.estimate for k, v in fids.items()}, fid_real_vs_real=rr.estimate,
                   fid_noise=fn.estimate, sampler_fid=sampler_fid, faithfulness=faith, checkpoints=ckpts, **more)


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
# CLIP score, latent text-to-image, textual inversion, precision/recall (issue 17, second half)
def _clip_latent_inversion(ctx: StageContext, cfg: Config, report: StageReport, *, digits: Any, clf: Any,
                           f_real: np.ndarray, models: dict, faith: dict, text_ckpt: str) -> dict:
    """CLIP (real vs shuffled, retrieval), the CLIP score of the guidance sweep and why DDIM guidance failed, latent
    diffusion vs pixel diffusion at about equal CPU, textual inversion, and precision/recall of every family."""
    import torch

    from genforge.image import metrics
    from genforge.image.clip import train_clip
    from genforge.image.text import CaptionTokenizer
    from genforge.world.images import make_shapes

    c0 = time.process_time()
    tok = CaptionTokenizer()
    size = cfg.latent_size
    # the judges see pictures no generator saw: another seed than every training set
    held = make_shapes(cfg.n_shapes, ctx.seed + 20_000, size=size)
    judge = metrics.train_classifier(held.images, held.labels, steps=cfg.judge_steps, seed=ctx.seed + 2)
    # CLIP: pictures at the latent size plus pictures drawn at the pixel model's size, upsampled, so one CLIP
    # scores both models' outputs in distribution
    pairs = make_shapes(cfg.clip_pairs, ctx.seed + 30_000, size=size)
    imgs, caps = pairs.images, list(pairs.captions)
    if cfg.text_image_size != size:
        low = make_shapes(cfg.clip_pairs, ctx.seed + 31_000, size=cfg.text_image_size)
        imgs, caps = torch.cat([imgs, _upsample(low.images, size)]), caps + low.captions
    clip, summary = train_clip(imgs, tok(caps), str(ctx.path("image", "clip", ".keep").parent), vocab_size=len(tok),
                               steps=cfg.clip_steps, dim=cfg.clip_dim, width=cfg.clip_width, seed=ctx.seed,
                               threads=ctx.threads, progress=ctx.progress)
    cpu = {"judge and CLIP": time.process_time() - c0}
    out: dict[str, Any] = {"clip": _clip_rows(ctx, cfg, report, clip, tok, judge, cpu["judge and CLIP"])}
    c1 = time.process_time()
    out["clip_score"] = _clip_guidance(ctx, cfg, report, clip, tok, text_ckpt, faith)
    c2 = time.process_time()
    out["latent"], latent = _latent_vs_pixel(ctx, cfg, report, clip, tok, judge, faith)
    out["vae_editing"] = _vae_editing(ctx, cfg, report, latent.vae, judge)
    c3 = time.process_time()
    out["inversion"] = _inversion(ctx, cfg, report, latent, tok, judge, clip)
    c4 = time.process_time()
    out["precision_recall"] = _precision_recall_rows(ctx, cfg, report, digits, clf, f_real, models)
    cpu.update({"CLIP scores of the guidance sweep": c2 - c1, "latent vs pixel": c3 - c2, "inversion": c4 - c3,
                "precision/recall": time.process_time() - c4})
    check = make_shapes(400, ctx.seed + 50_000, size=size)
    acc = metrics.accuracy(judge, check.images, check.labels)
    report.note(f"The {size}x{size} judge of the latent, inversion and CLIP rows is an attribute classifier trained "
                f"on {cfg.n_shapes} pictures no generator saw ({cfg.judge_steps} steps; accuracy on 400 fresh real "
                "pictures: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()) + "). The CLIP is trained here too "
                f"({cfg.clip_steps} steps on {len(caps)} pairs, {cfg.latent_size}x{cfg.latent_size} pictures and "
                f"{cfg.text_image_size}x{cfg.text_image_size} ones shown at {cfg.latent_size}x{cfg.latent_size}), so "
                "its scores compare runs here only, never published CLIP scores. CPU: "
                + ", ".join(f"{k} {v:.0f} s" for k, v in cpu.items()) + f" ({sum(cpu.values()):.0f} s in all).")
    return out


def _upsample(x: Any, size: int) -> Any:
    """(N, C, h, w) -> (N, C, size, size) by repeating pixels (nearest): a low-resolution picture, shown bigger."""
    import torch

    return x if x.shape[-1] == size else torch.nn.functional.interpolate(x, size=(size, size), mode="nearest")


def _clip_rows(ctx: StageContext, cfg: Config, report: StageReport, clip: Any, tok: Any, judge: Any,
               cpu: float) -> dict[str, float]:
    """The sanity baseline (real pairs vs shuffled pairs) and zero-shot caption retrieval on held-out pairs."""
    import torch

    from genforge.eval.stats import bootstrap_diff, bootstrap_mean, bootstrap_proportion
    from genforge.world.images import make_shapes

    test = make_shapes(cfg.clip_test, ctx.seed + 32_000, size=cfg.latent_size)
    ids = tok(test.captions)
    perm = torch.randperm(len(test), generator=torch.Generator().manual_seed(ctx.seed))
    real = clip.score(test.images, ids).numpy()
    shuffled = clip.score(test.images, ids[perm]).numpy()
    report.lesson("A small CLIP trained here scores real (picture, caption) pairs above shuffled pairs",
                  ("CLIP score, real pairs", bootstrap_mean(real)), ("shuffled pairs", bootstrap_mean(shuffled)),
                  effect=bootstrap_diff(real, shuffled, paired=True), target=10.0,
                  note=f"{len(test)} held-out pictures; CLIP score = 100 x max(cos, 0) (Hessel et al. 2021); "
                       f"{cfg.clip_steps} steps, {cpu:.0f} s CPU with its judge")
    cands = sorted({c for c in test.captions})
    pick = clip.retrieve(test.images, tok(cands))
    hit = torch.tensor([cands[int(p)] == c for p, c in zip(pick, test.captions)], dtype=torch.float).numpy()
    r1 = bootstrap_proportion(hit)
    report.lesson("CLIP retrieves a held-out picture's caption zero-shot far above chance (R@1 > 5 x chance)",
                  ("caption R@1", r1), ("chance", round(1 / len(cands), 4)), effect=r1, target=5 / len(cands),
                  effect_name="R@1", note=f"the right caption among all {len(cands)} distinct held-out captions")
    return {"real": float(real.mean()), "shuffled": float(shuffled.mean()), "r_at_1": float(hit.mean())}


def _clip_guidance(ctx: StageContext, cfg: Config, report: StageReport, clip: Any, tok: Any, text_ckpt: str,
                   faith: dict) -> dict[str, float]:
    """The CLIP score of the pixel text-to-image model's guidance sweep (the same images the judge scored), and the
    cause of the earlier failed guidance rows: DDIM clipping x0 while keeping the unclipped eps."""
    from genforge.checkpoint import load_model
    from genforge.eval.stats import bootstrap_diff, bootstrap_mean
    from genforge.image.diffusion import to_pixel_range
    from genforge.image.unet import guided_eps
    from genforge.world.images import make_shapes

    model = load_model(text_ckpt)
    size = cfg.text_image_size
    test = make_shapes(cfg.n_shapes // 5, ctx.seed + 10_000, size=size)  # the sweep's held-out captions
    caps = test.captions[: min(cfg.text_prompts, len(test))]
    ids = tok(caps)
    scores: dict[float, np.ndarray] = {}
    # the scales the lessons compare (0, 1 and the guided one); same call, seed and prompts as the sweep: the same
    # images the attribute classifier judged
    for scale in [s for s in cfg.guidance_scales if s in (0.0, 1.0, cfg.guided_scale)]:
        imgs = model.sample(len(ids), ids, scale, "ddim", cfg.text_sample_steps, seed=ctx.seed + 3)
        scores[scale] = clip.score(_upsample(imgs, cfg.latent_size), ids).numpy()
        report.row(f"text to image (pixels, {size}x{size}), guidance {scale:g}: CLIP score",
                   _ci(bootstrap_mean(scores[scale])),
                   note=f"colour+shape hit rate {faith.get(f'{scale:g}', float('nan')):.3f} (rows above); "
                        f"brightness {float(imgs.mean()):.3f}")
    if 0.0 in scores and 1.0 in scores:
        report.lesson("CLIP score: text-conditioned pictures match their captions better than unconditional ones",
                      ("CLIP score, scale 1", bootstrap_mean(scores[1.0])), ("scale 0", bootstrap_mean(scores[0.0])),
                      effect=bootstrap_diff(scores[1.0], scores[0.0], paired=True), target=0.0,
                      note="paired over the held-out captions of the guidance sweep; a second faithfulness measure")
    g = cfg.guided_scale
    if 1.0 in scores and g in scores:
        report.lesson(f"CLIP score: classifier-free guidance (scale {g:g}) beats plain conditioning (scale 1)",
                      (f"CLIP score, scale {g:g}", bootstrap_mean(scores[g])), ("scale 1", bootstrap_mean(scores[1.0])),
                      effect=bootstrap_diff(scores[g], scores[1.0], paired=True), target=0.0,
                      note="paired over held-out captions; same images as the attribute-classifier rows")
        # why the guidance rows failed before: the sampler, not the model. Rerun the same chain with DDIM's old
        # behaviour (x0 clipped, eps kept) and compare.
        real_brightness = float(test.images.mean())
        for scale in (1.0, g):
            old = _ddim_unclipped_eps(model, ids, scale, cfg.text_sample_steps, ctx.seed + 3, guided_eps,
                                      to_pixel_range)
            s_old = clip.score(_upsample(old, cfg.latent_size), ids).numpy()
            report.row(f"why guidance failed before: guidance {scale:g}, DDIM keeping the unclipped eps: CLIP score",
                       _ci(bootstrap_mean(s_old)), f"{scores[scale].mean():.3g}",
                       note=f"baseline = the same chain re-deriving eps from the clipped x0 (now the default); "
                            f"brightness {float(old.mean()):.3f} vs real {real_brightness:.3f}")
        report.note("Why classifier-free guidance did not help before: the sweep samples with DDIM, which clips the "
                    "predicted x0 to [-1, 1]. This undertrained model's early x0 guesses land far outside that range "
                    "(guidance makes eps bigger still), and DDIM used the clipped x0 with the unclipped eps, so each "
                    "step moved toward a picture the model did not predict: too bright, colours washed out (measured "
                    "on the tiny checkpoint, guidance 3: requested colour 0.36, position 0.13). Re-deriving eps from "
                    "the clipped x0 (diffusers' `use_clipped_model_output`, what GLIDE does) gives 0.95 and 0.87, "
                    "as ancestral DDPM does (numbers from the previous tiny run's checkpoint); the rows above use it.")
    return {f"{s:g}": float(v.mean()) for s, v in scores.items()}


def _ddim_unclipped_eps(model: Any, ids: Any, scale: float, steps: int, seed: int, guided_eps: Any,
                        to_pixel_range: Any) -> Any:
    """DDIM as the sweep ran it before the fix: x0 clipped, the unclipped eps kept (`use_clipped_model_output`
    off), same starting noise as `DiffusionModel.sample`."""
    import torch

    sched = model.scheduler("ddim")
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    net = model.ema if model.config.ema_decay > 0 else model.denoiser
    x = torch.randn((len(ids), *model.config.image_shape), generator=g)
    with torch.no_grad():
        for t in sched.timesteps.tolist():
            eps = guided_eps(net, x, torch.full((len(ids),), t, dtype=torch.long), ids, scale)
            x = sched.step(eps, t, x, eta=0.0, generator=g).prev_sample
    return to_pixel_range(x)


def _hits(judge: Any, images: Any, want: dict) -> np.ndarray:
    """1 where the judge sees every requested attribute, per image."""
    import torch

    with torch.no_grad():
        pred = judge(images)
    ok = torch.stack([pred[k].argmax(-1) == v for k, v in want.items()]).all(0)
    return ok.float().numpy()


def _latent_vs_pixel(ctx: StageContext, cfg: Config, report: StageReport, clip: Any, tok: Any,
                     judge: Any, faith: dict) -> tuple[dict[str, float], Any]:
    """Latent diffusion (VAE on images alone -> text-conditioned diffusion in its latent -> VAE decoder) against a
    pixel U-Net at the same size given about the same training CPU, and its own guidance sweep."""
    import torch

    from genforge.eval.stats import bootstrap_diff, bootstrap_proportion
    from genforge.image.diffusion import DiffusionConfig
    from genforge.image.latent import LatentConfig, LatentDiffusion, train_latent
    from genforge.image.run import DataSplit, ImageTrainConfig, train
    from genforge.report import line_plot
    from genforge.world.images import make_shapes, save_grid

    size = cfg.latent_size
    colour, shape = _concept(cfg)
    full = make_shapes(cfg.latent_shapes, ctx.seed, size=size)
    train_set = full.subset(_without(full, colour, shape))  # the concept pairing is held out for inversion
    test_full = make_shapes(cfg.latent_shapes // 5, ctx.seed + 10_000, size=size)
    test = test_full.subset(_without(test_full, colour, shape)[: cfg.latent_prompts])
    ids = tok(test.captions)
    want = {k: test.labels[k] for k in ("colour", "shape", "size", "position")}
    # 1. latent diffusion, both parts on the shared Trainer
    latent = LatentDiffusion(LatentConfig(image_shape=(3, size, size), latent_dim=cfg.latent_dim,
                                          vocab_size=len(tok), num_train_timesteps=cfg.timesteps))
    c0 = time.process_time()
    parts = train_latent(latent, train_set.images, tok(train_set.captions), str(ctx.path("image", "latent", ".keep")
                                                                                 .parent),
                         vae_steps=cfg.latent_vae_steps, steps=cfg.latent_steps, batch_size=cfg.text_batch,
                         seed=ctx.seed, threads=ctx.threads, progress=ctx.progress)
    lat_cpu = time.process_time() - c0
    latent.eval()
    # 2. the pixel-space U-Net (the stage's text-to-image model) at the same picture size and data
    c1 = time.process_time()
    pix_cfg = ImageTrainConfig(family="ddpm", out_dir=str(ctx.path("image", "pixel16", ".keep").parent),
                               dataset="shapes", seed=ctx.seed, steps=cfg.latent_pixel_steps,
                               batch_size=cfg.text_batch, ckpt_every=0, resume=False, threads=ctx.threads,
                               progress=ctx.progress,
                               # sampled from its raw weights: after a few hundred steps an EMA of 0.995 would still
                               # hold a fifth of the initial (zero-output) weights (measured: same hit rate either way)
                               ddpm=DiffusionConfig(cond="text", arch=cfg.text_arch, hidden=cfg.text_hidden,
                                                    num_train_timesteps=cfg.timesteps, ema_decay=0.0))
    pixel, _ = train(pix_cfg, DataSplit(train_set, test, 256))
    pix_cpu = time.process_time() - c1
    res: dict[str, float] = {"train_cpu_latent": lat_cpu, "train_cpu_pixel": pix_cpu}
    hits, scores, secs, grids = {}, {}, {}, [test.images[:12]]
    for name, mdl in (("latent", latent), ("pixel", pixel)):
        c2 = time.process_time()
        imgs = mdl.sample(len(ids), ids, 1.0, "ddim", cfg.text_sample_steps, seed=ctx.seed + 3)
        secs[name] = time.process_time() - c2
        hits[name], scores[name] = _hits(judge, imgs, want), clip.score(imgs, ids).numpy()
        res[f"hit_{name}"], res[f"clip_{name}"], res[f"sample_cpu_{name}"] = (
            float(hits[name].mean()), float(scores[name].mean()), secs[name])
        grids.append(imgs[:12])
    with torch.no_grad():
        recon = latent.decode(latent.encode(test.images))
    rec_hit = _hits(judge, recon, want)
    for name, title, cpu in (("latent", "latent diffusion (VAE + latent MLP denoiser)", lat_cpu),
                             ("pixel", f"pixel diffusion ({cfg.text_arch} on {size}x{size} pixels)", pix_cpu)):
        report.row(f"{title}, {size}x{size}: colour, shape, size and position right",
                   _ci(bootstrap_proportion(hits[name])),
                   note=f"CLIP score {scores[name].mean():.1f}; training {cpu:.0f} s CPU; sampling {len(ids)} in "
                        f"{secs[name]:.1f} s CPU (DDIM {cfg.text_sample_steps}, guidance 1)")
    report.row("latent diffusion's ceiling: the VAE's reconstructions of the test pictures, all four right",
               _ci(bootstrap_proportion(rec_hit)), note="what a perfect latent model could reach through this decoder")
    report.lesson(f"Latent diffusion is more faithful than pixel diffusion at {size}x{size} for about the same "
                  "training CPU",
                  ("hit rate, latent", bootstrap_proportion(hits["latent"])),
                  ("hit rate, pixel U-Net", bootstrap_proportion(hits["pixel"])),
                  effect=bootstrap_diff(hits["latent"], hits["pixel"], paired=True), target=0.0,
                  note=f"colour, shape, size and position all right; training CPU {lat_cpu:.0f} s (VAE "
                       f"{parts['vae']['step']} + diffusion {parts['diffusion']['step']} steps) vs {pix_cpu:.0f} s "
                       f"({cfg.latent_pixel_steps} U-Net steps). The {cfg.text_image_size}x{cfg.text_image_size} pixel "
                       f"model above ({cfg.text_steps} steps) drew colour and shape right {faith.get('1', 0):.2f} of "
                       "the time, judged by another classifier: not comparable")
    speed = secs["pixel"] / max(secs["latent"], 1e-9)
    report.lesson(f"Latent diffusion samples {size}x{size} pictures >= 4x faster than pixel diffusion (a "
                  f"{cfg.latent_dim}-number latent instead of {size * size * 3} pixels)",
                  ("CPU s, latent", round(secs["latent"], 2)), ("CPU s, pixel", round(secs["pixel"], 2)),
                  effect=speed, target=4.0, effect_name="speedup (time, no CI)",
                  note=f"{len(ids)} pictures, DDIM {cfg.text_sample_steps} steps each, decoder included")
    # 3. guidance in latent space: the same sweep, same judge
    sweep = {}
    for scale in cfg.guidance_scales:
        imgs = latent.sample(len(ids), ids, scale, "ddim", cfg.text_sample_steps, seed=ctx.seed + 3)
        sweep[scale] = (_hits(judge, imgs, want), clip.score(imgs, ids).numpy())
        report.row(f"latent text to image, guidance {scale:g}: all four attributes right",
                   _ci(bootstrap_proportion(sweep[scale][0])), note=f"CLIP score {sweep[scale][1].mean():.1f}"
                   + ("; scale 0 = unconditional" if scale == 0 else ""))
        if scale == cfg.guided_scale:
            grids.append(imgs[:12])
    g = cfg.guided_scale
    if 1.0 in sweep and g in sweep:
        report.lesson(f"Latent diffusion: classifier-free guidance (scale {g:g}) is more faithful than scale 1",
                      (f"hit rate, scale {g:g}", bootstrap_proportion(sweep[g][0])),
                      ("scale 1", bootstrap_proportion(sweep[1.0][0])),
                      effect=bootstrap_diff(sweep[g][0], sweep[1.0][0], paired=True), target=0.0,
                      note=f"paired over held-out captions; CLIP score {sweep[g][1].mean():.1f} vs "
                           f"{sweep[1.0][1].mean():.1f}")
        res["hit_latent_guided"] = float(sweep[g][0].mean())
    save_grid(torch.cat(grids), ctx.path("plots", "image_latent.png"), nrow=12)
    report.plot("plots/image_latent.png", f"{size}x{size}, one row each: real test pictures; latent diffusion; pixel "
                f"U-Net at about the same training CPU; latent diffusion with guidance {g:g}. Captions: "
                + "; ".join(test.captions[:3]) + "; ...")
    scales = list(sweep)
    line_plot(ctx.path("plots", "image_guidance_latent.png"),
              {"latent, all four attributes right": (scales, [float(sweep[s][0].mean()) for s in scales]),
               "latent, CLIP score / 100": (scales, [float(sweep[s][1].mean()) / 100 for s in scales])},
              "Guidance sweep, latent diffusion", "guidance scale (0 = unconditional)", "share / score")
    report.plot("plots/image_guidance_latent.png", "Latent diffusion: faithfulness against the guidance scale")
    return res, latent


def _concept(cfg: Config) -> tuple[int, int]:
    """The held-out colour+shape pairing of `inversion_concept` ('yellow triangle') as attribute indices."""
    from genforge.errors import ConfigError
    from genforge.world.images import COLOURS, SHAPES

    words = cfg.inversion_concept.split()
    if len(words) != 2 or words[0] not in COLOURS or words[1] not in SHAPES:
        raise ConfigError(f"image.inversion_concept={cfg.inversion_concept!r}: use '<colour> <shape>' with a colour "
                          f"of {', '.join(COLOURS)} and a shape of {', '.join(SHAPES)}")
    return list(COLOURS).index(words[0]), SHAPES.index(words[1])


def _without(data: Any, colour: int, shape: int) -> list[int]:
    """Indices of the pictures that are not the held-out colour+shape pairing."""
    bad = (data.labels["colour"] == colour) & (data.labels["shape"] == shape)
    return [i for i in range(len(data)) if not bool(bad[i])]


def _vae_editing(ctx: StageContext, cfg: Config, report: StageReport, vae: Any, judge: Any) -> dict[str, float]:
    """The seed's noise editing with the latent model's VAE (trained on pictures alone, no labels): the "red direction"
    = mean posterior mean of red pictures minus that of the others; add it to non-red test pictures and decode. The
    judge says which colour each edited picture has, and whether its shape survived; plus an interpolation grid."""
    import torch

    from genforge.eval.stats import bootstrap_diff, bootstrap_proportion
    from genforge.world.images import COLOURS, make_shapes, save_grid

    red = tuple(COLOURS).index("red")
    train = make_shapes(cfg.latent_shapes // 2, ctx.seed + 60_000, size=cfg.latent_size)
    direction = vae.attribute_direction(train.images, train.labels["colour"] == red)  # (latent,)
    test = make_shapes(cfg.latent_prompts * 2, ctx.seed + 61_000, size=cfg.latent_size)
    test = test.subset([i for i in range(len(test)) if int(test.labels["colour"][i]) != red][: cfg.latent_prompts])
    with torch.no_grad():
        mu, _ = vae.encode(test.images)
        before = vae.images(mu)  # the reconstruction: the fair "before" (same decoder, no edit)
        after = vae.images(mu + cfg.edit_strength * direction)
        p_before, p_after = judge(before), judge(after)
    is_red_before = (p_before["colour"].argmax(-1) == red).float().numpy()
    is_red_after = (p_after["colour"].argmax(-1) == red).float().numpy()
    shape_kept = (p_after["shape"].argmax(-1) == test.labels["shape"]).float().numpy()
    shape_recon = float((p_before["shape"].argmax(-1) == test.labels["shape"]).float().mean())
    report.lesson(f'VAE noise editing: adding "the red direction" (x{cfg.edit_strength:g}) to a picture\'s latent '
                  'makes it red (>= +0.5 judged red)',
                  ("judged red after the edit", bootstrap_proportion(is_red_after)),
                  ("judged red, reconstruction without the edit", bootstrap_proportion(is_red_before)),
                  effect=bootstrap_diff(is_red_after, is_red_before, paired=True), target=0.5,
                  note=f"{len(test)} held-out pictures that are not red; direction = mean latent of red minus other "
                       f"pictures over {len(train)} pictures (the VAE never saw labels; they only pick the two "
                       f"groups); the judge sees the right shape in {shape_kept.mean():.2f} of the edited pictures vs "
                       f"{shape_recon:.2f} of the plain reconstructions")
    a, b = test.images[0], test.images[1]
    rows = [torch.stack([before[i] for i in range(8)]), torch.stack([after[i] for i in range(8)]),
            vae.interpolate(a, b, steps=8)]
    save_grid(torch.cat(rows), ctx.path("plots", "image_vae_editing.png"), nrow=8)
    report.plot("plots/image_vae_editing.png", "VAE noise editing: reconstructions (top), the same pictures with the "
                "red direction added (middle), and a straight line in latent space between two pictures (bottom)")
    return {"red_before": float(is_red_before.mean()), "red_after": float(is_red_after.mean()),
            "shape_kept": float(shape_kept.mean())}


def _inversion(ctx: StageContext, cfg: Config, report: StageReport, latent: Any, tok: Any, judge: Any,
               clip: Any) -> dict[str, float]:
    """Textual inversion on the latent model, which never saw the concept's colour+shape pairing: one new token
    from a few pictures, then prompts in every size/position context."""
    import copy

    import torch

    from genforge.eval.stats import bootstrap_diff, bootstrap_proportion
    from genforge.image.inversion import add_token, invert, nearest_word, text_embedding
    from genforge.image.text import CaptionTokenizer
    from genforge.world.images import POSITIONS, SIZES, make_shapes, save_grid

    colour, shape = _concept(cfg)
    pool = make_shapes(40 * cfg.inversion_images, ctx.seed + 40_000, size=cfg.latent_size)
    idx = [i for i in range(len(pool)) if i not in set(_without(pool, colour, shape))][: cfg.inversion_images]
    shots = pool.subset(idx)
    itok = CaptionTokenizer()
    itok.add_word("<new>")  # id len(vocab): the one word the inversion learns

    def caption(size: str, pos: str, thing: str) -> str:
        return f"a {size} {thing} " + ("in the center" if pos == "center" else f"in the {pos}")

    names = {"size": list(SIZES), "position": list(POSITIONS)}
    shot_caps = [caption(names["size"][int(shots.labels["size"][i])], names["position"][int(
        shots.labels["position"][i])], "<new>") for i in range(len(shots))]
    c0 = time.process_time()
    net, _, summary = invert(latent.ema, latent.scheduler("ddpm"), latent.encode(shots.images), itok(shot_caps),
                             str(ctx.path("image", "inversion", ".keep").parent), steps=cfg.inversion_steps,
                             lr=cfg.inversion_lr, seed=ctx.seed, threads=ctx.threads, progress=ctx.progress)
    cpu = time.process_time() - c0
    learned = net.embed.conditioner.text.embed.new.detach()[0]
    table = text_embedding(latent.ema).weight.detach()[2:]
    rand = torch.randn(table.shape[1], generator=torch.Generator().manual_seed(ctx.seed))
    rnet = copy.deepcopy(latent.ema)
    add_token(rnet, rand / rand.norm() * table.norm(dim=1).mean())  # a random word of typical length
    near = nearest_word(net, learned, itok.vocab)
    # new contexts: every size x position, `inversion_samples` pictures each
    contexts = [(s, p) for s in names["size"] for p in names["position"]] * cfg.inversion_samples
    want = {"colour": torch.full((len(contexts),), colour), "shape": torch.full((len(contexts),), shape)}
    concept_words = cfg.inversion_concept
    arms = {"learned token": (net, "<new>"), "random token": (rnet, "<new>"), f"nearest word ({near})": (None, near),
            f"the words '{concept_words}'": (None, concept_words)}
    hits, grids, res = {}, [shots.images], {}
    for arm, (use, thing) in arms.items():
        ids = itok([caption(s, p, thing) for s, p in contexts])
        imgs = latent.sample(len(ids), ids, cfg.guided_scale, "ddim", cfg.text_sample_steps, seed=ctx.seed + 5,
                             net=use)
        hits[arm] = _hits(judge, imgs, want)
        res[arm.split(" (")[0].split(" '")[0]] = float(hits[arm].mean())
        with torch.no_grad():
            pred = judge(imgs)
        report.row(f"textual inversion: {arm} -> {concept_words}", _ci(bootstrap_proportion(hits[arm])),
                   note=f"colour {(pred['colour'].argmax(-1) == colour).float().mean():.2f}, shape "
                        f"{(pred['shape'].argmax(-1) == shape).float().mean():.2f}; {len(contexts)} pictures, "
                        f"{len(names['size']) * len(names['position'])} size/position contexts, guidance "
                        f"{cfg.guided_scale:g}")
        grids.append(imgs[: len(names["size"]) * len(names["position"])])
    words = f"the words '{concept_words}'"
    report.note(f"Textual inversion: the learned token drew {concept_words} {hits['learned token'].mean():.2f} of the "
                f"time, the words '{concept_words}' {hits[words].mean():.2f}. The bag-of-words caption encoder can "
                "compose a pairing it never saw from its two words, so here the token mostly recovers what words "
                "already say; where no single word says it (the nearest word, a random token) the learned token wins. "
                "Gal et al.'s case, a concept no words describe, needs a concept outside this closed vocabulary.")
    base = {"a random token": "random token", "the nearest existing word": f"nearest word ({near})"}
    for label, arm in base.items():
        report.lesson(f"Textual inversion: one learned token draws an unseen concept ({concept_words}) more often "
                      f"than {label}",
                      ("success, learned token", bootstrap_proportion(hits["learned token"])),
                      (arm, bootstrap_proportion(hits[arm])),
                      effect=bootstrap_diff(hits["learned token"], hits[arm], paired=True), target=0.0,
                      note=f"{cfg.inversion_images} pictures, {summary['step']} steps on one embedding "
                           f"({cpu:.1f} s CPU), model and text encoder frozen; the latent model never saw the "
                           f"pairing; the attribute classifier confirms colour and shape; same noise per context")
    save_grid(torch.cat([_pad_row(g, 10) for g in grids]), ctx.path("plots", "image_inversion.png"), nrow=10)
    report.plot("plots/image_inversion.png", f"Textual inversion of '{concept_words}', one row each: the "
                f"{cfg.inversion_images} training pictures; then, for every size x position context: "
                + "; ".join(arms))
    return res


def _pad_row(x: Any, n: int) -> Any:
    """(k, C, H, W) -> (n, C, H, W): cut or pad with black so grids keep one concept per row."""
    import torch

    if len(x) >= n:
        return x[:n]
    return torch.cat([x, torch.zeros(n - len(x), *x.shape[1:])])


def _precision_recall_rows(ctx: StageContext, cfg: Config, report: StageReport, digits: Any, clf: Any,
                           f_real: np.ndarray, models: dict) -> dict[str, dict[str, float]]:
    """Precision/recall (Kynkäänniemi et al. 2019, k = 3) of each family on digits, beside its FID, with the real-vs-
    real and noise rows. The samples are regenerated with the FID's own seed: the same images."""
    import torch

    from genforge.image import metrics
    from genforge.image.run import generate

    n = len(f_real)
    f_train = metrics.extract_features(clf, digits.train.images[:n])
    noise = torch.rand((n, *digits.shape), generator=torch.Generator().manual_seed(ctx.seed + 1))
    sets = {"real": ("real vs real (train digits)", f_train),
            "noise": ("uniform noise", metrics.extract_features(clf, noise))}
    for fam, model in models.items():
        if fam not in ("ddpm", "gan", "vae", "flow"):  # families with a `_train_cfg` (their sampling settings)
            continue
        tcfg = _train_cfg(ctx, cfg, fam, str(ctx.path("image", fam, ".keep").parent))
        sets[fam] = (FAMILY_TITLES[fam], metrics.extract_features(
            clf, generate(fam, model, cfg.n_samples, tcfg, ctx.seed + 1)[:n]))
    out = {}
    for key, (title, feats) in sets.items():
        pr = metrics.bootstrap_precision_recall(f_real, feats)
        out[key] = {k: v.estimate for k, v in pr.items()}
        report.row(f"{title}: precision / recall (k = 3)", f"{_ci(pr['precision'])} / {_ci(pr['recall'])}",
                   note="precision: generated digits inside the real manifold (fidelity); recall: test digits inside "
                        "the generated manifold (coverage); 95 % bootstrap intervals" if key == "real" else "")
    return out
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
