"""Serving: an OpenAI-compatible HTTP API and a chat page.

app.py (app factory + routes), limits.py (size / depth / text / context checks), sse.py (event
framing), schemas.py (request bodies), batcher.py (the worker that batches requests through the
engine), static/ (the chat page). The `genforge serve` command is `genforge.commands.serve`.
"""

from genforge.extras import require

# every module here needs FastAPI (and its pydantic): say which extra installs it, once, up front
require("fastapi", "serve")
