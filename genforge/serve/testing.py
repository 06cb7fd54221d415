"""Helpers for tests and the load benchmark: a tiny random model, and a real server in a thread.

Not used by the server itself. `running_server` binds 127.0.0.1 on a free port (port 0) and
yields the base URL, so tests can point real HTTP clients (openai, httpx, a browser) at it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import torch

from genforge.extras import require
from genforge.model.gpt import GPT, GPTConfig
from genforge.tokenizer import SPECIAL_TOKENS, Tokenizer, TokenizerConfig, train_tokenizer

TINY_TEXT = [
    "the cat sat on the mat. the dog ran to the park and back again.",
    "hello world! how are you today? I am fine, thank you very much.",
    "one plus two is three. four times five is twenty. 12 + 30 = 42.",
    "Alice lives in Brightwater; Bob keeps a lamp, a map and a red kite.",
]


def tiny_model_and_tokenizer(max_seq_len: int = 128, seed: int = 0, depth: int = 2,
                             width: int = 64) -> tuple[GPT, Tokenizer]:
    """A random-weight GPT over a ~300-token BPE vocabulary, in milliseconds.

    The output head gives special tokens a zero logit, so greedy decoding always emits visible text
    (a random model would otherwise end or hide its replies at random) and runs to max_tokens.
    """
    tok = train_tokenizer(TINY_TEXT * 20, TokenizerConfig(vocab_size=320))
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=tok.vocab_size, depth=depth, width=width, head_dim=16, max_seq_len=max_seq_len,
                    tie_embeddings=False)
    model = GPT(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight[[tok.hf.token_to_id(t) for t in SPECIAL_TOKENS]] = 0.0
    return model, tok


@contextlib.contextmanager
def running_server(app, host: str = "127.0.0.1", port: int = 0, timeout: float = 20.0) -> Iterator[str]:
    """Run `app` under uvicorn in a background thread; yield its base URL ('http://127.0.0.1:PORT')."""
    uvicorn = require("uvicorn", "serve")

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="genforge-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout)
