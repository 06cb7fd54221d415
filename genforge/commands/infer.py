"""`genforge generate` and `genforge watermark detect`."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from genforge.errors import CheckpointError, ConfigError
from genforge.infer.sampling import SamplingParams


def check_sampling(params: SamplingParams) -> None:
    """One-line errors for settings the sampler cannot honour."""
    if params.max_new_tokens < 1:
        raise ConfigError(f"sampling.max_new_tokens={params.max_new_tokens}: must be >= 1")
    if params.temperature < 0:
        raise ConfigError(f"sampling.temperature={params.temperature}: must be >= 0 (0 = greedy)")
    if not 0 < params.top_p <= 1:
        raise ConfigError(f"sampling.top_p={params.top_p}: must be in (0, 1]")
    if params.seed is not None and not -(2**63) <= params.seed < 2**64:
        raise ConfigError(f"sampling.seed={params.seed}: must fit in 64 bits")


def load_for_inference(checkpoint: str, adapter: str = "", quantize: str = ""):
    """(model, tokenizer) from a checkpoint folder, with an adapter applied and weights quantized if asked."""
    from genforge.checkpoint import load_checkpoint

    if not checkpoint:
        raise ConfigError("checkpoint is not set: genforge generate CHECKPOINT \"prompt\"")
    if quantize not in ("", "int8", "bf16"):
        raise ConfigError(f"quantize={quantize!r}: choose int8 or bf16 (or leave it empty)")
    model, tok, _ = load_checkpoint(checkpoint)
    if tok is None:
        raise CheckpointError(f"{checkpoint}: no tokenizer.json beside the weights; cannot turn text into ids")
    if adapter:
        from genforge.model.peft import load_adapter

        model = load_adapter(model, adapter)
    if quantize:
        from genforge.infer.compress import quantize_int8, to_bf16

        model = quantize_int8(model) if quantize == "int8" else to_bf16(model)
    return model.eval(), tok


@dataclass
class GenerateConfig:
    """Sample text from a checkpoint; replies stream token by token."""

    checkpoint: str = ""  # checkpoint folder
    prompt: list[str] = field(default_factory=list)  # prompts (repeat prompt=...; none: read stdin)
    chat: bool = False  # wrap each prompt as a user turn of the chat template
    adapter: str = ""  # PEFT adapter folder (LoRA / prompt tuning / bottleneck) to apply
    draft: str = ""  # draft checkpoint for speculative decoding (same tokenizer)
    draft_k: int = 4  # tokens the draft proposes per target call
    quantize: str = ""  # int8 (weight-only) or bf16 weights; empty = as saved
    sampling: SamplingParams = field(default_factory=SamplingParams)


def generate(cfg: GenerateConfig) -> list[str]:
    from genforge.text import detokenize, render_prompt, stop_ids_for, stream_text

    check_sampling(cfg.sampling)
    model, tok = load_for_inference(cfg.checkpoint, cfg.adapter, cfg.quantize)
    s = cfg.sampling
    draft = None
    if cfg.draft:
        from genforge.checkpoint import load_model

        if s.watermark:
            raise ConfigError("sampling.watermark and draft cannot be combined (the verifier samples the target)")
        draft = load_model(cfg.draft)
    prompts = cfg.prompt or [sys.stdin.read()]
    outputs = []
    for prompt in prompts:
        if len(prompts) > 1 or not cfg.prompt:
            print(f"### {prompt.strip()}", flush=True)
        else:
            print(prompt, end="", flush=True)
        if draft is not None:  # speculative decoding: the draft proposes, the target verifies
            from genforge.infer.speculative import speculative_generate

            ids, stats = speculative_generate(model, draft, render_prompt(tok, prompt, chat=cfg.chat), s,
                                              k=cfg.draft_k, stop_ids=stop_ids_for(tok, cfg.chat))
            text = detokenize(tok, ids, s.stop)
            print(text)
            print(f"[speculative: acceptance {stats['acceptance_rate']:.2f}, "
                  f"{stats['tokens_per_target_call']:.2f} tokens per target call]", file=sys.stderr)
        else:
            text = ""
            for delta in stream_text(model, tok, prompt, s, chat=cfg.chat):
                text += delta
                print(delta, end="", flush=True)
            print()
        outputs.append(text)
    return outputs


@dataclass
class WatermarkDetectConfig:
    """Detect the green-list watermark in a text (needs only the tokenizer and the key)."""

    checkpoint: str = ""  # checkpoint (or tokenizer) folder whose tokenizer wrote the text
    text: str | None = None  # text to score (unset: read stdin)
    gamma: float = 0.25  # green fraction used when generating
    key: int = 15485863  # the watermark's secret key
    context: int = 1  # previous tokens that seed each green list
    z_threshold: float = 4.0  # flag the text as watermarked above this z-score


def watermark_detect(cfg: WatermarkDetectConfig) -> dict:
    from genforge.infer.watermark import WatermarkConfig, detect
    from genforge.tokenizer import Tokenizer

    if not cfg.checkpoint:
        raise ConfigError("checkpoint is not set: genforge watermark detect CHECKPOINT text='...'")
    tok = Tokenizer.load(cfg.checkpoint)
    vocab = tok.vocab_size
    if (Path(cfg.checkpoint) / "config.json").exists():  # green lists span the model's vocabulary
        from genforge.model.hf import read_hf_config

        vocab = read_hf_config(cfg.checkpoint)["vocab_size"]
    text = cfg.text if cfg.text is not None else sys.stdin.read()
    wm = WatermarkConfig(gamma=cfg.gamma, key=cfg.key, context=cfg.context, z_threshold=cfg.z_threshold)
    # re-tokenizing text may not give back the generated ids exactly (BPE merges): z is then a bit lower
    result = detect(tok.encode(text), vocab, wm)
    print(json.dumps(result, indent=2))
    return result
