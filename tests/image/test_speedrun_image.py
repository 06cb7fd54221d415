"""The speedrun's `image` stage at size smoke: it runs alone (no earlier stage), writes its outputs, lessons,
rows and plots, and its checkpoints load as image models."""

import json

from genforge.image.run import load_image_model
from genforge.io import read_run_json
from genforge.speedrun import main, resolve


def test_image_stage_at_smoke(tmp_path):
    cfg = resolve(["size=smoke", f"runs_dir={tmp_path}", "stages=image", "progress=false"])
    report = main(cfg).read_text()
    run = tmp_path / "smoke"
    out = read_run_json(run, "image")  # $RUN paths resolved
    assert set(out["fid"]) == {"ddpm", "gan", "vae", "flow"}
    assert out["fid_noise"] > out["fid_real_vs_real"] > 0
    assert set(out["faithfulness"]) == {"0", "1", "3"}
    assert set(out["sampler_fid"]) == {"ddpm-50", "ddim-5", "ddim-10"}
    for name in ("image_families", "image_samplers", "image_quality_vs_time", "image_text_guidance",
                 "image_guidance_sweep", "image_latent", "image_guidance_latent", "image_inversion",
                 "image_tokens", "image_tokens_quality_vs_time", "image_video", "image_vae_editing"):
        assert (run / "plots" / f"{name}.png").stat().st_size > 1000, name
    stage = json.loads((run / "report" / "image.json").read_text())
    claims = [les["claim"] for les in stage["lessons"]]
    # four families, DDIM speed, colour and colour+shape conditioning, guidance; CLIP real vs shuffled and retrieval,
    # CLIP score conditional and guided; latent vs pixel, latent sampling speed, latent guidance; inversion vs random
    # token and vs the nearest word; VAE noise editing; mask-predict speed and FID; video cost, drift and drift vs
    # copying
    assert len(claims) == 23
    assert all(les["low"] is not None for les in stage["lessons"]
               if "faster" not in les["claim"] and "costs less" not in les["claim"])
    assert "FID real vs real" in report and "CIFAR-10" in report  # the FID is labelled for what it is
    assert load_image_model(out["checkpoints"]["text"], "ddpm")[1].config.cond == "text"
    assert load_image_model(out["checkpoints"]["gan"])[0] == "gan"
    assert out["clip"]["real"] > out["clip"]["shuffled"] and set(out["clip_score"]) == {"0", "1", "3"}
    assert {"hit_latent", "hit_pixel", "train_cpu_latent", "sample_cpu_pixel"} <= set(out["latent"])
    assert set(out["inversion"]) == {"learned token", "random token", "nearest word", "the words"}
    assert set(out["precision_recall"]) == {"real", "noise", "ddpm", "gan", "vae", "flow"}
    assert out["precision_recall"]["real"]["precision"] > out["precision_recall"]["noise"]["precision"]
    assert "precision / recall" in report and "CLIP score" in report
    assert load_image_model(out["checkpoints"]["vq"])[0] == "vq"
    for fam in ("ar", "maskgit"):
        family, model = load_image_model(out["checkpoints"][fam], fam)
        assert model.sample(2, seed=0).shape == (2, 1, 8, 8)
    assert {"video_factorised", "video_full"} <= set(out["checkpoints"])
    assert set(out["vae_editing"]) == {"red_before", "red_after", "shape_kept"}
