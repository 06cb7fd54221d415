"""The shared trainer: exact resume after SIGKILL, DDP == single process, accumulation, NaN guard."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from genforge.errors import TrainingError
from genforge.train.trainer import TrainConfig, Trainer, lr_at

from tests.helpers import make_shards

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _args(shards, out, steps, **extra):
    base = {"shards": shards, "out_dir": out, "seq_len": 32, "model.depth": 2, "model.width": 64,
            "model.head_dim": 16, "model.max_seq_len": 64, "train.max_steps": steps, "train.micro_batch": 4,
            "train.warmup_steps": 3, "train.log_every": 1, "train.eval_every": 0, "train.ckpt_every": 5,
            "train.threads": 1, "train.progress": False, "eval_batches": 2}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _losses(out):
    rows = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return str(make_shards(tmp_path_factory.mktemp("shards")))


def test_sigkill_then_resume_matches_uninterrupted(shards, tmp_path):
    steps = 40
    ref = str(tmp_path / "ref")
    subprocess.run([sys.executable, "-m", "genforge", "pretrain", *_args(shards, ref, steps)], check=True, env=ENV,
                   capture_output=True)
    killed = str(tmp_path / "killed")
    cmd = [sys.executable, "-m", "genforge", "pretrain", *_args(shards, killed, steps)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metrics = os.path.join(killed, "metrics.jsonl")
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once a checkpoint exists and the run is past it
        if os.path.exists(metrics) and len(open(metrics).readlines()) >= 17:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = max(_losses(killed))
    assert done < steps, "the run finished before it could be killed; the test proves nothing"
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, check=True)
    assert "resumed from" in out.stdout + out.stderr
    a, b = _losses(ref), _losses(killed)
    assert sorted(b) == list(range(1, steps + 1))
    for step in range(1, steps + 1):
        assert a[step] == pytest.approx(b[step], abs=1e-6), f"step {step}: {a[step]} vs {b[step]}"


def test_ddp_two_processes_match_single_process(shards, tmp_path):
    steps = 6
    single = str(tmp_path / "single")
    subprocess.run([sys.executable, "-m", "genforge", "pretrain",
                    *_args(shards, single, steps, **{"train.grad_accum": 2, "train.resume": "false"})],
                   check=True, env=ENV, capture_output=True)
    ddp = str(tmp_path / "ddp")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "genforge", "pretrain",
                        *_args(shards, ddp, steps, **{"train.grad_accum": 1, "train.resume": "false"})],
                       env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _losses(single), _losses(ddp)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    for step in a:
        assert a[step] == pytest.approx(b[step], abs=1e-5), f"step {step}: {a[step]} vs {b[step]}"


class _Data:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def get_batch(self, step, micro, rank, world):
        B = self.x.shape[0] // 4
        i = (micro * world + rank) * B
        return {"x": self.x[i:i + B], "y": self.y[i:i + B]}


def _sum_loss(model, batch):
    err = (model(batch["x"]).squeeze(-1) - batch["y"]) ** 2
    return err.sum(), err.numel(), {}


def test_grad_accumulation_equals_one_big_batch(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(16, 3), torch.randn(16)
    grads = []
    for accum, micro in ((1, 16), (4, 4)):
        torch.manual_seed(1)
        model = torch.nn.Linear(3, 1)

        class D:
            def get_batch(self, step, m, rank, world, micro=micro):
                return {"x": x[m * micro:(m + 1) * micro], "y": y[m * micro:(m + 1) * micro]}

        cfg = TrainConfig(max_steps=1, micro_batch=micro, grad_accum=accum, lr=0.1, warmup_steps=0, grad_clip=0,
                          progress=False, resume=False, weight_decay=0.0)
        t = Trainer(model, cfg, _sum_loss, D(), tmp_path / f"r{accum}", default_lr=0.1)
        t.fit()
        grads.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=0)


def test_nan_guard_names_the_step(tmp_path):
    model = torch.nn.Linear(3, 1)

    class D:
        def get_batch(self, step, m, rank, world):
            x = torch.randn(4, 3)
            if step == 3:
                x[0, 0] = float("nan")
            return {"x": x, "y": torch.randn(4)}

    cfg = TrainConfig(max_steps=10, progress=False, resume=False, warmup_steps=0)
    with pytest.raises(TrainingError, match="step 3"):
        Trainer(model, cfg, _sum_loss, D(), tmp_path / "nan", default_lr=0.01).fit()
    cfg.max_bad_steps = 1  # tolerated once: skipped and counted
    res = Trainer(torch.nn.Linear(3, 1), cfg, _sum_loss, D(), tmp_path / "nan2", default_lr=0.01).fit()
    assert res["bad_steps"] == 1


def test_schedule_warmup_then_cosine():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg, 1.0) == pytest.approx(0.1)
    assert lr_at(9, cfg, 1.0) == pytest.approx(1.0)
    assert lr_at(10, cfg, 1.0) == pytest.approx(1.0)
    assert lr_at(55, cfg, 1.0) == pytest.approx(0.55)
    assert lr_at(100, cfg, 1.0) == pytest.approx(0.1)
