"""FSDP2 in the shared trainer: 2 gloo processes == one process, sharded checkpoints resume exactly after SIGKILL,
the HF files beside the shards hold the full weights; activation checkpointing leaves gradients unchanged."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from genforge.checkpoint import load_model
from genforge.model.gpt import GPT, GPTConfig
from genforge.train import fsdp
from tests.helpers import make_shards

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
STEPS = 16


def _args(shards, out, **extra):
    base = {"shards": shards, "out_dir": out, "seq_len": 32, "model.depth": 2, "model.width": 64,
            "model.head_dim": 16, "model.max_seq_len": 64, "train.max_steps": STEPS, "train.micro_batch": 4,
            "train.warmup_steps": 3, "train.log_every": 1, "train.eval_every": 0, "train.ckpt_every": 4,
            "train.threads": 1, "train.progress": False, "eval_batches": 2,
            # the equalities below are about sharding; bf16 autocast (the CPU default where bf16 is native) rounds
            # differently when the reduction order differs, so these runs are fp32 (bf16 has its own test)
            "train.precision": "fp32"}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _torchrun(shards, out, **extra):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "genforge",
            "pretrain", *_args(shards, out, **{"train.parallel": "fsdp", **extra})]


def _losses(out):
    rows = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One single-process reference (grad_accum 2 = the same 8 sequences a step) and one 2-process FSDP run."""
    root = tmp_path_factory.mktemp("fsdp")
    shards = str(make_shards(root / "shards"))
    single = str(root / "single")
    subprocess.run([sys.executable, "-m", "genforge", "pretrain", *_args(shards, single, **{"train.grad_accum": 2})],
                   check=True, env=ENV, capture_output=True)
    sharded = str(root / "fsdp")
    r = subprocess.run(_torchrun(shards, sharded), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return shards, single, sharded


def test_two_fsdp_processes_match_single_process(runs):
    _, single, sharded = runs
    a, b = _losses(single), _losses(sharded)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    for step in a:
        assert a[step] == pytest.approx(b[step], abs=1e-5), f"step {step}: {a[step]} vs {b[step]}"


def test_sharded_checkpoint_holds_shards_and_full_hf_weights(runs):
    _, single, sharded = runs
    ckpt = os.path.join(sharded, "checkpoint")
    assert sorted(os.listdir(os.path.join(ckpt, fsdp.SHARDED_DIR))) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    state = torch.load(os.path.join(ckpt, "trainer_state.pt"), weights_only=True)
    assert state["sharded"] and "optimizers" not in state  # the optimizer state lives only in the shards
    ref, got = load_model(os.path.join(single, "checkpoint")), load_model(ckpt)
    assert got.lm_head.weight is got.embed_tokens.weight  # tying survives the gather
    for (name, p), (_, q) in zip(ref.state_dict().items(), got.state_dict().items(), strict=True):
        assert torch.allclose(p, q, atol=1e-5), name


@pytest.mark.slow
def test_fsdp_resumes_exactly_after_sigkill(runs, tmp_path):
    shards, _, sharded = runs
    killed = str(tmp_path / "killed")
    cmd = _torchrun(shards, killed)
    # its own session, so the kill takes torchrun and both workers at once (as a node failure would)
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    metrics = os.path.join(killed, "metrics.jsonl")
    deadline = time.time() + 180
    while time.time() < deadline:  # past the step-8 checkpoint, before the end
        if os.path.exists(metrics) and len(open(metrics).readlines()) >= 10:
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = max(_losses(killed))
    assert done < STEPS, "the run finished before it could be killed; the test proves nothing"
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout + r.stderr
    a, b = _losses(sharded), _losses(killed)
    assert sorted(b) == list(range(1, STEPS + 1))
    for step in a:
        assert a[step] == pytest.approx(b[step], abs=1e-6), f"step {step}: {a[step]} vs {b[step]}"


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, depth=2, width=32, head_dim=16, max_seq_len=16)
    ids = torch.randint(0, 50, (2, 12))
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(1)
        model = GPT(cfg)
        if ckpt:
            assert fsdp.activation_checkpointing(model) == 2
        model(ids).logsumexp(-1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n


def test_mixed_precision_policy_follows_train_precision():
    assert fsdp.mixed_precision("auto", torch.device("cpu")) is None
    assert fsdp.mixed_precision("fp32", torch.device("cuda")) is None
    mp = fsdp.mixed_precision("bf16", torch.device("cpu"))
    assert mp.param_dtype == torch.bfloat16 and mp.reduce_dtype == torch.float32


@pytest.mark.slow
def test_fsdp_bf16_with_activation_checkpointing_tracks_fp32(runs, tmp_path):
    shards, _, sharded = runs
    out = str(tmp_path / "bf16")
    r = subprocess.run(_torchrun(shards, out, **{"train.precision": "bf16", "train.activation_checkpointing": "true"}),
                       env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _losses(sharded), _losses(out)
    assert a[1] == pytest.approx(b[1], rel=0.01)  # bf16 rounding only
    assert b[STEPS] == pytest.approx(a[STEPS], rel=0.05) and b[STEPS] < b[1] - 1.0
