"""The CLI prints one-line errors (no traceback) and exits non-zero; --help lists config keys."""

import subprocess
import sys

import torch

from genforge.checkpoint import save_checkpoint
from genforge.model.gpt import GPT, GPTConfig


def run(*args):
    return subprocess.run([sys.executable, "-m", "genforge", *args], capture_output=True, text=True)


def test_help_lists_config_keys():
    r = run("pretrain", "--help")
    assert r.returncode == 0
    assert "train.max_steps" in r.stdout and "model.depth" in r.stdout


def test_unknown_key_is_one_line_error(tmp_path):
    r = run("pretrain", "train.max_stepz=3")
    assert r.returncode == 2
    assert "did you mean 'train.max_steps'" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_shards_and_checkpoint(tmp_path):
    r = run("pretrain", f"shards={tmp_path}/none")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "tokenizer" in r.stderr
    r = run("export", str(tmp_path / "nope"), str(tmp_path / "out"))
    assert r.returncode == 2 and "checkpoint folder not found" in r.stderr


def test_context_longer_than_model(tmp_path):
    model = GPT(GPTConfig(vocab_size=50, depth=1, width=32, head_dim=16, max_seq_len=8))
    try:
        model(torch.zeros(1, 9, dtype=torch.long))
    except Exception as e:
        assert "longer than the model's context (8)" in str(e)
    else:
        raise AssertionError("no error for a too-long context")
    save_checkpoint(tmp_path / "ck", model)
    r = run("export", str(tmp_path / "ck"), str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "model.safetensors").exists()
