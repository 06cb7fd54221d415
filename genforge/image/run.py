"""Typed configs and `main(cfg)` for each image family, for the CLI / speedrun to register.

Each main trains (resuming from `out_dir` when a checkpoint of the same family is there), writes a checkpoint,
a PNG grid of samples and `metrics.json` with FID against held-out real images next to the two rows that give
it meaning: real-vs-real (train images against the test images) and a noise baseline. FIDs are on features of a
classifier trained in the run, so they compare runs here, not with published Inception FIDs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from genforge.errors import ConfigError
from genforge.image import metrics
from genforge.image.diffusion import sample as diffusion_sample
from genforge.image.flow import RealNVP
from genforge.image.gan import (
    DCDiscriminator,
    DCGenerator,
    MLPDiscriminator,
    MLPGenerator,
    gan_sample,
    gan_step,
    make_ema,
    update_ema,
)
from genforge.image.schedulers import DDIMScheduler, DDPMScheduler
from genforge.image.text import CaptionTokenizer
from genforge.image.train import ddpm_step, flow_step, load_checkpoint, save_checkpoint, train_loop, vae_step
from genforge.image.unet import MLPDenoiser, TinyUNet
from genforge.image.vae import VAE
from genforge.io import write_json
from genforge.world.images import ImageSet, load_digits_set, load_image_folder, make_shapes, save_grid


@dataclass
class ImageRunConfig:
    """Settings every image family shares."""

    out_dir: str = "runs/image"  # checkpoint, samples.png and metrics.json go here
    dataset: str = "digits"  # 'digits' (8x8 grey), 'shapes' (16x16 RGB with captions) or 'folder'
    folder: str = ""  # for dataset='folder': a folder of PNGs (resized to `image_size`)
    image_size: int = 16  # for 'folder' only
    n_shapes: int = 4000  # training pictures generated for dataset='shapes' (the test set is 20 % of this)
    seed: int = 0
    steps: int = 2000  # optimizer steps (stops early when time_budget_s runs out)
    batch_size: int = 64
    lr: float = 1e-3
    time_budget_s: float | None = None  # wall-clock cap on training
    n_samples: int = 360  # generated images for FID
    classifier_steps: int = 600  # steps of the feature classifier used by FID

    def __post_init__(self) -> None:
        if self.dataset not in ("digits", "shapes", "folder"):
            raise ConfigError(f"dataset={self.dataset!r}: use 'digits', 'shapes' or 'folder'")
        if self.dataset == "folder" and not self.folder:
            raise ConfigError("dataset='folder' needs folder=PATH (a folder of PNG files)")
        for name in ("steps", "batch_size", "n_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be >= 1")


@dataclass
class DDPMConfig(ImageRunConfig):
    """DDPM (Ho et al. 2020) with an MLP or small U-Net denoiser; sampled with DDPM or DDIM."""

    model: str = "mlp"  # 'mlp' or 'unet'
    hidden: int = 512  # MLP width (or U-Net base channels / 16)
    num_train_timesteps: int = 200  # T
    beta_schedule: str = "linear"  # 'linear', 'scaled_linear' or 'squaredcos_cap_v2'
    beta_start: float | None = None  # None: 1e-4 * 1000 / T (Ho et al.'s range rescaled so x_T is still noise)
    beta_end: float | None = None  # None: 0.02 * 1000 / T, at most 0.5
    cond: str = "none"  # 'none', 'class' (digits) or 'text' (shapes captions)
    p_uncond: float = 0.1  # share of conditions dropped in training (classifier-free guidance)
    guidance_scale: float = 1.0
    sampler: str = "ddpm"  # 'ddpm' (all T steps unless sample_steps) or 'ddim'
    sample_steps: int | None = None  # inference steps; None: T for ddpm, T // 4 for ddim
    ema_decay: float = 0.995  # sample from an exponential moving average of the weights (Ho et al. 2020 use 0.9999
    # over 800k steps; a few thousand steps here want a shorter memory); 0 turns it off

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model not in ("mlp", "unet"):
            raise ConfigError(f"model={self.model!r}: use 'mlp' or 'unet'")
        if self.sampler not in ("ddpm", "ddim"):
            raise ConfigError(f"sampler={self.sampler!r}: use 'ddpm' or 'ddim'")
        if self.cond == "text" and self.dataset != "shapes":
            raise ConfigError("cond='text' needs captions: use dataset='shapes'")


@dataclass
class VAEConfig(ImageRunConfig):
    """VAE (Kingma & Welling 2014) with a beta on the KL term."""

    latent_dim: int = 16
    hidden: int = 256
    beta: float = 1.0


@dataclass
class FlowConfig(ImageRunConfig):
    """RealNVP; keeps the checkpoint with the best test bits/dim (it overfits fast on small data)."""

    n_layers: int = 8
    hidden: int = 256
    eval_every: int = 100  # steps between test bits/dim checks (early stopping)


@dataclass
class GANConfig(ImageRunConfig):
    """GAN with alternating D/G steps and an EMA generator used for sampling."""

    model: str = "mlp"  # 'mlp' or 'dcgan' (16x16 only)
    z_dim: int = 32
    hidden: int = 256
    lr: float = 5e-4  # measured on digits (75 s): 5e-4 at batch 64 -> FID 30; 1e-4 at batch 128 collapsed
    ema_decay: float = 0.995


@dataclass
class DataSplit:
    train: ImageSet
    test: ImageSet
    levels: int  # grey levels of the source (17 for digits, 256 for 8-bit files)
    labels: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])


def load_data(cfg: ImageRunConfig) -> DataSplit:
    """Train/test images for a config (test = 20 %, disjoint)."""
    if cfg.dataset == "digits":
        return DataSplit(load_digits_set("train", cfg.seed), load_digits_set("test", cfg.seed), 17)
    if cfg.dataset == "shapes":
        return DataSplit(make_shapes(cfg.n_shapes, cfg.seed), make_shapes(cfg.n_shapes // 5, cfg.seed + 10_000), 256)
    full = load_image_folder(cfg.folder, size=cfg.image_size)
    perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(cfg.seed))
    n_test = max(1, len(full) // 5)
    return DataSplit(full.subset(perm[n_test:]), full.subset(perm[:n_test]), 256)


def evaluate(samples: torch.Tensor, data: DataSplit, seed: int, classifier_steps: int) -> dict[str, float]:
    """FID / precision / recall of samples against the test set, with real-vs-real and noise rows."""
    labels = data.train.labels or {"_none": torch.zeros(len(data.train), dtype=torch.long)}
    clf = metrics.train_classifier(data.train.images, labels, steps=classifier_steps, seed=seed)
    real = data.test.images
    n = min(len(real), len(samples))
    noise = torch.rand((n, *data.shape), generator=torch.Generator().manual_seed(seed + 1))
    f_real = metrics.extract_features(clf, real[:n])
    f_fake = metrics.extract_features(clf, samples[:n])
    f_train = metrics.extract_features(clf, data.train.images[:n])
    pr = metrics.precision_recall(f_real, f_fake)
    return {"fid": metrics.frechet_distance(f_real, f_fake),
            "fid_real_vs_real": metrics.frechet_distance(f_real, f_train),
            "fid_noise": metrics.frechet_distance(f_real, metrics.extract_features(clf, noise)),
            "precision": pr["precision"], "recall": pr["recall"], "n": n}


def _finish(cfg: ImageRunConfig, family: str, samples: torch.Tensor, data: DataSplit, train_s: float,
            extra: dict[str, Any]) -> dict[str, Any]:
    out = Path(cfg.out_dir)
    save_grid(samples[:64], out / "samples.png", nrow=8)
    t0 = time.perf_counter()
    res = {"family": family, "train_s": round(train_s, 1), **extra,
           **evaluate(samples, data, cfg.seed, cfg.classifier_steps)}
    res["eval_s"] = round(time.perf_counter() - t0, 1)
    write_json(out / "metrics.json", res)
    return res


def _cfg_dict(cfg: Any) -> dict:
    from dataclasses import asdict

    return asdict(cfg)


def main_ddpm(cfg: DDPMConfig) -> dict[str, Any]:
    """Train (or resume) a DDPM, sample, evaluate."""
    torch.manual_seed(cfg.seed)
    data = load_data(cfg)
    T = cfg.num_train_timesteps
    kw = {"beta_start": cfg.beta_start if cfg.beta_start is not None else 1e-4 * 1000 / T,
          "beta_end": cfg.beta_end if cfg.beta_end is not None else min(0.02 * 1000 / T, 0.5)}
    sched = DDPMScheduler(T, cfg.beta_schedule, **kw)
    tok = CaptionTokenizer() if cfg.cond == "text" else None
    ckw = {"cond": cfg.cond, "num_classes": 10 if cfg.cond == "class" else 0, "vocab_size": len(tok) if tok else 0}
    if cfg.model == "mlp":
        model = MLPDenoiser(data.shape, hidden=cfg.hidden, **ckw)
    else:
        model = TinyUNet(in_ch=data.shape[0], base=max(8, cfg.hidden // 16), **ckw)
    cond_all = None
    if cfg.cond == "class":
        cond_all = data.train.labels["digit"]
    elif cfg.cond == "text":
        cond_all = tok(data.train.captions)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed)
    ema = make_ema(model)
    mods = {"model": model, "ema": ema}
    start = _maybe_resume(cfg, "ddpm", mods, {"opt": opt}, g)
    x = data.train.images

    def step(idx: torch.Tensor) -> dict[str, float]:
        m = ddpm_step(model.train(), sched, opt, x[idx], g, cond_all[idx] if cond_all is not None else None,
                      cfg.p_uncond)
        update_ema(ema, model, cfg.ema_decay)
        return m

    t0 = time.perf_counter()
    hist = train_loop(step, len(x), cfg.steps, cfg.batch_size, cfg.seed, start, cfg.time_budget_s)
    train_s = time.perf_counter() - t0
    save_checkpoint(cfg.out_dir, "ddpm", start + len(hist), mods, {"opt": opt}, g, _cfg_dict(cfg))
    sampler = DDIMScheduler(T, cfg.beta_schedule, **kw) if cfg.sampler == "ddim" else sched
    n_steps = cfg.sample_steps or (T // 4 if cfg.sampler == "ddim" else None)
    cond = None
    if cfg.cond == "class":
        cond = torch.arange(cfg.n_samples) % 10
    elif cfg.cond == "text":
        cond = tok(data.test.captions[: cfg.n_samples])
    t1 = time.perf_counter()
    n = cfg.n_samples if cond is None else len(cond)
    samples = diffusion_sample(ema, sampler, n, data.shape, cond, cfg.guidance_scale, n_steps, seed=cfg.seed + 1)
    sample_s = time.perf_counter() - t1
    return _finish(cfg, "ddpm", samples, data, train_s, {"steps": start + len(hist), "sample_s": round(sample_s, 1),
                                                         "final_loss": _tail_mean(hist, "loss")})


def main_vae(cfg: VAEConfig) -> dict[str, Any]:
    """Train (or resume) a VAE, sample from the prior, evaluate; also reports test ELBO (nats/image)."""
    torch.manual_seed(cfg.seed)
    data = load_data(cfg)
    vae = VAE(data.shape, cfg.latent_dim, cfg.hidden)
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed)
    start = _maybe_resume(cfg, "vae", {"model": vae}, {"opt": opt}, g)
    x = data.train.images
    t0 = time.perf_counter()
    hist = train_loop(lambda idx: vae_step(vae, opt, x[idx], g, cfg.beta), len(x), cfg.steps, cfg.batch_size,
                      cfg.seed, start, cfg.time_budget_s)
    train_s = time.perf_counter() - t0
    save_checkpoint(cfg.out_dir, "vae", start + len(hist), {"model": vae}, {"opt": opt}, g, _cfg_dict(cfg))
    test_elbo = float(vae.elbo(data.test.images, 8, torch.Generator().manual_seed(1)).mean())
    save_grid(vae.interpolate(data.test.images[0], data.test.images[1], 8), Path(cfg.out_dir) / "interpolation.png")
    return _finish(cfg, "vae", vae.sample(cfg.n_samples, cfg.seed + 1), data, train_s,
                   {"steps": start + len(hist), "test_elbo_nats": round(test_elbo, 2)})


def main_flow(cfg: FlowConfig) -> dict[str, Any]:
    """Train a RealNVP with early stopping on test bits/dim; reports train and test bits/dim."""
    torch.manual_seed(cfg.seed)
    data = load_data(cfg)
    flow = RealNVP(data.shape, cfg.n_layers, cfg.hidden)
    opt = torch.optim.Adam(flow.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed)
    start = _maybe_resume(cfg, "flow", {"model": flow}, {"opt": opt}, g)
    x, xt = data.train.images, data.test.images

    def bpd(images: torch.Tensor) -> float:
        with torch.no_grad():
            return float(flow.bits_per_dim(images, data.levels, torch.Generator().manual_seed(0)))

    best = {"test_bpd": float("inf"), "step": start, "state": None}
    curve: list[tuple[int, float, float]] = []
    t0 = time.perf_counter()
    step_now = start
    while step_now < cfg.steps:
        chunk = min(cfg.eval_every, cfg.steps - step_now)
        hist = train_loop(lambda idx: flow_step(flow, opt, x[idx], g, data.levels), len(x), step_now + chunk,
                          cfg.batch_size, cfg.seed, step_now)
        step_now += len(hist)
        tr, te = bpd(x[: len(xt)]), bpd(xt)
        curve.append((step_now, round(tr, 3), round(te, 3)))
        if te < best["test_bpd"]:
            best = {"test_bpd": te, "step": step_now, "state": {k: v.clone() for k, v in flow.state_dict().items()}}
        if cfg.time_budget_s is not None and time.perf_counter() - t0 > cfg.time_budget_s:
            break
    train_s = time.perf_counter() - t0
    if best["state"] is not None:
        flow.load_state_dict(best["state"])  # early stopping: keep the best test likelihood
    save_checkpoint(cfg.out_dir, "flow", step_now, {"model": flow}, {"opt": opt}, g, _cfg_dict(cfg))
    return _finish(cfg, "flow", flow.sample(cfg.n_samples, cfg.seed + 1, temperature=0.8), data, train_s,
                   {"steps": step_now, "best_step": best["step"], "train_bpd": bpd(x[: len(xt)]),
                    "test_bpd": bpd(xt), "bpd_curve": curve})


def main_gan(cfg: GANConfig) -> dict[str, Any]:
    """Train (or resume) a GAN with alternating steps; sample from the EMA generator and evaluate."""
    torch.manual_seed(cfg.seed)
    data = load_data(cfg)
    if cfg.model == "dcgan":
        if data.shape[1] != 16:
            raise ConfigError(f"model='dcgan' needs 16x16 images, got {data.shape}; use model='mlp'")
        g_net, d_net = DCGenerator(data.shape, cfg.z_dim), DCDiscriminator(data.shape)
    else:
        g_net, d_net = MLPGenerator(data.shape, cfg.z_dim, cfg.hidden), MLPDiscriminator(data.shape, cfg.hidden)
    ema = make_ema(g_net)
    opt_g = torch.optim.Adam(g_net.parameters(), lr=cfg.lr, betas=(0.5, 0.999))  # DCGAN's beta1 = 0.5
    opt_d = torch.optim.Adam(d_net.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    gen = torch.Generator().manual_seed(cfg.seed)
    mods, opts = {"g": g_net, "d": d_net, "ema": ema}, {"g": opt_g, "d": opt_d}
    start = _maybe_resume(cfg, "gan", mods, opts, gen)
    x = data.train.images
    t0 = time.perf_counter()
    hist = train_loop(lambda idx: gan_step(g_net, d_net, ema, opt_g, opt_d, x[idx], gen, cfg.ema_decay), len(x),
                      cfg.steps, cfg.batch_size, cfg.seed, start, cfg.time_budget_s)
    train_s = time.perf_counter() - t0
    save_checkpoint(cfg.out_dir, "gan", start + len(hist), mods, opts, gen, _cfg_dict(cfg))
    return _finish(cfg, "gan", gan_sample(ema, cfg.n_samples, cfg.seed + 1), data, train_s,
                   {"steps": start + len(hist), "final_loss_d": _tail_mean(hist, "loss_d"),
                    "final_loss_g": _tail_mean(hist, "loss_g")})


def _maybe_resume(cfg: ImageRunConfig, family: str, modules: dict, optimizers: dict, g: torch.Generator) -> int:
    """Resume from cfg.out_dir when it holds a checkpoint (of the same family, else CheckpointError)."""
    if (Path(cfg.out_dir) / "genforge.json").exists():
        return load_checkpoint(cfg.out_dir, family, modules, optimizers, g)
    return 0


def _tail_mean(hist: list[dict[str, float]], key: str, n: int = 50) -> float | None:
    vals = [h[key] for h in hist[-n:] if key in h]
    return round(sum(vals) / len(vals), 4) if vals else None


FAMILIES = {"ddpm": (DDPMConfig, main_ddpm), "vae": (VAEConfig, main_vae), "flow": (FlowConfig, main_flow),
            "gan": (GANConfig, main_gan)}


def main(cfg: ImageRunConfig) -> dict[str, Any]:
    """Dispatch on the config's type (the CLI registers `FAMILIES` or this)."""
    for cls, fn in FAMILIES.values():
        if type(cfg) is cls:
            return fn(cfg)
    raise ConfigError(f"{type(cfg).__name__}: not an image family config; use one of "
                      f"{', '.join(c.__name__ for c, _ in FAMILIES.values())}")
