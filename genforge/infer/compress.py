"""Making a trained model smaller: int8 weights, bf16, magnitude pruning, and size accounting.

- `quantize_int8`: weight-only int8 with one scale per output channel (absmax, symmetric), the
  scheme of LLM.int8()'s vector-wise quantization without its outlier split (Dettmers et al.
  2022, sec. 3.1) and of gpt-fast's int8 mode. Activations stay in float.
  Error bound: with s_i = max_j |W_ij| / 127 and W'_ij = s_i round(W_ij / s_i), every
  |W_ij - W'_ij| <= s_i / 2, so each output obeys |y_i - y'_i| <= (s_i / 2) * ||x||_1 (tested).
  For Gaussian-like weights the relative error of a matmul is about 0.7 % (< 1 %, tested).
- `to_bf16`: all floating weights in bfloat16 (half the bytes; norms still compute in fp32).
- `prune_magnitude`: zero the smallest weights (Han et al. 2015), or whole attention heads
  (Michel et al. 2019) / MLP neurons by their weight norm. A mask on each pruned Linear zeroes
  its gradient, so Adam/AdamW/SGD fine-tuning keeps pruned weights exactly zero; zeros survive
  `save_checkpoint`/`load_checkpoint` because they are stored as zeros (tested).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from genforge.errors import ConfigError

REDUCE_MAX_ROWS = 2  # compiled Int8Linear uses the fused int8 reduction up to this many rows (faster at batch 1-2;
# at batch 8 the dequantize + matmul path measured faster)


class Int8Linear(nn.Module):
    """y = (x @ q^T) * scale (+ bias): int8 weight q (out, in), fp32 scale (out,)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        w = linear.weight.detach().float()  # (out, in)
        m = cls(linear.in_features, linear.out_features, linear.bias is not None).to(w.device)
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (out,) absmax per output channel
        m.weight.copy_(torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        m.scale.copy_(scale)
        if linear.bias is not None:
            m.bias.data.copy_(linear.bias.detach())
        return m

    def dequantize(self) -> torch.Tensor:
        """The float weight (out, in) this module computes with."""
        return self.weight.float() * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # per-output-channel scales commute with the matmul: y = (x @ q^T) * s
        if torch.compiler.is_compiling() and x.shape[:-1].numel() <= REDUCE_MAX_ROWS:
            # decode-sized inputs under torch.compile: written as a reduction, inductor fuses the int8
            # -> float cast into one loop that reads each weight byte once (4x less memory traffic than
            # fp32; measured 50 vs 340 us for a 4096x256 head on a shared CPU core)
            y = (x.unsqueeze(-2) * self.weight.to(x.dtype)).sum(-1) * self.scale.to(x.dtype)  # (..., out)
        else:
            y = F.linear(x, self.weight.to(x.dtype)) * self.scale.to(x.dtype)
        return y + self.bias.to(x.dtype) if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def _block_linears(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, name, Linear) for the Linears inside the transformer blocks (embeddings/head excluded)."""
    root = getattr(model, "layers", model)
    out = []
    for parent in root.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                out.append((parent, name, child))
    return out


def quantize_int8(model: nn.Module, include_head: bool = False) -> nn.Module:
    """Replace the block Linears (and the output head if include_head) with Int8Linear, in place.

    The embedding stays float (it is a lookup). With include_head and tied embeddings the head
    becomes an int8 copy, so the model is no longer tied (fine for inference; such a model is not
    meant to be saved as a checkpoint).
    """
    for parent, name, lin in _block_linears(model):
        setattr(parent, name, Int8Linear.from_linear(lin))
    head = getattr(model, "lm_head", None)
    if include_head and isinstance(head, nn.Linear):
        model.lm_head = Int8Linear.from_linear(head)
    return model


def to_bf16(model: nn.Module) -> nn.Module:
    """Cast floating parameters and buffers to bfloat16, in place (RoPE tables included; fine at small lengths)."""
    return model.to(torch.bfloat16)


def _keep_zero(lin: nn.Linear, mask: torch.Tensor) -> None:
    """Zero lin's pruned weights and keep them zero: store the mask and mask every gradient."""
    old = getattr(lin, "weight_mask", None)
    mask = mask if old is None else mask & old
    with torch.no_grad():
        lin.weight.mul_(mask.to(lin.weight.dtype))
    lin.register_buffer("weight_mask", mask, persistent=False)  # not in the state dict: HF layout unchanged
    if getattr(lin, "_prune_hook", None) is None:
        # a frozen weight takes no hook; register it with grad on, so a later unfreeze still keeps zeros zero
        frozen = not lin.weight.requires_grad
        lin.weight.requires_grad_(True)
        lin._prune_hook = lin.weight.register_hook(lambda g, m=lin: g * m.weight_mask.to(g.dtype))
        lin.weight.requires_grad_(not frozen)


def prune_magnitude(model: nn.Module, sparsity: float, structured: str | None = None) -> nn.Module:
    """Zero a `sparsity` fraction of the block weights, in place, and keep them zero.

    structured=None: per Linear, the smallest-|w| entries. "heads": per layer, the attention
    heads with the smallest ||q rows|| + ||o columns|| (their query rows and output columns).
    "neurons": per layer, the MLP hidden units with the smallest gate+up+down weight norm.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"prune sparsity must be in [0, 1), got {sparsity}")
    if structured is None:
        for _, _, lin in _block_linears(model):
            w = lin.weight.detach()
            n = int(sparsity * w.numel())
            if n == 0:
                continue
            threshold = w.abs().flatten().kthvalue(n).values
            _keep_zero(lin, w.abs() > threshold)
        return model
    if structured not in ("heads", "neurons"):
        raise ConfigError(f"prune structured must be None, 'heads' or 'neurons', got {structured!r}")
    for block in model.layers:
        if structured == "heads":
            attn = block.self_attn
            H, D = attn.n_head, attn.head_dim
            q = attn.q_proj.weight.detach().view(H, D, -1)  # (H, D, C)
            o = attn.o_proj.weight.detach().view(-1, H, D)  # (C, H, D)
            score = q.pow(2).sum((1, 2)).sqrt() + o.pow(2).sum((0, 2)).sqrt()  # (H,)
            n = int(sparsity * H)
            keep = torch.ones(H, dtype=torch.bool, device=score.device)
            keep[score.argsort()[:n]] = False
            _keep_zero(attn.q_proj, keep.repeat_interleave(D)[:, None].expand_as(attn.q_proj.weight).clone())
            _keep_zero(attn.o_proj, keep.repeat_interleave(D)[None, :].expand_as(attn.o_proj.weight).clone())
        else:
            mlp = block.mlp
            score = (mlp.gate_proj.weight.detach().norm(dim=1) + mlp.up_proj.weight.detach().norm(dim=1)
                     + mlp.down_proj.weight.detach().norm(dim=0))  # (hidden,)
            n = int(sparsity * score.numel())
            keep = torch.ones_like(score, dtype=torch.bool)
            keep[score.argsort()[:n]] = False
            for lin in (mlp.gate_proj, mlp.up_proj):
                _keep_zero(lin, keep[:, None].expand_as(lin.weight).clone())
            _keep_zero(mlp.down_proj, keep[None, :].expand_as(mlp.down_proj.weight).clone())
    return model


def sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero weights among the block Linears."""
    ws = [lin.weight for _, _, lin in _block_linears(model)]
    total = sum(w.numel() for w in ws)
    return sum(int((w == 0).sum()) for w in ws) / max(total, 1)


def model_size_bytes(model: nn.Module, nonzero_only: bool = False) -> int:
    """Bytes of parameters + persistent buffers (tied weights counted once).

    nonzero_only counts only nonzero entries: the ideal size of a sparse format, ignoring indices.
    """
    seen, total = set(), 0
    tensors = list(model.parameters()) + [b for n, b in model.named_buffers() if _persistent(model, n)]
    for t in tensors:
        if id(t) in seen:
            continue
        seen.add(id(t))
        n = int((t != 0).sum()) if nonzero_only else t.numel()
        total += n * t.element_size()
    return total


def _persistent(model: nn.Module, name: str) -> bool:
    mod_name, _, buf = name.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    return buf not in mod._non_persistent_buffers_set
