"""`genforge serve CHECKPOINT`: load a checkpoint (+ adapter, + draft) and run the HTTP server under uvicorn.

    genforge serve runs/tiny/sft/chat/checkpoint port=9000 max_queue=32 model_name=tiny
    genforge serve runs/tiny/sft/chat/checkpoint lora=[math=runs/math-lora] api_key=$KEY
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genforge.errors import CheckpointError, ConfigError

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@dataclass
class ServeConfig:
    """Serve a checkpoint: /v1/chat/completions, /v1/completions, /v1/models, /health, and a chat page at /."""

    checkpoint: str = ""  # checkpoint folder (genforge or HF Llama-family)
    adapter: str = ""  # PEFT adapter folder (LoRA, merged into the weights at load; prompt tuning; bottleneck)
    draft: str = ""  # draft checkpoint for speculative decoding (same tokenizer)
    draft_k: int = 4  # tokens the draft proposes per step
    host: str = "127.0.0.1"  # interface to bind (default: loopback only)
    port: int = 8000  # TCP port (0 = any free port)
    model_name: str = ""  # the name clients use in `model` (default: the checkpoint folder's name)
    max_queue: int = 64  # requests that may wait for a batch; more get 429
    max_batch: int = 16  # rows (requests x n) generated together (continuous: the KV cache's slots)
    batching: str = "continuous"  # continuous (rows join/leave between decode steps) | static (whole batches)
    prefix_cache_tokens: int = 8192  # prompt tokens whose keys/values are kept for reuse (continuous; 0 = off)
    kv_cache_tokens: int = 0  # columns of the continuous slot KV cache (0: 2 x context, at most 8192)
    lora: list[str] = field(default_factory=list)  # NAME=FOLDER LoRA adapters served unmerged, picked by `model`
    api_key: str = ""  # require `Authorization: Bearer KEY` (default: $GENFORGE_API_KEY; empty = no auth)
    metrics: bool = True  # Prometheus metrics at /metrics
    batch_wait_ms: float = 10.0  # static batching: under concurrent load, wait this long to fill a batch
    max_body_bytes: int = 1 << 20  # larger request bodies get 413
    threads: int = 0  # torch threads (0: leave the default)
    log_level: str = "info"  # critical | error | warning | info | debug
    embedder: str = ""  # serve /v1/embeddings with this embedder (minilm = the packaged MiniLM; needs the rag extra)
    rag_store: str = ""  # folder or Chroma URL of `genforge rag index` collections for chat "retrieval"


def build_app(cfg: ServeConfig) -> Any:
    """Load the checkpoint (+ adapter, + draft) named by cfg and build the FastAPI app."""
    from genforge.checkpoint import load_checkpoint
    from genforge.runtime import set_threads
    from genforge.serve.app import create_app, speculative_generate_fn

    if not cfg.checkpoint:
        raise ConfigError("checkpoint is not set: genforge serve CHECKPOINT")
    if cfg.log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level={cfg.log_level!r}: choose one of {', '.join(LOG_LEVELS)}")
    if cfg.batching not in ("continuous", "static"):
        raise ConfigError(f"batching={cfg.batching!r}: choose continuous or static")
    loras = []
    for item in cfg.lora:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise ConfigError(f"lora={item!r}: write NAME=FOLDER, e.g. lora=[math=runs/math-lora]")
        loras.append((name, folder))
    if loras and (cfg.batching != "continuous" or cfg.draft):
        raise ConfigError("lora= adapters need batching=continuous and no draft (they are selected per row)")
    for key in ("max_queue", "max_batch", "draft_k", "max_body_bytes"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}={getattr(cfg, key)}: must be >= 1")
    set_threads(cfg.threads)
    model, tokenizer, _ = load_checkpoint(cfg.checkpoint)
    if tokenizer is None:
        raise CheckpointError(f"{cfg.checkpoint}: no tokenizer.json; the server needs the checkpoint's tokenizer")
    if cfg.adapter:
        from genforge.model.peft import load_adapter, lora_modules, merge_and_unload

        model = load_adapter(model, cfg.adapter)
        if lora_modules(model):
            model = merge_and_unload(model)  # W + BA once, so decoding costs what the base model costs
        model.eval()
    generate_fn = None
    max_batch = cfg.max_batch
    if cfg.draft:
        draft, _, _ = load_checkpoint(cfg.draft)
        if draft.config.vocab_size != model.config.vocab_size:
            raise CheckpointError(f"{cfg.draft}: draft vocab ({draft.config.vocab_size}) differs from the target's "
                                  f"({model.config.vocab_size}); speculative decoding needs the same tokenizer")
        generate_fn, max_batch = speculative_generate_fn(model, draft, cfg.draft_k), 1
    name = cfg.model_name or Path(cfg.checkpoint).resolve().name
    embedder = None
    if cfg.embedder:  # rag: /v1/embeddings
        from genforge.rag.embed import make_embedder

        embedder = make_embedder(cfg.embedder, max(cfg.threads, 1))
    app = create_app(model, tokenizer, name, generate_fn=generate_fn, max_queue=cfg.max_queue,
                     max_batch=max_batch, max_body_bytes=cfg.max_body_bytes, batch_wait_s=cfg.batch_wait_ms / 1e3,
                     embedder=embedder, rag_store=cfg.rag_store, batching=cfg.batching,
                     prefix_cache_tokens=cfg.prefix_cache_tokens, kv_cache_tokens=cfg.kv_cache_tokens,
                     metrics=cfg.metrics,
                     api_key=cfg.api_key or os.environ.get("GENFORGE_API_KEY", ""))
    if loras:
        from genforge.serve import adapters

        for lora_name, folder in loras:
            if lora_name == name:
                raise ConfigError(f"lora={lora_name}=...: the name is the base model's; pick another")
            app.state.batcher.with_model(lambda m, n=lora_name, f=folder: adapters.load(m, n, f))
            app.state.server.adapters[lora_name] = folder
    return app


def main(cfg: ServeConfig) -> None:
    """Build the app and run uvicorn until interrupted."""
    from genforge.extras import require

    uvicorn = require("uvicorn", "serve")
    app = build_app(cfg)
    logging.basicConfig(level=cfg.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    print(f"genforge serve: {app.state.model_name} on http://{cfg.host}:{cfg.port}/  (chat page at /, API at /v1)")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level)
