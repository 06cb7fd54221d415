"""Optional dependencies: one helper that imports a module or names the extra that provides it.

Core genforge needs only torch, numpy, tokenizers, safetensors, pyyaml and tqdm. Serving, metric
oracles, plots and MinHash dedup sit behind extras (`pip install 'genforge[serve]'` ...), so a
missing one must say which extra to install instead of a bare `ModuleNotFoundError`.
This module imports nothing heavy: the CLI's `--help` path may use it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from genforge.errors import GenforgeError

# extra -> what it is for (the names match [project.optional-dependencies] in pyproject.toml)
EXTRAS = {
    "serve": "the OpenAI-compatible server (fastapi, uvicorn, httpx)",
    "eval": "ROUGE/BLEU metrics and LLM judges (rouge-score, sacrebleu, httpx)",
    "report": "plots in report cards (matplotlib)",
    "data": "learned data filters (scikit-learn), datasketch MinHash, datatrove scale-out",
    "agents": "the agents' router classifier (scikit-learn)",
    "image": "image models and metrics (scikit-learn, pillow, scipy, diffusers)",
    "rag": "retrieval: the packaged MiniLM, bm25s, LanceDB, FAISS",
    "rag-server": "the Chroma server backend (chromadb)",
    "gguf": "GGUF export for llama.cpp / ollama (gguf)",
    "scaling": "scaling-law fits and plots (scipy, matplotlib)",
    "safety": "the safety suite's AI-text classifier (scikit-learn); garak runs from .venv-garak",
}


class MissingExtraError(GenforgeError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it.

    Also an ImportError, so code that already falls back on ImportError keeps working.
    """


def require(module: str, extra: str) -> ModuleType:
    """Import `module`, or raise MissingExtraError naming `pip install 'genforge[extra]'`."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        # only the module we asked for (or its parent package) counts as missing; a broken install of
        # one of *its* dependencies is a different problem and keeps its own message
        top = module.split(".")[0]
        if e.name is None or e.name.split(".")[0] != top:
            raise
        what = EXTRAS.get(extra, extra)
        raise MissingExtraError(f"{module} is not installed; it is needed for {what}: "
                                f"pip install 'genforge[{extra}]'") from None
