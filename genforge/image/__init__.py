"""Image generation on the image world: one model family per file.

schedulers/ (DDPM, DDIM: noise schedule and reverse steps), unet.py (eps-predicting denoisers with timestep,
class and text conditioning), diffusion.py (training loss and the sampling loop, classifier-free guidance),
vae.py, flow.py (RealNVP), gan.py, metrics.py (FID on world-classifier features, precision/recall, caption
faithfulness), train.py (per-family train steps and a minimal loop), run.py (typed configs and `main(cfg)`).

Heavy optional dependencies (diffusers for parity tests, pytorch-fid, scikit-learn, Pillow) sit in the `image`
extra.
"""
