"""`genforge scaling [size=reduced|small|gpu] key=value ...`: the sweep, the fitted laws and the report card.

Defaults, then recipes/scaling/<size>.yaml, then the user's --config recipe, then key=value overrides
(the same order as `genforge speedrun`).
"""

from __future__ import annotations

from pathlib import Path

from genforge.config import flatten_keys, load_config, read_recipe, update
from genforge.errors import ConfigError
from genforge.scaling.sweep import ScalingConfig

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "scaling"
SIZES = {"reduced": "5 sizes x 3 budgets of seconds each: a demonstration (minutes on a shared CPU)",
         "small": "6 sizes x 3 budgets on 2 idle cores in <= 60 minutes",
         "gpu": "a bigger sweep for one GPU (depth 2-12, budgets up to 1e16 FLOPs)"}


def resolve(overrides: dict | list | None = None, recipe: str | Path | None = None) -> ScalingConfig:
    """The config: defaults, the size's recipe, the user's recipe, the overrides (every key validated)."""
    size = load_config(ScalingConfig, recipe, overrides).size
    if size not in SIZES:
        raise ConfigError(f"size must be one of {', '.join(SIZES)}; got {size!r}")
    cfg = load_config(ScalingConfig, RECIPES / f"{size}.yaml")
    if recipe is not None:
        cfg = update(cfg, flatten_keys(read_recipe(recipe)))
    return update(cfg, overrides)



def main(cfg: ScalingConfig) -> dict:
    """Run (or continue) the sweep, fit, check, and write out_dir/report.md."""
    import time

    from genforge.config import save_resolved
    from genforge.report import Report, StageReport
    from genforge.scaling.sweep import report, sweep

    t0 = time.perf_counter()
    save_resolved(cfg, cfg.out_dir)
    res = sweep(cfg, progress=cfg.train.progress)
    sr = StageReport("scaling", "Scaling laws, emergence and calibration")
    report(cfg, res, sr)
    sr.seconds = time.perf_counter() - t0
    rep = Report(cfg.out_dir, title=f"genforge scaling report ({cfg.size})")
    rep.save_stage(sr)
    budgets = ", ".join(f"{c:.2g}" for c in cfg.flops)
    path = rep.write(["scaling"], header=f"Sweep of depths {cfg.depths} x budgets [{budgets}] FLOPs on {cfg.shards}; "
                     f"held-out depth {cfg.heldout_depth} at {cfg.heldout_flops:.2g} FLOPs.")
    law = res.law
    print(f"L(N, D) = {law.E:.3f} + {law.A:.3g}/N^{law.alpha:.3f} + {law.B:.3g}/D^{law.beta:.3f}; held-out "
          f"{res.heldout.val_loss:.4f} measured vs {res.heldout_pred:.4f} predicted -> {path}")
    return {"report": str(path), "alpha": law.alpha, "beta": law.beta, "heldout_loss": res.heldout.val_loss,
            "heldout_predicted": res.heldout_pred}
