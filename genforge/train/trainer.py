"""The one shared training loop. Every stage (pretrain, SFT, reward, DPO, PPO, distill...) calls it.

A stage supplies three things:
  * `loss_fn(model, batch) -> (loss_sum, count, metrics)`: the *sum* of per-item losses in the
    micro-batch and the number of items (tokens, pairs...) it was summed over;
  * a data source with `get_batch(step, micro, rank, world) -> batch`, a pure function of its
    arguments (so "data position" is just the step and resume is exact);
  * optionally `eval_fn(model) -> metrics` and `save_fn(folder)` (writes the HF-format model files).

Gradient accumulation normalises correctly: the gradients of all micro-batches (and, under DDP,
all ranks) are summed and divided once by the *total* count, so a step over 2x8 sequences equals
one over 16 however the tokens are split (the bug torchtune issue #2307 describes cannot happen
here: there is only one loop).

Several optimizers (a GAN's discriminator and generator, an actor and a critic with their own
learning rates) are `Part`s: each has its parameters, its loss and a schedule (`every`, `phase`), and
runs its own accumulate -> clip -> step on the step's batches, in list order. One `loss_fn` is simply
one part over every trainable parameter.

Checkpoints and resume go through `genforge.checkpoint.core`: atomic folders, the newest complete
checkpoint found after a kill at any instant, training state loaded with `weights_only=True`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from genforge import runtime
from genforge.checkpoint.core import find_resume_state, save_training_state
from genforge.errors import TrainingError
from genforge.io import atomic_dir, atomic_path, storage_error
from genforge.train import fsdp


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping shared by every stage."""

    max_steps: int = 1000  # optimizer steps
    micro_batch: int = 16  # sequences per forward, per process
    grad_accum: int = 1  # micro-batches per optimizer step (global batch = micro_batch * grad_accum * world)
    lr: float = 0.0  # peak learning rate; 0 -> the model's size-derived default
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.1  # applied to matrices only, not to norms/biases/embeddings' gains
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global grad norm (0 = off)
    eval_every: int = 100  # steps between evals (0 = only at the end)
    ckpt_every: int = 200  # steps between checkpoints (0 = only at the end)
    log_every: int = 10
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:1 | mps
    precision: str = "auto"  # auto (bf16 autocast on CUDA and on CPUs with native bf16, else fp32) | fp32 | bf16 | fp16
    threads: int = 0  # torch intra-op threads (0 = default)
    compile: bool = False  # torch.compile the model (pays off on GPU and for long CPU runs)
    resume: bool = True  # continue from out_dir/checkpoint if it exists
    max_bad_steps: int = 0  # non-finite losses skipped before the run stops (0 = stop at the first)
    progress: bool = True  # show a progress bar
    parallel: str = "ddp"  # ddp (full copy per process) | fsdp (FSDP2: shard weights/grads/optimizer; under torchrun)
    activation_checkpointing: bool = False  # recompute blocks in backward: less memory, ~1/3 more compute


class DataSource(Protocol):
    def get_batch(self, step: int, micro: int, rank: int, world: int) -> Any: ...


LossFn = Callable[[torch.nn.Module, Any], tuple[torch.Tensor, Any, dict]]


@dataclass
class Part:
    """One optimizer's share of a step: which parameters it moves, by which loss, and on which steps.

    It runs on steps where `step % every == phase` (every=1: each step; every=2, phase 0/1: alternate).
    `params` is a module or a list of parameters; `lr` 0 means the trainer's peak lr.
    """

    name: str
    params: torch.nn.Module | Sequence[torch.nn.Parameter]
    loss_fn: LossFn
    every: int = 1
    phase: int = 0
    lr: float = 0.0

    def runs_at(self, step: int) -> bool:
        return step % self.every == self.phase


def lr_at(step: int, cfg: TrainConfig, peak: float) -> float:
    """Linear warmup to `peak`, then cosine decay to peak * min_lr_ratio at max_steps."""
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return peak * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: torch.nn.Module | Sequence[torch.nn.Parameter], cfg: TrainConfig,
                   lr: float) -> torch.optim.Optimizer:
    """AdamW; weight decay on >=2-D weights only (decaying norm gains hurts, Loshchilov & Hutter 2019)."""
    params = [p for p in (model.parameters() if isinstance(model, torch.nn.Module) else model) if p.requires_grad]
    if not params:
        raise TrainingError("nothing to train: every parameter is frozen (check the PEFT / selective-tuning settings)")
    seen, decay, no_decay = set(), [], []
    for p in params:
        if id(p) in seen:  # tied weights appear once
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = {"fused": True} if next(iter(params)).is_cuda else {}
    return torch.optim.AdamW(groups, lr=lr, betas=(cfg.beta1, cfg.beta2), **fused)


class Trainer:
    """Runs `cfg.max_steps` optimizer steps of `loss_fn` (or of several `Part`s) over `data`, with eval,
    logging, checkpoints and exact resume. `model` is any `nn.Module`; the loop reads nothing from it but
    its parameters."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, loss_fn: LossFn | Sequence[Part], data: DataSource,
                 out_dir: str | Path, *, eval_fn: Callable[[torch.nn.Module], dict] | None = None,
                 save_fn: Callable[[Path], None] | None = None, default_lr: float = 3e-4, name: str = "train"):
        self.cfg, self.data, self.eval_fn, self.save_fn = cfg, data, eval_fn, save_fn
        self.out_dir = Path(out_dir)
        self.name = name
        runtime.set_threads(cfg.threads)
        self.rank, self.world = runtime.init_distributed()
        self.device = runtime.resolve_device(cfg.device)
        self.model = model.to(self.device)
        if cfg.parallel not in ("ddp", "fsdp"):
            raise TrainingError(f"[{name}] train.parallel must be ddp or fsdp, got {cfg.parallel!r}")
        if cfg.activation_checkpointing:
            fsdp.activation_checkpointing(self.model)
        # FSDP shards the parameters before the optimizers are built (they step the shards); one process = plain
        self.fsdp = cfg.parallel == "fsdp" and self.world > 1
        self.full_copy = None
        if self.fsdp:
            if not callable(loss_fn):
                raise TrainingError(f"[{name}] several optimizers under FSDP are not supported; use parallel=ddp")
            self.full_copy = fsdp.FullCopy(self.model)  # meta twin for writing HF files from gathered weights
            fsdp.shard(self.model, cfg.precision, self.device)
        self.peak_lr = cfg.lr or default_lr
        self.single = callable(loss_fn)
        self.parts = [Part("model", self.model, loss_fn)] if callable(loss_fn) else list(loss_fn)
        if not self.parts or len({p.name for p in self.parts}) != len(self.parts):
            raise TrainingError(f"[{name}] parts need distinct names, got {[p.name for p in self.parts]}")
        if len(self.parts) > 1 and self.world > 1:
            raise TrainingError(f"[{name}] several optimizers under DDP are not supported yet; run on one process")
        self.optimizers = {p.name: make_optimizer(p.params, cfg, p.lr or self.peak_lr) for p in self.parts}
        self.optimizer = self.optimizers[self.parts[0].name]  # the one optimizer of a single-loss run
        self.step = 0
        self.bad_steps = 0
        self.last_eval: dict = {}
        self.ckpt_dir = self.out_dir / "checkpoint"
        self.metrics_path = self.out_dir / "metrics.jsonl"
        runtime.seed_all(cfg.seed + self.rank)
        if cfg.resume:
            found = find_resume_state(self.ckpt_dir, self.device)
            if found is not None:
                self._load_state(*found)
        self._trim_metrics()
        self.ddp = DDP(self.model) if self.world > 1 and not self.fsdp else None
        fwd = self.ddp or self.model
        self.forward_model = torch.compile(fwd) if cfg.compile else fwd

    # ---------------------------------------------------------------- checkpointing
    def _load_state(self, folder: Path, state: dict) -> None:
        if state.get("sharded"):
            if not self.fsdp:
                raise TrainingError(f"{folder}: a sharded (FSDP) checkpoint; resume it under torchrun with "
                                    "train.parallel=fsdp, or pass train.resume=false to start over")
            fsdp.load_sharded(folder, self.model, self.optimizers)
        elif self.fsdp:
            raise TrainingError(f"{folder}: a full (unsharded) checkpoint cannot resume an FSDP run; use "
                                "train.parallel=ddp, or train.resume=false to start over")
        else:
            self._load_full(folder, state)
        self.step, self.bad_steps = state["step"], state["bad_steps"]
        runtime.set_rng_state(state["rng"][min(self.rank, len(state["rng"]) - 1)])
        if hasattr(self.data, "load_state_dict") and "data" in state:
            self.data.load_state_dict(state["data"])
        if runtime.is_main():
            note = "" if folder == self.ckpt_dir else f" (newest complete checkpoint; {self.ckpt_dir} was not usable)"
            print(f"[{self.name}] resumed from {folder} at step {self.step}{note}", flush=True)

    def _load_full(self, folder: Path, state: dict) -> None:
        # PEFT runs store only trainable tensors: the frozen base comes from where the stage loaded it
        missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        saved_parts = set(state.get("optimizers", {}))
        if unexpected or set(missing) & trainable or saved_parts != set(self.optimizers):
            raise TrainingError(f"{folder}: saved state does not fit this model (missing "
                                f"{sorted(set(missing) & trainable)[:3]}, unexpected {unexpected[:3]}, optimizers "
                                f"{sorted(saved_parts)} vs {sorted(self.optimizers)}); was the config changed? "
                                "Use train.resume=false to start over")
        for part_name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][part_name])

    def _trim_metrics(self) -> None:
        """Keep the log rows up to the step training continues from: rows past it will be produced again (no
        duplicates), and a torn last line (an append cut by a kill or a full disk) is dropped, not parsed."""
        if not runtime.is_main() or not self.metrics_path.exists():
            return
        keep, changed = [], False
        for line in self.metrics_path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
                ok = isinstance(row, dict) and row.get("step", 0) <= self.step
            except json.JSONDecodeError:
                ok = False
            keep.append(line) if ok else None
            changed = changed or not ok
        if changed:
            try:
                with atomic_path(self.metrics_path) as tmp:
                    tmp.write_text("".join(ln + "\n" for ln in keep))
            except OSError as e:
                raise storage_error(e, self.metrics_path) from None

    def save(self) -> None:
        """Write model files (via save_fn) and exact-resume state into out_dir/checkpoint, atomically."""
        rngs = [runtime.rng_state()]
        if self.world > 1:  # every rank's RNG, gathered to rank 0
            rngs = [None] * self.world
            dist.all_gather_object(rngs, runtime.rng_state())
        if self.fsdp:
            return self._save_sharded(rngs)
        if not runtime.is_main():
            return
        with atomic_dir(self.ckpt_dir) as tmp:
            if self.save_fn:
                self.save_fn(tmp)
            state = {"model": self._resume_weights(), "step": self.step, "bad_steps": self.bad_steps, "rng": rngs,
                     "optimizers": {n: opt.state_dict() for n, opt in self.optimizers.items()}}
            self._write_state(tmp, state)

    def _write_state(self, tmp: Path, state: dict) -> None:
        if hasattr(self.data, "state_dict"):
            state["data"] = self.data.state_dict()
        save_training_state(tmp, state)
        (tmp / "trainer_state.json").write_text(json.dumps({"step": self.step, **self.last_eval}, indent=2))

    def _save_sharded(self, rngs: list) -> None:
        """FSDP: every rank writes its shards into rank 0's temp folder (DCP), rank 0 adds the HF files (from
        gathered full weights) and the small state, then renames the folder into place: still atomic."""
        main = runtime.is_main()
        full_model = self.full_copy.gather(self.model, main)  # collective
        with contextlib.ExitStack() as stack:
            tmp = [str(stack.enter_context(atomic_dir(self.ckpt_dir))) if main else None]
            dist.broadcast_object_list(tmp, src=0)
            fsdp.save_sharded(Path(tmp[0]), self.model, self.optimizers)  # collective
            if main:
                if self.save_fn:
                    # the stage's save_fn writes `trainer.model`: point it at the full twin while it writes
                    sharded, self.model = self.model, full_model
                    try:
                        self.save_fn(Path(tmp[0]))
                    finally:
                        self.model = sharded
                self._write_state(Path(tmp[0]), {"sharded": True, "step": self.step, "bad_steps": self.bad_steps,
                                                 "rng": rngs})
        dist.barrier()  # no rank runs ahead while rank 0 renames

    def _resume_weights(self) -> dict:
        """The weights resume needs: all of them, or only the trainable ones when part of the model is frozen."""
        frozen = {n for n, p in self.model.named_parameters() if not p.requires_grad}
        sd = self.model.state_dict()
        return sd if not frozen else {k: v for k, v in sd.items() if k not in frozen}

    def log(self, row: dict) -> None:
        if runtime.is_main():
            try:
                self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.metrics_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
            except OSError as e:
                raise storage_error(e, self.metrics_path, "appending to the log") from None

    # ---------------------------------------------------------------- the loop
    def evaluate(self) -> dict:
        if self.eval_fn is None:
            return {}
        self.model.eval()
        with torch.no_grad(), runtime.autocast(self.device, self.cfg.precision):
            metrics = self.eval_fn(self.model)
        self.model.train()
        self.last_eval = metrics
        self.log({"step": self.step, "split": "val", **metrics})
        return metrics

    def train_step(self) -> dict:
        """One optimizer step of every part scheduled now, over grad_accum micro-batches; returns its metrics.

        A single-loss run logs loss/lr/grad_norm; several parts log each as `<metric>_<part>`, plus `loss` and
        `lr` of the first part that ran (for the progress bar)."""
        def fetch(m: int) -> Any:
            return _to_device(self.data.get_batch(self.step, m, self.rank, self.world), self.device)

        # several parts see the same micro-batches: fetch each once; one part fetches lazily, as it always did
        batches = fetch if self.single else functools.cache(fetch)
        out: dict = {}
        for part in self.parts:
            if not part.runs_at(self.step):
                continue
            m = self._part_step(part, batches)
            if self.single:
                return m
            out.setdefault("loss", m["loss"])
            out.setdefault("lr", m["lr"])
            out["count"] = max(out.get("count", 0.0), m.get("count", 0.0))
            out.update({f"{k}_{part.name}": v for k, v in m.items() if k != "count"})
        if not out:  # no part is scheduled at this step
            out = {"loss": float("nan"), "lr": 0.0}
        return out

    def _part_step(self, part: Part, batches: Callable[[int], Any]) -> dict:
        cfg, model, opt = self.cfg, self.forward_model, self.optimizers[part.name]
        lr = lr_at(self.step, cfg, part.lr or self.peak_lr)
        for g in opt.param_groups:
            g["lr"] = lr
        total_loss = torch.zeros((), device=self.device)
        total_count = torch.zeros((), device=self.device)
        extra: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            batch = batches(micro)
            sync = self.ddp is None or micro == cfg.grad_accum - 1
            ctx = self.ddp.no_sync() if not sync else contextlib.nullcontext()
            if self.fsdp:
                fsdp.set_gradient_sync(self.model, micro == cfg.grad_accum - 1)
            with ctx, runtime.autocast(self.device, cfg.precision):
                loss_sum, count, metrics = part.loss_fn(model, batch)
            with ctx:
                loss_sum.backward()
            total_loss += loss_sum.detach().float()
            total_count += float(count)
            for k, v in metrics.items():
                extra[k] = extra.get(k, 0.0) + float(v) / cfg.grad_accum
        if self.world > 1:
            dist.all_reduce(total_loss)
            dist.all_reduce(total_count)
        # DDP (and FSDP's reduce-scatter) averaged gradients over ranks; sum/total_count is the exact mean over every
        # item of the step
        scale = self.world / total_count.clamp(min=1.0)
        loss = (total_loss / total_count.clamp(min=1.0)).item()
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        for p in params:
            p.grad.mul_(scale)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        grad_norm = fsdp.full_norm(grad_norm) if self.fsdp else grad_norm
        finite = math.isfinite(loss) and math.isfinite(float(grad_norm))
        if finite:
            opt.step()
        # every part's loss may reach other parts' parameters (G's loss flows through D): clear all grads
        opt.zero_grad(set_to_none=True)
        self.model.zero_grad(set_to_none=True)
        if not finite:
            self.bad_steps += 1
            if self.bad_steps > cfg.max_bad_steps:
                where = "" if self.single else f" ({part.name})"
                raise TrainingError(
                    f"[{self.name}] step {self.step}{where}: loss is {loss} (grad norm {float(grad_norm)}); stopping. "
                    f"Lower train.lr (now {part.lr or self.peak_lr:g}), check the data, or resume from {self.ckpt_dir}")
            return {"loss": loss, "skipped": 1, "lr": lr}
        return {"loss": loss, "lr": lr, "grad_norm": float(grad_norm), "count": float(total_count), **extra}

    def fit(self) -> dict:
        """Train to max_steps (from the resumed step), evaluating and checkpointing on schedule."""
        cfg = self.cfg
        self.model.train()
        bar = None
        if cfg.progress and runtime.is_main():
            from genforge.progress import Progress

            bar = Progress(total=cfg.max_steps, initial=self.step, desc=self.name, unit="step")
        t0, items, recent = time.perf_counter(), 0.0, []
        last: dict = {}
        while self.step < cfg.max_steps:
            ts = time.perf_counter()
            last = self.train_step()
            self.step += 1
            items += last.get("count", 0.0)
            dt = time.perf_counter() - ts
            recent = (recent + [(last.get("count", 0.0), dt)])[-20:]
            rate = sum(c for c, _ in recent) / max(1e-9, sum(d for _, d in recent))
            if bar is not None:
                # postfix first, so a logged progress line shows this step's numbers
                bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}", tok_s=f"{rate:,.0f}")
                bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                self.log({"step": self.step, "split": "train", "items_per_s": rate, **last})
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.max_steps:
                self.evaluate()
            if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and self.step < cfg.max_steps:
                self.save()
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - t0
        final = self.evaluate() if self.eval_fn else {}
        self.save()
        return {"step": self.step, "train_loss": last.get("loss"), **final, "elapsed_s": elapsed,
                "items_per_s": items / max(elapsed, 1e-9), "bad_steps": self.bad_steps}


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def read_metrics(out_dir: str | Path, split: str = "train") -> list[dict]:
    """Rows of a run's metrics.jsonl for one split."""
    path = Path(out_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a torn last line (killed mid-append) is not a row
            rows.append(json.loads(line))
    return [r for r in rows if isinstance(r, dict) and r.get("split") == split]
