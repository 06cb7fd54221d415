"""A quick measured image run on digits: an MLP DDPM and an MLP GAN for ~1-2 minutes each, with FID rows.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/image_quick.py [--budget 75] [--out runs/image_quick]

FID here is on features of a small CNN trained in the same run on the digits training split; the rows that give
it meaning are printed beside it: real-vs-real (training images against the test images: the floor a perfect
generator would reach with this many samples) and uniform noise (the ceiling). Not comparable with CIFAR-10 FIDs.
Writes sample grids (PNG) under --out.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import genforge  # noqa: F401  (sets OMP_WAIT_POLICY)
from genforge.image.run import DDPMConfig, FlowConfig, GANConfig, VAEConfig, main


def run(budget: float, out: str, seed: int, everything: bool = False) -> list[dict]:
    rows = []
    for sub in ("ddpm", "gan", "vae", "flow"):  # start fresh: the mains resume from a checkpoint they find
        shutil.rmtree(Path(out) / sub, ignore_errors=True)
    common = {"dataset": "digits", "seed": seed, "time_budget_s": budget, "n_samples": 360, "classifier_steps": 600}
    t = time.perf_counter()
    rows.append(("DDPM (MLP, T=200, ancestral)", main(DDPMConfig(out_dir=f"{out}/ddpm", steps=100_000, batch_size=128,
                                                                 lr=1e-3, hidden=512, **common))))
    rows.append(("GAN (MLP, EMA generator)", main(GANConfig(out_dir=f"{out}/gan", steps=100_000, batch_size=64,
                                                            lr=5e-4, hidden=256, **common))))
    if everything:
        rows.append(("VAE (MLP, latent 16)", main(VAEConfig(out_dir=f"{out}/vae", steps=100_000, batch_size=64,
                                                            lr=1e-3, **common))))
        rows.append(("RealNVP (8 couplings)", main(FlowConfig(out_dir=f"{out}/flow", steps=100_000, batch_size=64,
                                                              lr=1e-3, eval_every=200, **common))))
    total = time.perf_counter() - t
    print(f"\nimage_quick on digits (8x8), seed {seed}, {budget:.0f} s training budget per family, total {total:.0f} s")
    print(f"{'model':32s} {'steps':>6s} {'train s':>8s} {'sample s':>8s} {'FID':>8s} {'real-real':>9s} "
          f"{'noise':>8s} {'prec':>5s} {'rec':>5s}")
    for name, r in rows:
        print(f"{name:32s} {r['steps']:6d} {r['train_s']:8.1f} {r.get('sample_s', 0.0):8.1f} {r['fid']:8.3f} "
              f"{r['fid_real_vs_real']:9.3f} {r['fid_noise']:8.3f} {r['precision']:5.2f} {r['recall']:5.2f}")
    for name, r in rows:
        if "test_bpd" in r:
            print(f"{name}: train {r['train_bpd']:.3f} / test {r['test_bpd']:.3f} bits/dim at the best-test step "
                  f"{r['best_step']} of {r['steps']}; curve (step, train, test): {r['bpd_curve']}")
        if "test_elbo_nats" in r:
            print(f"{name}: test ELBO {r['test_elbo_nats']} nats/image")
    print("grids: " + ", ".join(f"{out}/{r['family']}/samples.png" for _, r in rows))
    return [r for _, r in rows]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=75.0, help="training seconds per family")
    ap.add_argument("--out", default="runs/image_quick")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--all", action="store_true", help="also the VAE and the RealNVP flow")
    a = ap.parse_args()
    run(a.budget, a.out, a.seed, a.all)
