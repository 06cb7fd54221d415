"""Training memory of one step, by component: what full fine-tuning costs and PEFT saves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn


def training_memory(model: nn.Module, loss_fn: Callable[[nn.Module, Any], tuple], batch: Any,
                    optimizer_slots: int = 2) -> dict[str, float]:
    """Peak training memory of one step, in MiB: weights + grads + optimizer state + saved activations.

    On CUDA it is measured (`torch.cuda.max_memory_allocated` around a forward/backward). On CPU the
    process's max RSS only ever grows, so one number per method cannot be read from it; instead we
    count bytes exactly: every parameter, a gradient and `optimizer_slots` AdamW moments per trainable
    parameter, and the activations autograd saves for backward (hooked with `saved_tensors_hooks`,
    each storage once, weights excluded). This is the quantity PEFT shrinks.
    """
    params = {id(p): p for p in model.parameters()}.values()
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    train_bytes = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in param_ptrs and t.device.type != "meta":
            saved[s.data_ptr()] = s.nbytes()
        return t

    device = next(iter(params)).device
    was_training = model.training
    model.train()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _, _ = loss_fn(model, batch)
    loss.backward()
    out = {"weights_mib": weight_bytes / 2**20, "grads_mib": train_bytes / 2**20,
           "optimizer_mib": optimizer_slots * train_bytes / 2**20, "activations_mib": sum(saved.values()) / 2**20}
    out["total_mib"] = sum(out.values())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        out["cuda_peak_mib"] = (torch.cuda.max_memory_allocated(device) - start) / 2**20 + out["weights_mib"]
    for p in params:
        p.grad = None
    model.train(was_training)
    return out
