"""Per-request LoRA adapters: many fine-tunes of one base served side by side, picked by the request's `model`.

    POST /v1/load_lora_adapter   {"lora_name": "math", "lora_path": "runs/tiny/sft/math-lora"}
    POST /v1/unload_lora_adapter {"lora_name": "math"}
    POST /v1/chat/completions    {"model": "math", ...}     # decodes with base + the "math" adapter

The endpoint names and bodies are vLLM's. A loaded adapter stays unmerged (W x + B A x), so rows of different
adapters share one running batch: each decode step selects the adapter per row (`LoRALinear`'s per-row
selection, as peft's `adapter_names=`), and a row gives the tokens the merged model would. Loading and
unloading change the model's modules, so they run under the scheduler's model lock, between decode steps;
the prefix cache is keyed by adapter, and an adapter's entries go when it is unloaded.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request

from genforge.errors import GenforgeError
from genforge.serve import limits
from genforge.serve.schemas import APIError

router = APIRouter()
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def load(model: Any, name: str, path: str) -> None:
    """Load a peft LoRA folder as adapter `name`, unmerged and inactive (requests select it per row)."""
    from genforge.model.peft import load_lora, set_adapter

    load_lora(model, path, adapter_name=name)
    set_adapter(model, None)  # the base model stays the default for every other row


def unload(model: Any, name: str) -> None:
    """Remove adapter `name` from every LoRA-wrapped module (the wrappers stay, as pass-throughs)."""
    from genforge.model.peft import lora_modules

    for m in lora_modules(model).values():
        for table in (m.lora_A, m.lora_B, m.lora_dropout):
            if name in table:
                del table[name]
        m.scaling.pop(name, None)
        if isinstance(m.active, str) and m.active == name:
            m.active = None


async def _body(request: Request, fields: tuple[str, ...]) -> dict[str, str]:
    s = request.app.state.server
    body = await limits.read_json_body(request.stream(), request.headers.get("content-length"), s.max_body_bytes)
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    for f in fields:
        if not isinstance(body.get(f), str) or not body[f]:
            raise APIError(400, f"missing required parameter: {f!r} (a string)", param=f,
                           code="missing_required_parameter")
    extra = sorted(set(body) - set(fields))
    if extra:
        raise APIError(400, f"unrecognized request argument supplied: {extra[0]!r}", param=extra[0],
                       code="unknown_parameter")
    return body


def _scheduler(request: Request) -> Any:
    s = request.app.state.server
    if not s.continuous:
        raise APIError(400, "per-request adapters need the continuous scheduler; this server runs static batching",
                       code="unsupported")
    return s.batcher


@router.post("/v1/load_lora_adapter")
async def load_adapter(request: Request) -> dict[str, Any]:
    body = await _body(request, ("lora_name", "lora_path"))
    s, batcher = request.app.state.server, _scheduler(request)
    name, path = body["lora_name"], body["lora_path"]
    if not _NAME.match(name):
        raise APIError(400, "lora_name must be 1-64 letters, digits, '_', '-', '.' or ':'", param="lora_name",
                       code="invalid_value")
    if name == s.model_name or name in s.adapters:
        raise APIError(400, f"the name {name!r} is already served; unload it first or pick another",
                       param="lora_name", code="invalid_value")
    if not Path(path).is_dir():
        raise APIError(400, f"lora_path {path!r} is not a folder on the server", param="lora_path",
                       code="invalid_value")
    try:
        await asyncio.to_thread(batcher.with_model, lambda model: load(model, name, path))
    except GenforgeError as e:
        raise APIError(400, f"cannot load the adapter: {e}", param="lora_path", code="invalid_value") from None
    s.adapters[name] = path
    return {"object": "lora_adapter", "id": name, "path": path, "status": "loaded"}


@router.post("/v1/unload_lora_adapter")
async def unload_adapter(request: Request) -> dict[str, Any]:
    body = await _body(request, ("lora_name",))
    s, batcher = request.app.state.server, _scheduler(request)
    name = body["lora_name"]
    if name not in s.adapters:
        raise APIError(404, f"no adapter named {name!r} is loaded", param="lora_name", type="not_found_error",
                       code="model_not_found")
    del s.adapters[name]  # new requests can no longer name it; rows already running keep it until they end
    await asyncio.to_thread(batcher.with_model, lambda model: unload(model, name), name)
    return {"object": "lora_adapter", "id": name, "status": "unloaded"}
