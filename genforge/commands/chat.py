"""`genforge chat CHECKPOINT`: talk to a checkpoint in the terminal (see genforge.chat)."""

from __future__ import annotations

from dataclasses import dataclass, field

from genforge.errors import ConfigError
from genforge.infer.sampling import SamplingParams


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
    from genforge.commands.infer import check_sampling

    if not cfg.checkpoint:
        raise ConfigError("checkpoint is not set: genforge chat CHECKPOINT")
    if cfg.quantize not in ("", "int8", "bf16"):
        raise ConfigError(f"quantize={cfg.quantize!r}: choose int8 or bf16 (or leave it empty)")
    check_sampling(cfg.sampling)
    model, tok = load_for_chat(cfg.checkpoint, cfg.adapter)
    if cfg.quantize:
        from genforge.infer.compress import quantize_int8, to_bf16

        model = quantize_int8(model) if cfg.quantize == "int8" else to_bf16(model)
    session = ChatSession(model, tok, cfg.sampling, system=cfg.system)
    chat_loop(session)
    return 0
