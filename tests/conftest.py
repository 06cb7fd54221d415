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


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """One tiny BPE tokenizer (vocab 400) trained once per test run on `tests.helpers.tiny_corpus`; read-only."""
    from tests.helpers import shared_tokenizer

    return shared_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    """One tiny untrained GPT (depth 1, width 32, seed 0) over `tiny_tokenizer`'s vocab, built once per run.

    Shared by every test that asks for it: use it read-only (eval, generation, saving), or deepcopy it first."""
    from genforge.model.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=tiny_tokenizer.vocab_size, depth=1, width=32, head_dim=16, max_seq_len=64)).eval()
