"""Checkpoints: a generic core (`core.py`) and one adapter per model family (`hf_llama.py` for `GPT`).

Importing the package registers the built-in families, so `load_model` can read any folder they wrote.
"""

from genforge.checkpoint import hf_bert, hf_t5  # noqa: F401  (register the BERT and T5 families)
from genforge.checkpoint.core import (
    FAMILIES,
    ModuleFamily,
    find_resume_state,
    load_checkpoint,
    load_model,
    load_training_state,
    read_meta,
    register_family,
    save_checkpoint,
    save_training_state,
    write_checkpoint_files,
)
from genforge.checkpoint.hf_llama import LlamaFamily, import_hf

__all__ = ["FAMILIES", "LlamaFamily", "ModuleFamily", "find_resume_state", "import_hf", "load_checkpoint",
           "load_model", "load_training_state", "read_meta", "register_family", "save_checkpoint",
           "save_training_state", "write_checkpoint_files"]
