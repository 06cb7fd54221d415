"""`genforge image train|sample|eval`: typed configs and mains for every image family, on the shared Trainer.

Each family is one checkpointable `nn.Module` bundle registered with `genforge.checkpoint` (image_ddpm: denoiser +
EMA; image_gan: G + D + EMA; image_vae; image_flow: flow + its best-so-far copy), trained by
`genforge.train.trainer.Trainer` as one or several `Part`s (the GAN's D and G alternate within a step), so
checkpoints are atomic folders (`out_dir/checkpoint`) and resume is exact. `train` then samples, writes a PNG
grid and `metrics.json` with FID against held-out real images beside the two rows that give it meaning:
real-vs-real (train images against test images) and a noise baseline. FIDs are on features of a classifier
trained in the run, so they compare runs here, never published Inception FIDs (CIFAR-10 and the like).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genforge.checkpoint import load_model, read_meta, write_checkpoint_files
from genforge.errors import CheckpointError, ConfigError
from genforge.image import metrics
from genforge.image.ar import ARConfig, ARImageModel
from genforge.image.diffusion import DiffusionConfig, DiffusionModel
from genforge.image.flow import FlowConfig, FlowModel
from genforge.image.gan import GAN, GANConfig
from genforge.image.maskgit import MaskGITConfig, MaskGITModel
from genforge.image.text import CaptionTokenizer
from genforge.image.vae import VAE, VAEConfig
from genforge.image.vq import VQVAE, VQConfig
from genforge.io import write_json
from genforge.train.trainer import Part, TrainConfig, Trainer
from genforge.world.images import ImageSet, load_digits_set, load_image_folder, make_shapes, save_grid

# family -> (checkpoint family name, model class); lr / grad clip / Adam beta1 are the defaults measured on digits
FAMILIES: dict[str, tuple[str, type[nn.Module]]] = {
    "ddpm": ("image_ddpm", DiffusionModel), "vae": ("image_vae", VAE), "flow": ("image_flow", FlowModel),
    "gan": ("image_gan", GAN), "vq": ("image_vq", VQVAE), "ar": ("image_ar", ARImageModel),
    "maskgit": ("image_maskgit", MaskGITModel)}
TOKEN_FAMILIES = ("ar", "maskgit")  # priors over a trained VQ-VAE's tokens (`vq_checkpoint`)
# GAN: 5e-4 at batch 64 -> FID 30 on digits; 1e-4 at batch 128 collapsed (first image wave, 75 s runs); in 3000
# steps (tiny, ~18 s CPU) 5e-4 reached only FID 119 (raw G 190), 1e-3 reached 27 (6000 steps at 5e-4: 32)
DEFAULT_LR = {"ddpm": 1e-3, "vae": 1e-3, "flow": 1e-3, "gan": 1e-3, "vq": 2e-3, "ar": 2e-3, "maskgit": 2e-3}
GRAD_CLIP = {"ddpm": 1.0, "vae": 0.0, "flow": 5.0, "gan": 0.0, "vq": 1.0, "ar": 1.0, "maskgit": 1.0}
BETA1 = {"gan": 0.5}  # DCGAN's Adam beta1 (Radford et al. 2016); 0.9 elsewhere
# final lr / peak lr of the cosine schedule; the GAN keeps DCGAN's constant rate (measured on digits, 3000 steps:
# FID 119 constant vs 265 with the cosine decay to 0.1)
MIN_LR_RATIO = {"gan": 1.0}


@dataclass
class DataOptions:
    """Which images: the world's shapes, scikit-learn's digits or a folder of the user's files."""

    dataset: str = "digits"  # 'digits' (8x8 grey), 'shapes' (16x16 RGB with captions) or 'folder'
    folder: str = ""  # for dataset='folder': a folder of PNGs (resized to `image_size`)
    image_size: int = 16  # for 'folder' only
    n_shapes: int = 4000  # training pictures for dataset='shapes' (the test set is 20 % of this)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dataset not in ("digits", "shapes", "folder"):
            raise ConfigError(f"dataset={self.dataset!r}: use 'digits', 'shapes' or 'folder'")
        if self.dataset == "folder" and not self.folder:
            raise ConfigError("dataset='folder' needs folder=PATH (a folder of PNG files)")


@dataclass
class SampleOptions:
    """How a checkpoint is sampled (diffusion settings are ignored by the other families)."""

    sampler: str = "ddpm"  # diffusion: 'ddpm' (ancestral) or 'ddim' (deterministic with eta 0)
    sample_steps: int = 0  # diffusion inference steps (0: T for ddpm, T // 4 for ddim); maskgit: decoding steps K
    # (0: its config's)
    guidance_scale: float = 1.0  # classifier-free guidance: 0 unconditional, 1 conditional, > 1 pushes harder
    eta: float = 0.0  # DDIM's noise (0 deterministic, 1 ~ ancestral)

    def __post_init__(self) -> None:
        if self.sampler not in ("ddpm", "ddim"):
            raise ConfigError(f"sampler={self.sampler!r}: use 'ddpm' or 'ddim'")


@dataclass
class ImageTrainConfig(SampleOptions, DataOptions):
    """`genforge image train`: train (or resume) one family, then sample, grid and FID."""

    family: str = "ddpm"  # ddpm | vae | flow | gan | vq | ar | maskgit (ar/maskgit need vq_checkpoint)
    vq_checkpoint: str = ""  # ar / maskgit: the VQ-VAE whose tokens they model (out_dir/checkpoint of family=vq)
    out_dir: str = "runs/image"  # checkpoint/, metrics.jsonl, samples.png and metrics.json go here
    steps: int = 2000  # optimizer steps
    batch_size: int = 64
    lr: float = 0.0  # 0: the family's measured default (ddpm/vae/flow/gan 1e-3, vq/ar/maskgit 2e-3)
    warmup_steps: int = 20
    ckpt_every: int = 500
    eval_every: int = 200  # flow: steps between test bits/dim checks (early stopping keeps the best)
    resume: bool = True  # continue from out_dir/checkpoint when it exists
    threads: int = 0
    progress: bool = True
    n_samples: int = 360  # generated images for FID
    classifier_steps: int = 600  # steps of the feature classifier used by FID
    ddpm: DiffusionConfig = field(default_factory=DiffusionConfig)  # image_shape / num_classes / vocab_size: set
    vae: VAEConfig = field(default_factory=VAEConfig)  # from the data
    flow: FlowConfig = field(default_factory=FlowConfig)
    gan: GANConfig = field(default_factory=GANConfig)
    vq: VQConfig = field(default_factory=VQConfig)
    ar: ARConfig = field(default_factory=ARConfig)  # its vq fields come from vq_checkpoint
    maskgit: MaskGITConfig = field(default_factory=MaskGITConfig)

    def __post_init__(self) -> None:
        DataOptions.__post_init__(self)
        SampleOptions.__post_init__(self)
        if self.family not in FAMILIES:
            raise ConfigError(f"family={self.family!r}: use one of {', '.join(FAMILIES)}")
        _need_vq(self)
        for name in ("steps", "batch_size", "n_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.family == "ddpm" and self.ddpm.cond == "text" and self.dataset != "shapes":
            raise ConfigError("ddpm.cond='text' needs captions: use dataset=shapes")
        if self.family == "ddpm" and self.ddpm.cond == "class" and self.dataset != "digits":
            raise ConfigError("ddpm.cond='class' needs digit labels: use dataset=digits")


def _need_vq(cfg: ImageTrainConfig) -> None:
    if cfg.family in TOKEN_FAMILIES and not cfg.vq_checkpoint:
        raise ConfigError(f"family={cfg.family} models a VQ-VAE's tokens: set vq_checkpoint=FOLDER (train one "
                          "with `genforge image train family=vq`, then use its out_dir/checkpoint)")


@dataclass
class DataSplit:
    train: ImageSet
    test: ImageSet
    levels: int  # grey levels of the source (17 for digits, 256 for 8-bit files)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])


def load_data(cfg: DataOptions) -> DataSplit:
    """Train/test images for a config (test = 20 %, disjoint)."""
    if cfg.dataset == "digits":
        return DataSplit(load_digits_set("train", cfg.seed), load_digits_set("test", cfg.seed), 17)
    if cfg.dataset == "shapes":
        return DataSplit(make_shapes(cfg.n_shapes, cfg.seed), make_shapes(cfg.n_shapes // 5, cfg.seed + 10_000), 256)
    full = load_image_folder(cfg.folder, size=cfg.image_size)
    perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(cfg.seed))
    n_test = max(1, len(full) // 5)
    return DataSplit(full.subset(perm[n_test:]), full.subset(perm[:n_test]), 256)


# ------------------------------------------------------------------------------------------------ models
def model_config(cfg: ImageTrainConfig, data: DataSplit) -> Any:
    """The family's model config with what the data decides filled in (image shape, classes, vocabulary)."""
    mc = getattr(cfg, cfg.family)
    if cfg.family in TOKEN_FAMILIES:  # the tokenizer's shape is the trained VQ-VAE's; classes only for digits
        _need_vq(cfg)
        _, vq = load_image_model(cfg.vq_checkpoint, "vq")
        if tuple(vq.config.image_shape) != data.shape:
            raise ConfigError(f"vq_checkpoint={cfg.vq_checkpoint}: a VQ-VAE for {tuple(vq.config.image_shape)} "
                              f"images, but dataset={cfg.dataset} has {data.shape}")
        return replace(mc, vq=vq.config, num_classes=mc.num_classes if cfg.dataset == "digits" else 0)
    mc = replace(mc, image_shape=data.shape)
    if cfg.family == "ddpm":
        mc = replace(mc, num_classes=10 if mc.cond == "class" else 0,
                     vocab_size=len(CaptionTokenizer()) if mc.cond == "text" else 0)
    if cfg.family == "flow":
        mc = replace(mc, levels=data.levels)
    return mc


def conditions(model: nn.Module, images: ImageSet) -> torch.Tensor | None:
    """The training conditions of a diffusion model: digit ids or caption ids (B, L); None otherwise."""
    cond = getattr(getattr(model, "config", None), "cond", "none")
    if isinstance(model, (ARImageModel, MaskGITModel)):  # a class prefix token when the data has digit labels
        cond = "class" if model.config.num_classes else "none"
    if cond == "class":
        return images.labels["digit"]
    if cond == "text":
        return CaptionTokenizer()(images.captions)
    return None


def image_shape(model: nn.Module) -> tuple[int, int, int]:
    """(C, H, W) of the images a model makes (token priors: their VQ-VAE's)."""
    cfg = model.config
    return tuple(cfg.vq.image_shape if isinstance(model, (ARImageModel, MaskGITModel)) else cfg.image_shape)


def parts(model: nn.Module) -> list[Part]:
    """The optimizers of one step: D then G for the GAN (Goodfellow et al. 2014, alg. 1 with k = 1), else one."""
    if isinstance(model, GAN):
        return [Part("disc", model.d, lambda m, b: m.d_loss(b)), Part("gen", model.g, lambda m, b: m.g_loss(b))]
    if isinstance(model, DiffusionModel):
        return [Part("denoiser", model.denoiser, lambda m, b: m.loss(b))]
    if isinstance(model, FlowModel):
        return [Part("flow", model.flow, lambda m, b: m.train_loss(b))]
    if isinstance(model, (ARImageModel, MaskGITModel)):  # the prior only: its VQ-VAE is fixed
        return [Part("prior", model.trained_part(), lambda m, b: m.loss(b))]
    if isinstance(model, VQVAE):
        return [Part("vq", model, lambda m, b: m.train_loss(b))]
    return [Part("vae", model, lambda m, b: m.train_loss(b))]


class ImageBatches:
    """Training batches as a pure function of (step, micro, rank): epoch e is a permutation seeded by (seed, e), so
    resume needs no iterator state."""

    def __init__(self, images: torch.Tensor, cond: torch.Tensor | None, batch_size: int, seed: int,
                 grad_accum: int = 1) -> None:
        self.images, self.cond, self.batch_size, self.seed, self.grad_accum = images, cond, batch_size, seed, grad_accum

    def indices(self, k: int) -> torch.Tensor:
        n = len(self.images)
        per_epoch = max(1, n // self.batch_size)
        epoch, i = divmod(k, per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        return perm[i * self.batch_size: (i + 1) * self.batch_size]

    def get_batch(self, step: int, micro: int, rank: int, world: int) -> dict:
        idx = self.indices((step * self.grad_accum + micro) * world + rank)
        batch = {"x": self.images[idx]}
        if self.cond is not None:
            batch["cond"] = self.cond[idx]
        return batch


class ImageTrainer(Trainer):
    """The shared Trainer, plus the families' `after_step` (the EMA update, which must follow the optimizer
    step it averages) — the only thing image training adds to the one loop."""

    def train_step(self) -> dict:
        out = super().train_step()
        hook = getattr(self.model, "after_step", None)
        if hook is not None:
            hook()
        return out


def check_family(folder: str | Path, family: str) -> None:
    """A checkpoint folder must hold `family` (a one-line CheckpointError names what it holds and the fix)."""
    folder = Path(folder)
    meta = read_meta(folder)
    found = meta.get("family", "gpt" if (folder / "config.json").exists() else None)
    want = FAMILIES[family][0]
    if found != want:
        short = {v[0]: k for k, v in FAMILIES.items()}.get(found)
        fix = f"use family={short}" if short else "point to an image checkpoint (genforge image train writes them)"
        raise CheckpointError(f"{folder / 'genforge.json'}: a {found!r} checkpoint, but family={family} "
                              f"({want!r}) was asked for; {fix} or another folder")


def load_image_model(folder: str | Path, family: str = "") -> tuple[str, nn.Module]:
    """(family, model) of an image checkpoint folder; with `family` given, any other family is a CheckpointError."""
    if not str(folder):
        raise ConfigError("checkpoint is not set: genforge image sample|eval CHECKPOINT (out_dir/checkpoint of "
                          "`genforge image train`)")
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no checkpoint folder; train one with `genforge image train`")
    meta = read_meta(folder)
    by_name = {v[0]: k for k, v in FAMILIES.items()}
    if family:
        check_family(folder, family)
    elif meta.get("family") not in by_name:
        raise CheckpointError(f"{folder / 'genforge.json'}: a {meta.get('family', 'gpt')!r} checkpoint, not an image "
                              f"model ({', '.join(by_name)}); point to a folder `genforge image train` wrote")
    return by_name[meta["family"]], load_model(folder)


def train(cfg: ImageTrainConfig, data: DataSplit | None = None) -> tuple[nn.Module, dict]:
    """Train (or resume) cfg.family on the shared Trainer; returns (model in eval mode, trainer summary)."""
    data = data or load_data(cfg)
    ckpt = Path(cfg.out_dir) / "checkpoint"
    if cfg.resume and ckpt.is_dir():
        check_family(ckpt, cfg.family)
    torch.manual_seed(cfg.seed)
    fam_name, cls = FAMILIES[cfg.family]
    model = cls(model_config(cfg, data))
    inputs = data.train.images
    if cfg.family in TOKEN_FAMILIES:  # the trained VQ-VAE goes in, and the prior learns its tokens of the images
        model.vq.load_state_dict(load_image_model(cfg.vq_checkpoint, "vq")[1].state_dict())
        inputs = model.vq.eval().tokens(inputs)
    tcfg = TrainConfig(max_steps=cfg.steps, micro_batch=cfg.batch_size, lr=cfg.lr or DEFAULT_LR[cfg.family],
                       warmup_steps=min(cfg.warmup_steps, cfg.steps), weight_decay=0.0,
                       min_lr_ratio=MIN_LR_RATIO.get(cfg.family, 0.1),
                       beta1=BETA1.get(cfg.family, 0.9), beta2=0.999, grad_clip=GRAD_CLIP[cfg.family],
                       eval_every=cfg.eval_every if cfg.family == "flow" else 0, ckpt_every=cfg.ckpt_every,
                       log_every=max(1, min(50, cfg.steps // 20)), seed=cfg.seed, device="cpu", threads=cfg.threads,
                       resume=cfg.resume, progress=cfg.progress)
    batches = ImageBatches(inputs, conditions(model, data.train), cfg.batch_size, cfg.seed)
    holder: dict[str, Trainer] = {}
    eval_fn = None
    if cfg.family == "flow":
        xt, xtr = data.test.images, data.train.images[: len(data.test.images)]

        def eval_fn(m: FlowModel) -> dict:  # early stopping on test likelihood (it overfits fast on small data)
            train_bpd, test_bpd = m.bpd(xtr), m.bpd(xt)
            m.keep_if_best(test_bpd, holder["t"].step)
            return {"train_bpd": train_bpd, "test_bpd": test_bpd, "best_bpd": float(m.best_bpd)}

    run_cfg = asdict(cfg)
    trainer = ImageTrainer(model, tcfg, parts(model), batches, cfg.out_dir, eval_fn=eval_fn, name=fam_name,
                           save_fn=lambda folder: write_checkpoint_files(folder, model, run_config=run_cfg))
    holder["t"] = trainer
    summary = trainer.fit()
    return model.eval(), summary


# ------------------------------------------------------------------------------------------------ sampling
def generate(family: str, model: nn.Module, n: int, opts: SampleOptions, seed: int,
             cond: torch.Tensor | None = None) -> torch.Tensor:
    """n images (n, C, H, W) in [0, 1]; diffusion reads sampler/steps/guidance from `opts`."""
    if family == "ddpm":
        return model.sample(n, cond, opts.guidance_scale, opts.sampler, opts.sample_steps or (
            model.config.num_train_timesteps // 4 if opts.sampler == "ddim" else None), seed, opts.eta)
    if family == "maskgit":
        return model.sample(n, seed, steps=opts.sample_steps or None)
    return model.sample(n, seed)


def eval_conditions(model: nn.Module, data: DataSplit, n: int) -> torch.Tensor | None:
    """What a conditional model is asked for in evaluation: digits 0..9 in turn, or the test captions."""
    cond = getattr(getattr(model, "config", None), "cond", "none")
    if cond == "class":
        return torch.arange(n) % 10
    if cond == "text":
        caps = [data.test.captions[i % len(data.test)] for i in range(n)]
        return CaptionTokenizer()(caps)
    return None


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


def main_train(cfg: ImageTrainConfig) -> dict[str, Any]:
    """`genforge image train`: train, sample, write samples.png and metrics.json (FID with its baseline rows)."""
    data = load_data(cfg)
    t0 = time.perf_counter()
    model, summary = train(cfg, data)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    samples = generate(cfg.family, model, cfg.n_samples, cfg, cfg.seed + 1, eval_conditions(model, data, cfg.n_samples))
    sample_s = time.perf_counter() - t1
    out = Path(cfg.out_dir)
    save_grid(samples[:64], out / "samples.png", nrow=8)
    res: dict[str, Any] = {"family": cfg.family, "steps": summary["step"], "train_s": round(train_s, 1),
                           "sample_s": round(sample_s, 2), "final_loss": summary.get("train_loss")}
    if isinstance(model, FlowModel):
        res.update(best_step=int(model.best_step), test_bpd=model.bpd(data.test.images, "best"),
                   train_bpd=model.bpd(data.train.images[: len(data.test)], "best"))
    if isinstance(model, VQVAE):  # reconstruction and codebook use on the test images
        res.update(model.usage(data.test.images))
    if isinstance(model, VAE):
        elbo = model.elbo(data.test.images, 8, torch.Generator().manual_seed(1))
        res["test_elbo_nats"] = round(float(elbo.mean()), 2)
        save_grid(model.interpolate(data.test.images[0], data.test.images[1], 8), out / "interpolation.png")
    res.update(evaluate(samples, data, cfg.seed, cfg.classifier_steps))
    write_json(out / "metrics.json", res)
    print(f"{cfg.family}: {res['steps']} steps in {res['train_s']} s; FID {res['fid']:.3g} (real-vs-real "
          f"{res['fid_real_vs_real']:.3g}, noise {res['fid_noise']:.3g}); grid {out / 'samples.png'}", flush=True)
    return res


@dataclass
class ImageSampleConfig(SampleOptions):
    """`genforge image sample CHECKPOINT`: a PNG grid from a trained image model."""

    checkpoint: str = ""  # an image checkpoint folder (out_dir/checkpoint of `genforge image train`)
    family: str = ""  # expected family (ddpm | vae | flow | gan | vq | ar | maskgit); '' accepts any image family
    out: str = "samples.png"
    n: int = 64
    seed: int = 0
    prompt: str = ""  # text-conditioned DDPM: the caption to draw, e.g. "a small red circle in the top left"
    digit: int = -1  # class-conditioned DDPM / ar / maskgit: the digit to draw (-1: 0..9 in turn)

    def __post_init__(self) -> None:
        SampleOptions.__post_init__(self)
        if self.family and self.family not in FAMILIES:
            raise ConfigError(f"family={self.family!r}: use one of {', '.join(FAMILIES)}")
        if self.n < 1:
            raise ConfigError(f"n={self.n}: must be >= 1")


def main_sample(cfg: ImageSampleConfig) -> Path:
    """Write cfg.n samples as a PNG grid; returns its path."""
    family, model = load_image_model(cfg.checkpoint, cfg.family)
    kind = getattr(model.config, "cond", "none")
    cond = None
    if kind == "text":
        cond = CaptionTokenizer()([cfg.prompt] * cfg.n) if cfg.prompt else None
    elif kind == "class":
        cond = torch.full((cfg.n,), cfg.digit) if cfg.digit >= 0 else torch.arange(cfg.n) % 10
    elif family in TOKEN_FAMILIES and model.config.num_classes and not cfg.prompt:
        labels = torch.full((cfg.n,), cfg.digit) if cfg.digit >= 0 else None
        images = model.sample(cfg.n, cfg.seed, labels=labels, steps=cfg.sample_steps or None)
        path = save_grid(images, cfg.out, nrow=8)
        print(f"{cfg.n} {family} samples -> {path}", flush=True)
        return path
    elif cfg.prompt or cfg.digit >= 0:
        raise ConfigError(f"{cfg.checkpoint}: an unconditional {family} model; drop prompt= / digit=")
    images = generate(family, model, cfg.n, cfg, cfg.seed, cond)
    path = save_grid(images, cfg.out, nrow=8)
    print(f"{cfg.n} {family} samples -> {path}", flush=True)
    return path


@dataclass
class ImageEvalConfig(SampleOptions, DataOptions):
    """`genforge image eval CHECKPOINT`: FID, precision/recall against the data's test split, with baselines."""

    checkpoint: str = ""
    family: str = ""  # expected family; '' accepts any image family
    n_samples: int = 360
    classifier_steps: int = 600
    out: str = ""  # metrics JSON (default: beside the checkpoint, eval.json)

    def __post_init__(self) -> None:
        DataOptions.__post_init__(self)
        SampleOptions.__post_init__(self)


def main_eval(cfg: ImageEvalConfig) -> dict[str, Any]:
    """Sample from the checkpoint and score it against the test split of `dataset`."""
    family, model = load_image_model(cfg.checkpoint, cfg.family)
    data = load_data(cfg)
    if image_shape(model) != data.shape:
        raise ConfigError(f"{cfg.checkpoint}: the model makes {image_shape(model)} images but "
                          f"dataset={cfg.dataset} has {data.shape}; evaluate on the data it was trained on")
    t0 = time.perf_counter()
    samples = generate(family, model, cfg.n_samples, cfg, cfg.seed + 1, eval_conditions(model, data, cfg.n_samples))
    res = {"family": family, "sample_s": round(time.perf_counter() - t0, 2),
           **evaluate(samples, data, cfg.seed, cfg.classifier_steps)}
    write_json(Path(cfg.out or Path(cfg.checkpoint).parent / "eval.json"), res)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items()), flush=True)
    return res


# ------------------------------------------------------------------------------------------------ video
def train_video(vcfg: Any, clips: torch.Tensor, out_dir: str | Path, *, steps: int, batch_size: int, seed: int = 0,
                lr: float = 3e-3, threads: int = 0, progress: bool = False, resume: bool = False
                ) -> tuple[nn.Module, dict]:
    """Train a `video.VideoModel` (config `vcfg`) on clips (N, T, C, H, W) with the shared Trainer; (model, summary)."""
    from genforge.image.video import VideoModel

    torch.manual_seed(seed)
    model = VideoModel(vcfg)
    tcfg = TrainConfig(max_steps=steps, micro_batch=batch_size, lr=lr, warmup_steps=min(20, steps), weight_decay=0.0,
                       beta2=0.999, grad_clip=1.0, eval_every=0, ckpt_every=0, log_every=max(1, min(50, steps // 20)),
                       seed=seed, device="cpu", threads=threads, resume=resume, progress=progress)
    trainer = Trainer(model, tcfg, lambda m, b: m.loss(b), ImageBatches(clips, None, batch_size, seed), out_dir,
                      name=f"video_{vcfg.attention}",
                      save_fn=lambda folder: write_checkpoint_files(folder, model, run_config=asdict(vcfg)))
    summary = trainer.fit()
    return model.eval(), summary
