"""A quick measured image run on digits: each family trained for a fixed number of steps, with FID rows.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/image_quick.py [--scale 1.0] [--out runs/image_quick] [--all]

FID here is on features of a small CNN trained in the same run on the digits training split; the rows that give
it meaning are printed beside it: real-vs-real (training images against the test images: the floor a perfect
generator would reach with this many samples) and uniform noise (the ceiling). Not comparable with CIFAR-10 FIDs.
Training runs on the shared Trainer (`genforge image train`); step counts are those of the speedrun's `image`
stage at `tiny`, times `--scale`. Writes sample grids (PNG) under --out.
"""

from __future__ import annotations

import argparse
import time

import genforge  # noqa: F401  (sets OMP_WAIT_POLICY)
from genforge.image.diffusion import DiffusionConfig
from genforge.image.run import ImageTrainConfig, main_train

STEPS = {"ddpm": 1500, "gan": 3000, "vae": 3000, "flow": 1000}  # the speedrun's tiny image stage


def run(scale: float, out: str, seed: int, everything: bool = False) -> list[dict]:
    rows = []
    names = {"ddpm": "DDPM (MLP 256, T=200, ancestral)", "gan": "GAN (MLP, EMA generator)",
             "vae": "VAE (MLP, latent 16)", "flow": "RealNVP (8 couplings)"}
    t = time.perf_counter()
    for fam in ("ddpm", "gan", "vae", "flow") if everything else ("ddpm", "gan"):
        cfg = ImageTrainConfig(family=fam, out_dir=f"{out}/{fam}", dataset="digits", seed=seed, resume=False,
                               steps=max(1, int(STEPS[fam] * scale)), batch_size=128 if fam == "ddpm" else 64,
                               eval_every=100, n_samples=360, classifier_steps=600, progress=False,
                               ddpm=DiffusionConfig(hidden=256))
        rows.append((names[fam], main_train(cfg)))
    total = time.perf_counter() - t
    print(f"\nimage_quick on digits (8x8), seed {seed}, steps x {scale:g}, total {total:.0f} s")
    print(f"{'model':34s} {'steps':>6s} {'train s':>8s} {'sample s':>8s} {'FID':>8s} {'real-real':>9s} "
          f"{'noise':>8s} {'prec':>5s} {'rec':>5s}")
    for name, r in rows:
        print(f"{name:34s} {r['steps']:6d} {r['train_s']:8.1f} {r['sample_s']:8.1f} {r['fid']:8.3f} "
              f"{r['fid_real_vs_real']:9.3f} {r['fid_noise']:8.3f} {r['precision']:5.2f} {r['recall']:5.2f}")
    for name, r in rows:
        if "test_bpd" in r:
            print(f"{name}: train {r['train_bpd']:.3f} / test {r['test_bpd']:.3f} bits/dim at the best-test step "
                  f"{r['best_step']} of {r['steps']} (curve: {out}/flow/metrics.jsonl, split 'val')")
        if "test_elbo_nats" in r:
            print(f"{name}: test ELBO {r['test_elbo_nats']} nats/image")
    print("grids: " + ", ".join(f"{out}/{r['family']}/samples.png" for _, r in rows))
    return [r for _, r in rows]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every family's step count")
    ap.add_argument("--out", default="runs/image_quick")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--all", action="store_true", help="also the VAE and the RealNVP flow")
    a = ap.parse_args()
    run(a.scale, a.out, a.seed, a.all)
