"""`genforge plan [MODEL] method=... device=...`: memory by part, time per step and whether it fits."""

from __future__ import annotations

from genforge.scaling.plan import DEVICES, METHODS, PRECISIONS, SHAPES, PlanConfig, plan, render

# for `genforge plan --help`
MODELS = {name: f"{c.resolved().depth} layers, width {c.resolved().width}" for name, c in SHAPES.items()}
DEVICE_HELP = {name: f"{d.memory_gib:g} GiB, {d.bf16_tflops:g} bf16 TFLOP/s" for name, d in DEVICES.items()}
DEVICE_HELP["24gb"] += " (a generic 24 GB card: an RTX 4090's peak)"
DEVICE_HELP["80gb"] += " (a generic 80 GB card: an H100's peak)"
DEVICE_HELP["cpu"] = "no memory limit; give peak_tflops (measured) for a time estimate"


def main(cfg: PlanConfig) -> dict:
    """Print the plan; returns its numbers."""
    p = plan(cfg)
    print(render(p))
    return {"total_gib": p.total_gib, "fits": p.fits, "step_s": p.step_s, "tokens_per_s": p.tokens_per_s,
            **{f"{k}_gib": v for k, v in p.memory_gib.items()}}


__all__ = ["DEVICE_HELP", "METHODS", "MODELS", "PRECISIONS", "main"]
