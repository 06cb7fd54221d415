"""`response_format` for chat and completions: the reply's grammar, enforced while decoding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from genforge.serve.schemas import APIError, ResponseFormat
from genforge.tokenizer import Tokenizer


def processor_for(fmt: ResponseFormat | None, tokenizer: Tokenizer, prompt_len: int,
                  stop_ids: Sequence[int]) -> Any:
    """The logits processor enforcing `fmt` (None for no format or "text")."""
    if fmt is None or fmt.type == "text":
        return None
    raise APIError(400, f"response_format {fmt.type!r} is not supported yet", param="response_format",
                   code="unsupported")
