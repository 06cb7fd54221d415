"""Several optimizers in the one loop: a GAN's D and G steps alternate and resume exactly after a SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from genforge.checkpoint import load_model
from genforge.errors import TrainingError
from genforge.train.trainer import Part, TrainConfig, Trainer
from tests.train.toy_gan import ToyGAN, make_trainer

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _rows(out):
    rows = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    return {r["step"]: r for r in rows if r["split"] == "train"}


def test_parts_follow_their_schedules(tmp_path):
    t = make_trainer(str(tmp_path / "run"), 6)
    g_before = [p.detach().clone() for p in t.model.gen.parameters()]
    t.train_step()  # step 0: only D (G runs on odd steps)
    assert all(torch.equal(a, b) for a, b in zip(g_before, t.model.gen.parameters()))
    t.step = 1
    row = t.train_step()
    assert {"loss_disc", "loss_gen", "grad_norm_gen"} <= set(row)
    assert not all(torch.equal(a, b) for a, b in zip(g_before, t.model.gen.parameters()))
    assert all(p.grad is None for p in t.model.parameters()), "a part left gradients for the next one"


def test_part_names_must_differ(tmp_path):
    m = torch.nn.Linear(2, 1)
    parts = [Part("a", m, lambda mm, b: (mm.weight.sum(), 1, {})), Part("a", m, lambda mm, b: (mm.weight.sum(), 1, {}))]
    with pytest.raises(TrainingError, match="distinct names"):
        Trainer(m, TrainConfig(progress=False, resume=False), parts, None, tmp_path)


def test_gan_sigkill_then_resume_matches_uninterrupted(tmp_path):
    steps = 40
    ref = str(tmp_path / "ref")
    subprocess.run([sys.executable, "-m", "tests.train.toy_gan", ref, str(steps)], check=True, env=ENV,
                   capture_output=True)
    killed = str(tmp_path / "killed")
    cmd = [sys.executable, "-m", "tests.train.toy_gan", killed, str(steps), "0.03"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metrics = os.path.join(killed, "metrics.jsonl")
    deadline = time.time() + 120
    while time.time() < deadline:  # kill past the step-10 checkpoint, mid-interval
        if os.path.exists(metrics) and len(open(metrics).readlines()) >= 13:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert max(_rows(killed)) < steps, "the run finished before it could be killed; the test proves nothing"
    out = subprocess.run(cmd[:-1], env=ENV, capture_output=True, text=True, check=True)
    assert "resumed from" in out.stdout + out.stderr
    a, b = _rows(ref), _rows(killed)
    assert sorted(b) == list(range(1, steps + 1)), "replayed steps must not be logged twice"
    for step in a:
        for key in ("loss_disc", "loss_gen"):
            if key in a[step]:
                assert a[step][key] == pytest.approx(b[step][key], abs=1e-6), f"step {step} {key}"
    ma, mb = load_model(os.path.join(ref, "checkpoint")), load_model(os.path.join(killed, "checkpoint"))
    assert isinstance(mb, ToyGAN)
    for (n, p), q in zip(ma.named_parameters(), mb.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=n)
