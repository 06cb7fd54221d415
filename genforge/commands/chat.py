"""`genforge chat CHECKPOINT`: talk to a checkpoint in the terminal (see genforge.chat)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from genforge.errors import ConfigError
from genforge.infer.sampling import SamplingParams

# what ChatSession applies today; other sampling keys are refused rather than silently ignored
_APPLIED = {"max_new_tokens", "temperature", "top_p", "seed", "watermark", "watermark_key", "watermark_gamma",
            "watermark_delta"}


def _chat_sampling() -> SamplingParams:
    return SamplingParams(max_new_tokens=128, temperature=0.7, top_p=0.9)


@dataclass
class ChatConfig:
    """Chat with a checkpoint (optionally with an adapter); /reset forgets, /quit ends."""

    checkpoint: str = ""  # checkpoint folder (HF layout)
    adapter: str = ""  # adapter folder (LoRA / prompt tuning / bottleneck)
    system: str = ""  # system message
    quantize: str = ""  # int8 (weight-only) or bf16 weights; empty = as saved
    sampling: SamplingParams = field(default_factory=_chat_sampling)


def main(cfg: ChatConfig) -> int:
    from genforge.chat import ChatSession, chat_loop, load_for_chat
    from genforge.commands.infer import check_sampling, engine_kwargs

    if not cfg.checkpoint:
        raise ConfigError("checkpoint is not set: genforge chat CHECKPOINT")
    if cfg.quantize not in ("", "int8", "bf16"):
        raise ConfigError(f"quantize={cfg.quantize!r}: choose int8 or bf16 (or leave it empty)")
    check_sampling(cfg.sampling)
    default = SamplingParams()
    for f in fields(SamplingParams):
        if f.name not in _APPLIED and getattr(cfg.sampling, f.name) != getattr(default, f.name):
            raise ConfigError(f"sampling.{f.name} is not supported by genforge chat yet (use genforge generate "
                              "chat=true, or genforge serve)")
    model, tok = load_for_chat(cfg.checkpoint, cfg.adapter)
    if cfg.quantize:
        from genforge.infer.compress import quantize_int8, to_bf16

        model = quantize_int8(model) if cfg.quantize == "int8" else to_bf16(model)
    s = cfg.sampling
    session = ChatSession(model, tok, system=cfg.system, max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                          top_p=s.top_p, seed=s.seed, watermark=engine_kwargs(s).get("watermark"))
    chat_loop(session)
    return 0
