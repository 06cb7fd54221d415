"""Server-sent events framing for streamed completions (`data: {...}\\n\\n` ... `data: [DONE]\\n\\n`).

OpenAI streams one JSON chunk per event and ends with the literal `[DONE]`; an error after the
stream has started can only be reported in-band, as an error body inside an event.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

DONE = "data: [DONE]\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of the stream


def event(obj: Any) -> str:
    """One SSE event carrying `obj` as JSON."""
    return f"data: {json.dumps(obj)}\n\n"


def response(events: AsyncIterator[str]) -> StreamingResponse:
    """A text/event-stream response over already-framed events."""
    return StreamingResponse(events, media_type="text/event-stream", headers=HEADERS)
