"""Pretraining smoke run: loss falls, val metrics are consistent, the checkpoint round-trips."""

import math

import pytest
import torch

from genforge.checkpoint import load_checkpoint
from genforge.config import load_config
from genforge.data.shards import TokenShards, dtype_for_vocab
from genforge.errors import DataError
from genforge.train.pretrain import PretrainConfig, main
from genforge.train.trainer import read_metrics

from tests.helpers import make_shards


def test_pretrain_loss_falls_and_checkpoint_round_trips(tmp_path):
    shards = make_shards(tmp_path / "shards")
    cfg = load_config(PretrainConfig, None, [
        f"shards={shards}", f"out_dir={tmp_path / 'run'}", "seq_len=32", "model.depth=2", "model.width=64",
        "model.head_dim=16", "model.max_seq_len=64", "train.max_steps=40", "train.micro_batch=8",
        "train.warmup_steps=4", "train.log_every=1", "train.eval_every=20", "train.progress=false", "eval_batches=2"])
    res = main(cfg)
    losses = [r["loss"] for r in read_metrics(tmp_path / "run")]
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    assert res["val_ppl"] == pytest.approx(math.exp(res["val_loss"]), rel=1e-6)
    assert 0 < res["val_bpb"] < 8
    model, tok, meta = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert meta["stage"] == "pretrain" and meta["run"]["train"]["max_steps"] == 40
    assert tok is not None and (tmp_path / "run" / "config.yaml").exists()
    batch = TokenShards(shards, "val", 32, 2).eval_batches(1)[0]
    state = torch.load(tmp_path / "run" / "checkpoint" / "trainer_state.pt", weights_only=False)["model"]
    from genforge.model.gpt import GPT
    ref = GPT(model.config)
    ref.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(model(batch["input_ids"]), ref.eval()(batch["input_ids"]))


def test_shard_dtype_and_errors(tmp_path):
    assert dtype_for_vocab(4096).name == "uint16" and dtype_for_vocab(70000).name == "uint32"
    with pytest.raises(DataError, match="no shard manifest"):
        TokenShards(tmp_path)
    shards = make_shards(tmp_path / "s", n_docs=20)
    with pytest.raises(DataError, match="seq_len"):
        TokenShards(shards, "train", seq_len=10**7)
