"""`POST /v1/embeddings` (OpenAI-compatible) and retrieval for chat requests that opt into it.

    genforge serve runs/tiny/sft/chat/checkpoint embedder=minilm rag_store=runs/rag
    curl localhost:8000/v1/embeddings -H 'content-type: application/json' \\
         -d '{"model": "all-MiniLM-L6-v2", "input": ["a cat", "a dog"]}'

Embeddings: `input` is a string or a list of strings; `encoding_format` is `float` (a JSON list) or `base64`
(little-endian float32 bytes, what the official `openai` client asks for by default and decodes itself).
Vectors are L2-normalised (cosine = dot product), as OpenAI's are. Token-id inputs and `dimensions` other than
the embedder's are refused with a 400 naming the field.

Retrieval (a genforge extension of chat requests): `"retrieval": {"collection": "kb", "k": 3, "mode": "hybrid"}`
retrieves k passages from the server's `rag_store`, puts them in front of the conversation as one system
message -- fenced in <document> tags with the instruction that they are data (rag.qa.DEFENCE) -- and returns
them as `sources` (id, score, source, text) beside `choices`, so the client can cite them.

Embedding runs on a worker thread (never on the event loop), one request at a time.
"""

from __future__ import annotations

import base64
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from genforge.errors import GenforgeError
from genforge.serve import limits
from genforge.serve.schemas import APIError, Message, RetrievalOptions, _Strict, parse_request

router = APIRouter()
MAX_INPUTS = 2048  # OpenAI's limit of inputs per request
MAX_INPUT_CHARS = 32_000  # per input (the embedder truncates to its own window anyway)


class EmbeddingRequest(_Strict):
    """POST /v1/embeddings."""

    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


@dataclass
class EmbeddingState:
    """What the embeddings route and the retrieval hook need, kept on `app.state.embeddings`."""

    embedder: Any  # a genforge.rag.embed.Embedder
    model_name: str
    rag_store: str = ""  # folder or Chroma URL holding collections for chat retrieval ("" = none)
    lock: threading.Lock = field(default_factory=threading.Lock)
    retrievers: dict = field(default_factory=dict)  # (collection, mode) -> retriever


def mount(app: FastAPI, embedder: Any = None, model_name: str = "", rag_store: str = "") -> None:
    """Add /v1/embeddings (when an embedder is given) and chat retrieval (when rag_store is set) to `app`."""
    name = model_name or ("all-MiniLM-L6-v2" if embedder is not None and embedder.name == "minilm"
                          else getattr(embedder, "name", ""))
    app.state.embeddings = EmbeddingState(embedder, name, rag_store)
    app.include_router(router)


def _state(request: Request) -> EmbeddingState:
    st = getattr(request.app.state, "embeddings", None)
    if st is None or st.embedder is None:
        raise APIError(404, "this server has no embedding model; start it with embedder=minilm",
                       type="not_found_error", code="no_embedder")
    return st


@router.get("/v1/embeddings/models", include_in_schema=False)
async def embedding_model(request: Request) -> dict[str, Any]:
    st = _state(request)
    return {"id": st.model_name, "object": "model", "dimensions": st.embedder.dim}


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> dict[str, Any]:
    st = _state(request)
    body = await limits.read_json_body(request.stream(), request.headers.get("content-length"),
                                       request.app.state.server.max_body_bytes)
    req: EmbeddingRequest = parse_request(EmbeddingRequest, body)
    if req.model != st.model_name:
        raise APIError(400, f"the embedding model {req.model!r} does not exist; this server embeds with "
                       f"{st.model_name!r}", param="model", code="model_not_found")
    texts = [req.input] if isinstance(req.input, str) else req.input
    if not texts or not all(isinstance(t, str) for t in texts):
        raise APIError(400, "input must be a non-empty string or list of strings (token ids are not supported)",
                       param="input", code="invalid_value")
    if len(texts) > MAX_INPUTS:
        raise APIError(400, f"at most {MAX_INPUTS} inputs per request, got {len(texts)}", param="input",
                       code="invalid_value")
    bad = next((i for i, t in enumerate(texts) if not t.strip() or len(t) > MAX_INPUT_CHARS), None)
    if bad is not None:
        raise APIError(400, f"input[{bad}] must be non-empty and at most {MAX_INPUT_CHARS} characters",
                       param="input", code="invalid_value")
    if req.dimensions is not None and req.dimensions != st.embedder.dim:
        raise APIError(400, f"dimensions={req.dimensions}: {st.model_name} gives {st.embedder.dim}-d vectors only",
                       param="dimensions", code="invalid_value")

    def embed() -> np.ndarray:
        with st.lock:
            return st.embedder.embed(texts)  # (N, dim) float32, unit norm

    vecs = await run_in_threadpool(embed)
    n_tokens = _count_tokens(st.embedder, texts)
    if req.encoding_format == "base64":
        data = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vecs]
    else:
        data = [[float(x) for x in v] for v in vecs]
    return {"object": "list", "model": st.model_name,
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}


def _count_tokens(embedder: Any, texts: list[str]) -> int:
    tok = getattr(embedder, "tokenizer", None)
    if tok is None:
        return sum(len(t.split()) for t in texts)
    return sum(len(ids) for ids in tok(texts, truncation=True, max_length=embedder.max_length)["input_ids"])


# ---------------------------------------------------------------------------------------------- chat retrieval
def _retriever(st: EmbeddingState, opts: RetrievalOptions) -> Any:
    from genforge.rag.cli_main import build_retrievers
    from genforge.rag.retrieve import DenseRetriever, HybridRetriever

    key = (opts.collection, opts.mode)
    if key not in st.retrievers:
        # the dense side shares the server's embedder when the collection was indexed with the same one
        r = build_retrievers(st.rag_store, opts.collection, ["bm25"]) if opts.mode != "dense" else {}
        if opts.mode in ("dense", "hybrid"):
            from genforge.rag.embed import make_embedder
            from genforge.rag.store import open_store

            vs = open_store(st.rag_store, opts.collection)
            emb = st.embedder if st.embedder is not None and st.embedder.name == vs.embedder \
                else make_embedder(vs.embedder)
            r["dense"] = DenseRetriever(open_store(st.rag_store, opts.collection, dim=emb.dim, embedder=emb.name),
                                        emb)
        if opts.mode == "hybrid":
            r["hybrid"] = HybridRetriever([r["bm25"], r["dense"]])
        st.retrievers[key] = r[opts.mode]
    return st.retrievers[key]


async def retrieve_for_chat(request: Request, req: Any) -> list[dict] | None:
    """For a chat request with `retrieval`: prepend the passages as a system message; return the sources
    (None when the request did not opt in)."""
    opts: RetrievalOptions | None = getattr(req, "retrieval", None)
    if opts is None:
        return None
    st = getattr(request.app.state, "embeddings", None)
    if st is None or not st.rag_store:
        raise APIError(400, "this server has no retrieval store; start it with rag_store=<folder or Chroma URL>",
                       param="retrieval", code="unsupported")
    query = next((m.text() for m in reversed(req.messages) if m.role == "user"), "")
    if not query.strip():
        raise APIError(400, "retrieval needs a user message to use as the query", param="retrieval",
                       code="invalid_value")

    def search() -> list:
        with st.lock:
            return _retriever(st, opts).search(query, opts.k)

    try:
        hits = await run_in_threadpool(search)
    except GenforgeError as e:  # a missing collection, a store that is down: the client can act on it
        raise APIError(400, f"retrieval: {e}", param="retrieval.collection", code="invalid_value") from None
    from genforge.rag.qa import DEFENCE

    # a passage must not close its fence and smuggle text outside it (as in rag.qa.context_prompt)
    docs = "\n".join(f"<document id=\"{i + 1}\">\n{re.sub(r'</?document[^>]*>', '[tag removed]', h.text, flags=re.I)}"
                     "\n</document>" for i, h in enumerate(hits))
    req.messages.insert(0, Message(role="system", content=f"{DEFENCE}\n{docs}"))
    return [{"id": h.id, "score": h.score, "source": h.meta.get("source", ""), "text": h.text} for h in hits]
