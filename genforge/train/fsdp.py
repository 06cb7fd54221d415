"""FSDP2 for the shared trainer: shard parameters, gradients and optimizer state across processes.

DDP keeps a full copy of the weights, gradients and AdamW moments on every device (16 bytes per parameter
in fp32 + Adam), so a model stops fitting long before its activations do. FSDP (Zhao et al. 2023,
"PyTorch FSDP"; ZeRO-3 of Rajbhandari et al. 2020) keeps 1/world of each on each rank and all-gathers a
block's weights just before it runs. FSDP2 (`torch.distributed.fsdp.fully_shard`) does this with
per-parameter `DTensor` shards, so the optimizer and gradient clipping see ordinary (sharded) parameters.

What the trainer calls, all collective (every rank calls them, in the same order):
  * `shard(model, precision, device)`: wrap each transformer block, then the root (the blocks are the
    all-gather units: one block's full weights live at a time);
  * `save_sharded(folder, model, optimizers)` / `load_sharded(folder, model, optimizers)`: the resume state
    via `torch.distributed.checkpoint` (DCP: each rank writes its own shards, plus metadata), so no rank ever
    holds the full optimizer state (DCP can reshard on load; resuming with another process count is untested
    here, and would change which rank reads which batches);
  * `FullCopy`: a meta-device twin of the model that rank 0 fills with the gathered full weights to write
    the Hugging Face files beside the shards (a checkpoint folder stays one a `transformers` user loads).

`activation_checkpointing(model)` (Chen et al. 2016) recomputes each block's forward during backward instead
of keeping its activations: ~1/3 more compute for activations of O(depth) block inputs instead of
O(depth x everything inside a block). It works with or without FSDP.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

SHARDED_DIR = "sharded"  # DCP folder inside a checkpoint folder


def blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a model (`model.layers`, as GPT and HF Llama name them); [] when it has none."""
    layers = getattr(model, "layers", None) or getattr(getattr(model, "model", None), "layers", None)
    return list(layers) if isinstance(layers, nn.ModuleList) else []


def activation_checkpointing(model: nn.Module) -> int:
    """Recompute every block's forward in backward (non-reentrant `torch.utils.checkpoint`); returns the count.

    The block's `forward` is replaced on the instance, so parameter names (and checkpoints) do not change."""
    n = 0
    for block in blocks(model):
        if getattr(block, "_gf_checkpointed", False):
            continue
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
        block._gf_checkpointed = True
        n += 1
    return n


def mixed_precision(precision: str, device: torch.device):
    """FSDP2's policy for `train.precision`: bf16/fp16 weights in compute, fp32 gradient reduction and
    fp32 master weights in the optimizer; None (plain fp32) otherwise, and for `auto` off CUDA."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def shard(model: nn.Module, precision: str, device: torch.device) -> nn.Module:
    """Shard `model` in place over the default process group (blocks first, then the root); returns it."""
    from torch.distributed.fsdp import fully_shard

    kwargs = {}
    mp = mixed_precision(precision, device)
    if mp is not None:
        kwargs["mp_policy"] = mp
    for block in blocks(model):
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def set_gradient_sync(model: nn.Module, sync: bool) -> None:
    """Skip the reduce-scatter on all but the last micro-batch of an accumulated step (FSDP's `no_sync`)."""
    model.set_requires_gradient_sync(sync)


def full_norm(norm: torch.Tensor) -> torch.Tensor:
    """The global gradient norm as a plain tensor (clip_grad_norm_ over DTensor shards returns a DTensor)."""
    from torch.distributed.tensor import DTensor

    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def save_sharded(folder: Path, model: nn.Module, optimizers: dict[str, torch.optim.Optimizer]) -> None:
    """Each rank writes its shards of the weights and the optimizer state under folder/sharded (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    state = {}
    for name, opt in optimizers.items():
        msd, osd = get_state_dict(model, opt)
        state["model"], state[f"optim.{name}"] = msd, osd
    dcp.save(state, checkpoint_id=str(Path(folder) / SHARDED_DIR))


def load_sharded(folder: Path, model: nn.Module, optimizers: dict[str, torch.optim.Optimizer]) -> None:
    """Load what `save_sharded` wrote into the (already sharded) model and optimizers (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    state = {}
    for name, opt in optimizers.items():
        msd, osd = get_state_dict(model, opt)
        state["model"], state[f"optim.{name}"] = msd, osd
    dcp.load(state, checkpoint_id=str(Path(folder) / SHARDED_DIR))
    for name, opt in optimizers.items():
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state[f"optim.{name}"])


class FullCopy:
    """A weightless (meta-device) twin of a model made before sharding; `gather()` fills it with the full
    weights on rank 0 so the stage's `save_fn` writes ordinary HF files.

    Tied parameters (embedding = output head) stay tied: the twin is a deepcopy whose memo maps each
    parameter to one meta tensor, and `gather` re-ties them after loading."""

    def __init__(self, model: nn.Module):
        memo: dict[int, object] = {}
        for t in list(model.parameters()) + list(model.buffers()):
            meta = torch.empty_like(t, device="meta")
            memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
        self.twin = copy.deepcopy(model, memo)
        # names that share one parameter, e.g. [["embed_tokens.weight", "lm_head.weight"]]
        groups: dict[int, list[str]] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            groups.setdefault(id(p), []).append(name)
        self.tied = [names for names in groups.values() if len(names) > 1]

    def gather(self, model: nn.Module, main: bool) -> nn.Module | None:
        """All-gather the sharded model's full weights (collective, moved to CPU); rank 0 gets the twin."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not main:
            return None
        self.twin.load_state_dict(full, strict=False, assign=True)
        for names in self.tied:
            owner = self.twin.get_parameter(names[0])
            for other in names[1:]:
                mod, _, attr = other.rpartition(".")
                setattr(self.twin.get_submodule(mod), attr, owner)
        return self.twin
