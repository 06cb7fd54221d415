"""`genforge plan`: what a model costs to train or serve, by part, and whether it fits a device.

Memory of one training step, per device (bytes):

    weights    P x bytes/param (fp32 4; bf16 2; 4-bit NF4 ~0.516 for quantized linears: 0.5 + block absmax with
               double quantisation, Dettmers et al. 2023 "QLoRA")
    gradients  trainable params x 4 (fp32 gradients of fp32 master weights; 2 in pure bf16)
    optimizer  trainable params x 8 (AdamW's two moments in fp32; 4 in pure bf16)
    activations what autograd saves for backward: per token, L x (4C + 4HD + 2KD + H + 4F) + V + 3C + 2D elements
               for a genforge/Llama block with fused (flash) attention (no T x T scores), counted from the tensors
               genforge's GPT saves (tests/scaling/test_plan.py checks it against `train.memory.training_memory`);
               with gradient checkpointing, L x C block inputs plus one block rebuilt at a time (Chen et al. 2016).
               Under bf16 autocast the matmul outputs are bf16 and the norms fp32: an estimate, not yet checked
               against a GPU's measured peak
    KV cache   (inference) 2 x L x K x D x tokens x bytes
    overhead   CUDA context and allocator slack (~1 GiB on a GPU, 0 on CPU)

FSDP divides weights, gradients and optimizer state by the device count; DDP does not. Compute: 6 N FLOPs per
token for a training step (2 forward + 4 backward, Kaplan et al. 2020) plus attention, 6 L T H D (causal);
LoRA skips the weight gradients of the frozen base (4 N), gradient checkpointing adds a forward (+2 N),
inference is 2 N. Time per step = FLOPs / (device peak x MFU x devices); MFU is stated, not guessed: about 0.4
for a well-tuned bf16 GPU run (Chowdhery et al. 2022 report 0.46 for PaLM), far lower for tiny models.
Chinchilla-optimal tokens: 20 per parameter (Hoffmann et al. 2022, Table 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from genforge.errors import ConfigError
from genforge.model.gpt import GPTConfig

GIB = 2**30
METHODS = {"full": "full fine-tune / pretraining (every parameter trains)",
           "lora": "LoRA adapters on a frozen base (Hu et al. 2021)",
           "qlora-4bit": "LoRA on a 4-bit NF4-quantised frozen base (Dettmers et al. 2023)",
           "inference": "generation only: weights + KV cache"}
PRECISIONS = {"fp32": "fp32 everything", "bf16": "bf16 autocast on fp32 master weights (genforge's GPU default)",
              "bf16-pure": "bf16 weights, gradients and optimizer state"}


@dataclass(frozen=True)
class Device:
    memory_gib: float
    bf16_tflops: float  # dense tensor-core peak
    fp32_tflops: float  # non-tensor fp32 peak (TF32 is off by default in PyTorch matmuls)
    overhead_gib: float = 1.0


# vendor datasheet peaks (dense, no sparsity)
DEVICES = {
    "h100-80gb": Device(80, 989, 67), "h200-141gb": Device(141, 989, 67), "a100-80gb": Device(80, 312, 19.5),
    "a100-40gb": Device(40, 312, 19.5), "l40s-48gb": Device(48, 362, 91.6), "rtx4090-24gb": Device(24, 165, 82.6),
    "rtx3090-24gb": Device(24, 71, 35.6), "l4-24gb": Device(24, 121, 30.3), "a10-24gb": Device(24, 125, 31.2),
    "t4-16gb": Device(16, 65, 8.1), "24gb": Device(24, 165, 82.6), "80gb": Device(80, 989, 67),
}


def _llama(vocab: int, depth: int, width: int, heads: int, kv: int, mlp: int, ctx: int, tie: bool = False,
           head_dim: int = 0) -> GPTConfig:
    return GPTConfig(vocab_size=vocab, depth=depth, width=width, head_dim=head_dim or width // heads, n_kv_head=kv,
                     mlp_hidden=mlp, max_seq_len=ctx, tie_embeddings=tie)


# published config.json shapes (Qwen2's q/k/v biases, ~0.1 % of its parameters, are left out)
SHAPES = {
    "tinyllama-1.1b": _llama(32000, 22, 2048, 32, 4, 5632, 2048),
    "llama-7b": _llama(32000, 32, 4096, 32, 32, 11008, 2048),
    "llama2-7b": _llama(32000, 32, 4096, 32, 32, 11008, 4096),
    "llama2-13b": _llama(32000, 40, 5120, 40, 40, 13824, 4096),
    "llama2-70b": _llama(32000, 80, 8192, 64, 8, 28672, 4096),
    "llama3-8b": _llama(128256, 32, 4096, 32, 8, 14336, 8192),
    "llama3-70b": _llama(128256, 80, 8192, 64, 8, 28672, 8192),
    "mistral-7b": _llama(32000, 32, 4096, 32, 8, 14336, 32768),
    "qwen2.5-0.5b": _llama(151936, 24, 896, 14, 2, 4864, 32768, tie=True),
    "qwen2.5-1.5b": _llama(151936, 28, 1536, 12, 2, 8960, 32768, tie=True),
    "qwen2.5-7b": _llama(152064, 28, 3584, 28, 4, 18944, 32768),
    "genforge-tiny": GPTConfig(vocab_size=1024, depth=4),
    "genforge-small": GPTConfig(vocab_size=4096, depth=8),
}


@dataclass
class PlanConfig:
    """`genforge plan`: memory by part, time per step and fit for a model x method x batch on a device."""

    model: str = "llama-7b"  # a named shape (see --help), a folder with config.json, or a .yaml/.json of GPTConfig
    method: str = "full"  # full | lora | qlora-4bit | inference
    batch: int = 1  # sequences per device per step (micro-batch)
    seq_len: int = 2048  # tokens per sequence (inference: prompt + generated, the KV cache length)
    precision: str = "bf16"  # fp32 | bf16 (autocast, fp32 master weights) | bf16-pure
    grad_checkpointing: bool = False  # recompute block activations in backward
    devices: int = 1  # devices the run spreads over
    parallel: str = "fsdp"  # fsdp (shard weights/grads/optimizer over devices) | ddp (full copy on each)
    device: str = "80gb"  # a device name (see --help) whose memory and peak FLOP/s are used
    mfu: float = 0.4  # model FLOP utilisation assumed for the time estimate
    peak_tflops: float = 0.0  # override the device's peak FLOP/s (e.g. a CPU's, measured); 0 = the device table's
    lora_rank: int = 16
    lora_targets: str = "all-linear"  # all-linear | attention (q, k, v, o projections)
    tokens: float = 0.0  # training tokens for a total-time estimate (0 = the Chinchilla-optimal count)


def load_shape(spec: str) -> GPTConfig:
    """A named shape, a folder/file with an HF config.json, or a YAML/JSON of GPTConfig fields (or a `model:`
    section). Features that do not change memory (rope scaling, biases) are not checked here."""
    key = spec.lower()
    if key in SHAPES:
        return SHAPES[key].resolved()
    path = Path(spec)
    if path.is_dir():
        path = path / "config.json"
    if not path.exists():
        raise ConfigError(f"model={spec!r}: not a named shape ({', '.join(SHAPES)}) nor an existing file or folder")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(path.read_text()) or {}
    else:
        import json

        data = json.loads(path.read_text())
    if "hidden_size" in data:  # Hugging Face config.json
        heads = data["num_attention_heads"]
        return _llama(data["vocab_size"], data["num_hidden_layers"], data["hidden_size"], heads,
                      data.get("num_key_value_heads") or heads, data["intermediate_size"],
                      data.get("max_position_embeddings", 2048), bool(data.get("tie_word_embeddings", False)),
                      data.get("head_dim") or 0).resolved()
    data = data.get("model", data)
    fields = set(GPTConfig.__dataclass_fields__)
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"{path}: unknown model fields {unknown[:3]} (GPTConfig has {sorted(fields)})")
    return GPTConfig(**data).resolved()


# ---------------------------------------------------------------------------------------------- counting
@dataclass
class Counts:
    total: int  # every parameter (tied counted once)
    embedding: int  # input embedding (+ untied output head)
    linear: int  # parameters in the blocks' matrices (what 4-bit quantises and LoRA targets)
    matmul: int  # parameters used in a matmul per token: block matrices + the output head (Kaplan's N + head)
    lora: int  # adapter parameters for the configured rank and targets


def count(c: GPTConfig, lora_rank: int = 16, lora_targets: str = "all-linear") -> Counts:
    C, H, K, D, F, L, V = c.width, c.width // c.head_dim, c.n_kv_head, c.head_dim, c.mlp_hidden, c.depth, c.vocab_size
    attn = [(C, H * D), (C, K * D), (C, K * D), (H * D, C)]  # (in, out) of q, k, v, o
    mlp = [(C, F), (C, F), (F, C)]
    linear = L * sum(i * o for i, o in attn + mlp)
    norms = L * 2 * C + C
    embedding = V * C * (1 if c.tie_embeddings else 2)
    targets = attn + (mlp if lora_targets == "all-linear" else [])
    if lora_targets not in ("all-linear", "attention"):
        raise ConfigError(f"lora_targets must be all-linear or attention, got {lora_targets!r}")
    lora = L * sum(lora_rank * (i + o) for i, o in targets)
    return Counts(total=linear + norms + embedding, embedding=embedding, linear=linear, matmul=linear + V * C,
                  lora=lora)


def activation_elements(c: GPTConfig, checkpointing: bool, frozen_norms: bool = False) -> tuple[float, float, float]:
    """Elements saved for backward per token: (kept in fp32, kept in the compute dtype, recompute working set).

    Measured on genforge's GPT (`training_memory` hooks): each block keeps its two norms' inputs and outputs
    (4C; 2C when the norm gains are frozen, as under LoRA: `weight * x` then needs no x), q/k/v before and after
    RoPE plus attention's output and the o_proj input (~4HD + 2KD), the log-sum-exp of fused attention (H) and
    SwiGLU's gate, up, silu and product (4F); the model adds the final norm (3C, or 2C frozen), the log-softmax
    over the vocabulary (V) and the RoPE tables (2D). With checkpointing only each block's input (C) stays
    saved; one block's activations are rebuilt at a time during backward (the third number, a transient)."""
    C, H, K, D, F, L, V = c.width, c.width // c.head_dim, c.n_kv_head, c.head_dim, c.mlp_hidden, c.depth, c.vocab_size
    block_fp32, block_low = (2 if frozen_norms else 4) * C + H, 4 * H * D + 2 * K * D + 4 * F
    head = (2 if frozen_norms else 3) * C + V + 2 * D
    if checkpointing:
        return L * C + head, 0.0, block_fp32 + block_low
    return L * block_fp32 + head, L * block_low, 0.0


@dataclass
class Plan:
    cfg: PlanConfig
    shape: GPTConfig
    counts: Counts
    memory_gib: dict[str, float]  # part -> GiB per device
    flops_per_token: float
    step_flops: float  # per device
    step_s: float
    tokens_per_s: float  # over all devices
    chinchilla_tokens: float
    train_days: float  # for cfg.tokens (or the Chinchilla count) at tokens_per_s
    device: Device
    fits: bool
    notes: list[str] = field(default_factory=list)

    @property
    def total_gib(self) -> float:
        return sum(self.memory_gib.values())


def plan(cfg: PlanConfig, shape: GPTConfig | None = None) -> Plan:
    """Memory by part, FLOPs, time and fit for `cfg` (shape: given directly, else loaded from cfg.model)."""
    if cfg.method not in METHODS:
        raise ConfigError(f"method={cfg.method!r}: choose one of {', '.join(METHODS)}")
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"precision={cfg.precision!r}: choose one of {', '.join(PRECISIONS)}")
    if cfg.device not in DEVICES and cfg.device != "cpu":
        raise ConfigError(f"device={cfg.device!r}: choose one of cpu, {', '.join(DEVICES)}")
    if cfg.parallel not in ("fsdp", "ddp") or cfg.devices < 1 or cfg.batch < 1 or cfg.seq_len < 1:
        raise ConfigError("parallel must be fsdp|ddp and devices, batch, seq_len >= 1")
    c = (shape or load_shape(cfg.model)).resolved()
    n = count(c, cfg.lora_rank, cfg.lora_targets)
    dev = DEVICES.get(cfg.device, Device(memory_gib=math.inf, bf16_tflops=0.0, fp32_tflops=0.0, overhead_gib=0.0))
    low = cfg.precision != "fp32"
    shard = cfg.devices if cfg.parallel == "fsdp" else 1
    tokens = cfg.batch * cfg.seq_len  # per device per step
    notes = []
    mem: dict[str, float] = {}
    if cfg.method == "inference":
        mem["weights"] = n.total * (2 if low else 4) / shard
        K, D, L = c.n_kv_head, c.head_dim, c.depth
        mem["kv_cache"] = 2 * L * K * D * tokens * (2 if low else 4)
        # prefill working set: one block's activations for the prompt, and last-position logits
        _, _, block = activation_elements(c, checkpointing=True, frozen_norms=True)
        mem["activations"] = tokens * block * (2 if low else 4) + cfg.batch * c.vocab_size * 4
        fpt = 2 * n.matmul + 2 * c.depth * cfg.seq_len * c.width  # forward; attention over the cache
    else:
        trainable = n.total if cfg.method == "full" else n.lora
        if cfg.method == "full":
            w_bytes = {"fp32": 4, "bf16": 4, "bf16-pure": 2}[cfg.precision]
            mem["weights"] = n.total * w_bytes / shard
        elif cfg.method == "lora":
            mem["weights"] = (n.total * (2 if low else 4) + n.lora * 4) / shard
        else:  # qlora: block matrices in NF4, embeddings/head/norms in bf16, adapters fp32
            mem["weights"] = (n.linear * (0.5 + 0.0159) + (n.total - n.linear) * 2 + n.lora * 4) / shard
            if not low:
                notes.append("QLoRA computes in bf16: precision=fp32 only affects the adapters here")
        g_bytes, o_bytes = (2, 4) if cfg.precision == "bf16-pure" else (4, 8)
        mem["gradients"] = trainable * g_bytes / shard
        mem["optimizer"] = trainable * o_bytes / shard
        fp32_el, low_el, block = activation_elements(c, cfg.grad_checkpointing, frozen_norms=cfg.method != "full")
        act_bytes = 2 if low else 4
        mem["activations"] = tokens * (fp32_el * 4 + low_el * act_bytes)
        if cfg.grad_checkpointing:
            mem["recompute"] = tokens * block * act_bytes  # one block rebuilt during backward (transient)
        if cfg.precision == "bf16" and cfg.method == "full":
            # autocast keeps a bf16 copy of each fp32 weight it casts, saved for backward; with FSDP (blocks gathered
            # and freed, two in flight with prefetch) or checkpointing (nothing saved inside a block) only a few live
            few = (cfg.parallel == "fsdp" and cfg.devices > 1) or cfg.grad_checkpointing
            mem["weight_casts"] = (2 * n.linear / c.depth if few else n.matmul) * 2
        if cfg.method == "qlora-4bit":
            mem["dequant_buffer"] = 3 * c.width * c.mlp_hidden * 2  # one block's MLP matrices dequantised to bf16
        base = 6 if cfg.method == "full" else 4  # no weight gradients for a frozen base
        fpt = (base + (2 if cfg.grad_checkpointing else 0)) * n.matmul + 6 * c.depth * cfg.seq_len * c.width
        if cfg.method != "full":
            fpt += 6 * n.lora
    mem["overhead"] = dev.overhead_gib * GIB
    mem_gib = {k: v / GIB for k, v in mem.items()}
    peak = (cfg.peak_tflops or (dev.bf16_tflops if low else dev.fp32_tflops)) * 1e12
    step_flops = fpt * tokens
    step_s = step_flops / (peak * cfg.mfu) if peak > 0 and cfg.mfu > 0 else math.nan
    tok_s = tokens * cfg.devices / step_s if step_s == step_s and step_s > 0 else math.nan
    chin = 20.0 * n.total
    train_tokens = cfg.tokens or chin
    days = train_tokens / tok_s / 86400 if tok_s == tok_s and tok_s > 0 else math.nan
    fits = sum(mem_gib.values()) <= dev.memory_gib
    if cfg.method == "inference":
        notes.append("time per step = one forward over batch x seq_len tokens (prefill); decode is usually "
                     "memory-bound instead: weights / bandwidth per token")
    return Plan(cfg, c, n, mem_gib, fpt, step_flops, step_s, tok_s, chin, days, dev, fits, notes)


def render(p: Plan) -> str:
    """The plan as a small text table."""
    c, cfg = p.shape, p.cfg
    dev_name = cfg.device if cfg.device in DEVICES else cfg.device
    lines = [f"model {cfg.model}: {p.counts.total / 1e9:.3f} B parameters (depth {c.depth}, width {c.width}, "
             f"heads {c.width // c.head_dim}/{c.n_kv_head} kv, mlp {c.mlp_hidden}, vocab {c.vocab_size})",
             f"method {cfg.method} ({METHODS[cfg.method]}), precision {cfg.precision}, batch {cfg.batch} x seq "
             f"{cfg.seq_len}, grad checkpointing {'on' if cfg.grad_checkpointing else 'off'}, "
             f"{cfg.devices} x {dev_name} ({cfg.parallel})",
             "", "memory per device:"]
    for k, v in p.memory_gib.items():
        lines.append(f"  {k:<15} {v:9.2f} GiB")
    verdict = "FITS" if p.fits else "DOES NOT FIT"
    lines.append(f"  {'total':<15} {p.total_gib:9.2f} GiB   of {p.device.memory_gib:g} GiB -> {verdict}")
    if cfg.method != "inference":
        trainable = p.counts.total if cfg.method == "full" else p.counts.lora
        lines.append(f"trainable parameters: {trainable / 1e6:,.1f} M")
    lines += ["", f"FLOPs/token {p.flops_per_token / 1e9:.2f} G; step {p.step_flops / 1e12:.2f} TFLOP per device",
              f"at MFU {cfg.mfu:g}: {p.step_s:.3g} s/step, {p.tokens_per_s:,.0f} tokens/s"]
    if cfg.method == "full" or cfg.tokens:
        lines.append(f"Chinchilla-optimal pretraining tokens (20/param): {p.chinchilla_tokens / 1e9:,.1f} B; "
                     f"{(cfg.tokens or p.chinchilla_tokens) / 1e9:,.1f} B tokens take {p.train_days:,.1f} days here")
    elif cfg.method != "inference":
        lines.append(f"Chinchilla-optimal pretraining tokens (20/param): {p.chinchilla_tokens / 1e9:,.1f} B "
                     "(fine-tuning needs far fewer: pass tokens=N for a time estimate)")
    lines += [f"note: {x}" for x in p.notes]
    return "\n".join(lines)
