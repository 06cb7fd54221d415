"""Serving: an OpenAI-compatible HTTP API and a chat page.

app.py (app factory + routes), limits.py (size / depth / text / context checks), sse.py (event
framing), schemas.py (request bodies), batcher.py (continuous and static batching: the worker that runs
requests through the engine), tools.py (function calling), structured.py (response_format), adapters.py
(per-request LoRA adapters), metrics.py (Prometheus), embeddings.py (rag), static/ (the chat page).
The `genforge serve` command is `genforge.commands.serve`.
"""

from genforge.extras import require

# every module here needs FastAPI (and its pydantic): say which extra installs it, once, up front
require("fastapi", "serve")
