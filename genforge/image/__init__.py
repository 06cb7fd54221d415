"""Image generation on the image world: one model family per file.

schedulers/ (DDPM, DDIM: noise schedule and reverse steps), unet.py (eps-predicting denoisers with timestep, class
and text conditioning), diffusion.py (training loss, the sampling loop with classifier-free guidance, and the
checkpointable `DiffusionModel`), vae.py, flow.py (RealNVP), gan.py, ema.py (weight averages to sample from), vq.py
(VQ-VAE: images <-> a grid of discrete tokens), ar.py (a GPT prior over those tokens, one token per forward),
maskgit.py (mask-predict over the same tokens, all at once in K steps), video.py (next-frame prediction with
factorised spatial + temporal attention or full 3-D attention), metrics.py (FID on world-classifier features with
bootstrap intervals, precision/recall, caption faithfulness), clip.py (a small CLIP trained here and the CLIP score),
latent.py (latent diffusion: VAE first stage + text-conditioned latent denoiser), inversion.py (textual inversion:
one new token embedding), run.py (`genforge image train|sample|eval`: every family trained by the shared
`train.trainer.Trainer` and saved by the generic `checkpoint` core, one registered family per model bundle).

Heavy optional dependencies (diffusers for parity tests, pytorch-fid, scikit-learn, Pillow) sit in the `image`
extra.
"""
