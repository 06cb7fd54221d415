import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent


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


@dataclass(frozen=True)
class SmokeRun:
    """A finished `genforge speedrun size=smoke` in a temp folder used as the working directory."""

    root: Path  # the working directory: runs/ lies in it, as after `genforge speedrun` in a checkout
    run: Path  # root/runs/smoke (root/runs/tiny links to it, for the README's runs/tiny/... paths)
    cmd: list[str]  # the command that made it (rerun it: every stage is done)
    env: dict[str, str]  # the environment to run commands in (this checkout first on PYTHONPATH)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> SmokeRun:
    """One smoke speedrun per test run (about a minute alone, ~3 under load), shared by the end-to-end speedrun test
    and the README test.

    `sft.chat_steps=16` trains the smoke chat model a little longer than the smoke recipe's 12 steps."""
    root = tmp_path_factory.mktemp("smoke_run")
    cmd = [sys.executable, "-m", "genforge", "speedrun", "size=smoke", "runs_dir=runs", "progress=false",
           "sft.chat_steps=16"]
    env = repo_env()
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{(r.stdout + r.stderr)[-4000:]}"
    (root / "runs" / "tiny").symlink_to("smoke", target_is_directory=True)
    return SmokeRun(root, root / "runs" / "smoke", cmd, env)


def repo_env() -> dict[str, str]:
    """os.environ with this checkout first on PYTHONPATH, so `python -m genforge` run from a temp folder imports
    the genforge under test (not whatever an editable install points at)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env
