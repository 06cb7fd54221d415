"""Per-family training steps, a minimal loop and a small checkpoint format for the image models.

Each family exposes one `*_step` function (a batch in, an optimizer step done, floats out) so the lead can move
them onto the shared generic Trainer (several optimizers for the GAN) without changing the math; `train_loop`
here is the stand-in until then. Checkpoints are a folder: `state.pt` (all modules, optimizers, the data RNG) and
`genforge.json` (family, step, config), both written atomically; loading a checkpoint of another family is a
one-line `CheckpointError`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genforge.errors import CheckpointError
from genforge.image.diffusion import diffusion_loss
from genforge.image.flow import RealNVP
from genforge.image.schedulers import DDPMScheduler
from genforge.image.vae import VAE
from genforge.io import atomic_path, write_json

FAMILIES = ("ddpm", "vae", "flow", "gan")


def ddpm_step(model: nn.Module, scheduler: DDPMScheduler, opt: torch.optim.Optimizer, batch: torch.Tensor,
              generator: torch.Generator, cond: torch.Tensor | None = None, p_uncond: float = 0.0
              ) -> dict[str, float]:
    """One step of L_simple (see `diffusion_loss`)."""
    loss = diffusion_loss(model, scheduler, batch, cond, p_uncond, generator)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return {"loss": loss.item()}


def vae_step(vae: VAE, opt: torch.optim.Optimizer, batch: torch.Tensor, generator: torch.Generator,
             beta: float = 1.0) -> dict[str, float]:
    """One step on the negative beta-ELBO."""
    parts = vae.loss(batch, beta, generator)
    opt.zero_grad(set_to_none=True)
    parts["loss"].backward()
    opt.step()
    return {k: v.item() for k, v in parts.items()}


def flow_step(flow: RealNVP, opt: torch.optim.Optimizer, batch: torch.Tensor, generator: torch.Generator,
              levels: int) -> dict[str, float]:
    """One maximum-likelihood step (bits/dim of the dequantized batch)."""
    bpd = flow.bits_per_dim(batch, levels, generator)
    opt.zero_grad(set_to_none=True)
    bpd.backward()
    nn.utils.clip_grad_norm_(flow.parameters(), 5.0)
    opt.step()
    return {"bpd": bpd.item()}


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """The item indices of batch `step`: epoch e is a permutation seeded by (seed, e), so any step can be replayed
    without saved iterator state (exact resume)."""
    per_epoch = max(1, n // batch_size)
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[i * batch_size: (i + 1) * batch_size]


def train_loop(step_fn: Callable[[torch.Tensor], dict[str, float]], n_items: int, steps: int, batch_size: int,
               seed: int, start_step: int = 0, time_budget_s: float | None = None, log_every: int = 0,
               on_log: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Call `step_fn(indices)` for steps start_step..steps-1 (or until the time budget); returns per-step metrics."""
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    for step in range(start_step, steps):
        m = step_fn(batch_indices(n_items, batch_size, seed, step))
        history.append(m)
        if log_every and on_log and (step + 1) % log_every == 0:
            on_log(step + 1, m)
        if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
            break
    return history


def save_checkpoint(folder: str | Path, family: str, step: int, modules: dict[str, nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer] | None = None,
                    generator: torch.Generator | None = None, config: dict[str, Any] | None = None) -> Path:
    """Write `folder/state.pt` and `folder/genforge.json` atomically (state first, so the json marks completion)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {"family": family, "step": step, "modules": {k: m.state_dict() for k, m in modules.items()},
             "optimizers": {k: o.state_dict() for k, o in (optimizers or {}).items()},
             "generator": generator.get_state() if generator is not None else None}
    with atomic_path(folder / "state.pt") as tmp:
        torch.save(state, tmp)
    write_json(folder / "genforge.json", {"family": family, "step": step, "config": config or {}})
    return folder


def load_checkpoint(folder: str | Path, family: str, modules: dict[str, nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer] | None = None,
                    generator: torch.Generator | None = None) -> int:
    """Restore modules/optimizers/RNG in place from a checkpoint folder; returns its step."""
    folder = Path(folder)
    meta_path = folder / "genforge.json"
    if not meta_path.exists() or not (folder / "state.pt").exists():
        raise CheckpointError(f"{folder}: no image checkpoint (genforge.json + state.pt); train one first")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("family") != family:
        raise CheckpointError(f"{meta_path}: a {meta.get('family')!r} checkpoint, but a {family!r} model was asked "
                              f"for; use family={meta.get('family')} or another folder")
    state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    for k, m in modules.items():
        if k not in state["modules"]:
            raise CheckpointError(f"{folder / 'state.pt'}: no module {k!r} (has {sorted(state['modules'])})")
        m.load_state_dict(state["modules"][k])
    for k, o in (optimizers or {}).items():
        o.load_state_dict(state["optimizers"][k])
    if generator is not None and state["generator"] is not None:
        generator.set_state(state["generator"])
    return int(state["step"])
