import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def tiny_cfg():
    from genforge.model.gpt import GPTConfig

    return GPTConfig(vocab_size=97, depth=2, width=64, head_dim=16, n_kv_head=2, max_seq_len=64)
