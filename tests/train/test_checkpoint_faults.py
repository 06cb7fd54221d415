"""Issue 12, training state: a checkpoint survives a kill at any instant, a full disk, damaged or hostile files."""

import errno
import json
import os
import shutil
import stat

import pytest
import torch

import genforge.checkpoint.core as ckcore
import genforge.io as gio
from genforge.errors import CheckpointError, StorageError
from genforge.train.trainer import TrainConfig, Trainer


class _Data:
    """Regression data, a pure function of the step; `fail_at` simulates a crash at that step."""

    def __init__(self, fail_at: int | None = None):
        self.fail_at = fail_at

    def get_batch(self, step, micro, rank, world):
        if step == self.fail_at:
            raise KeyboardInterrupt("simulated kill")
        g = torch.Generator().manual_seed(step)
        x = torch.randn(8, 3, generator=g)
        return {"x": x, "y": x.sum(-1) + 0.1 * torch.randn(8)}  # torch.randn: the RNG must resume exactly too


def _loss(model, batch):
    err = (model(batch["x"]).squeeze(-1) - batch["y"]) ** 2
    return err.sum(), err.numel(), {}


def _trainer(out, steps, fail_at=None, **cfg):
    torch.manual_seed(0)
    base = dict(max_steps=steps, warmup_steps=0, log_every=1, eval_every=0, ckpt_every=5, progress=False, seed=0)
    base.update(cfg)
    return Trainer(torch.nn.Linear(3, 1), TrainConfig(**base), _loss, _Data(fail_at), out, default_lr=0.05)


def _steps(out):
    rows = [json.loads(x) for x in open(out / "metrics.jsonl")]
    return [r["step"] for r in rows if r["split"] == "train"]


def _weights(t):
    return torch.cat([p.detach().flatten() for p in t.model.parameters()])


@pytest.fixture
def reference(tmp_path):
    t = _trainer(tmp_path / "ref", 10)
    t.fit()
    return _weights(t)


def test_kill_between_the_two_renames_resumes_from_old(tmp_path, monkeypatch, reference):
    """Case 1: `checkpoint -> .checkpoint.old` done, `tmp -> checkpoint` not: resume uses .old, never deletes it."""
    out = tmp_path / "run"
    t = _trainer(out, 10)
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if str(src).endswith(".tmp") and str(dst).endswith("checkpoint") and len(calls) > 1:
            raise KeyboardInterrupt("killed between the renames")
        return real_replace(src, dst)

    monkeypatch.setattr(gio.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        t.fit()  # the step-5 save goes through; the final save is killed after moving step 5 aside
    monkeypatch.undo()
    assert not (out / "checkpoint").exists() and (out / ".checkpoint.old" / "trainer_state.pt").exists()
    with pytest.raises(CheckpointError, match=r"\.checkpoint\.old: rerun the training command"):
        ckcore.load_model(out / "checkpoint")
    resumed = _trainer(out, 10)
    assert resumed.step == 5
    resumed.fit()
    assert (out / "checkpoint").is_dir() and not (out / ".checkpoint.old").exists()
    torch.testing.assert_close(_weights(resumed), reference, atol=1e-6, rtol=0)
    assert _steps(out) == list(range(1, 11))


def test_next_save_keeps_old_until_new_is_in_place(tmp_path, monkeypatch):
    """Case 1, second half: with only .checkpoint.old on disk, a save that fails must not delete it."""
    out = tmp_path / "run"
    _trainer(out, 5).fit()
    os.replace(out / "checkpoint", out / ".checkpoint.old")
    t = _trainer(out, 10)
    assert t.step == 5

    def boom(folder):
        raise KeyboardInterrupt("killed mid-save")

    t.save_fn = boom
    with pytest.raises(KeyboardInterrupt):
        t.save()
    assert (out / ".checkpoint.old" / "trainer_state.pt").exists()


@pytest.mark.parametrize("damage", ["missing", "truncated", "empty"])
def test_damaged_state_falls_back_or_names_the_file(tmp_path, damage):
    """Case 2: never a silent restart over intact weights; the previous complete checkpoint is used when there."""
    out = tmp_path / "run"
    _trainer(out, 5).fit()
    stash = tmp_path / "step5"
    shutil.copytree(out / "checkpoint", stash)
    _trainer(out, 10).fit()
    state = out / "checkpoint" / "trainer_state.pt"

    def hurt():
        if damage == "missing":
            state.unlink()
        else:
            data = state.read_bytes()
            state.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")

    hurt()
    with pytest.raises(CheckpointError, match=r"trainer_state\.pt: (missing|unreadable)") as e:
        _trainer(out, 20)
    assert len(str(e.value).splitlines()) == 1 and "train.resume=false" in str(e.value)
    assert (out / "checkpoint" / "model.safetensors").exists() or (out / "checkpoint").is_dir()
    shutil.copytree(stash, out / ".checkpoint.old")  # an earlier complete checkpoint beside it
    t = _trainer(out, 20)
    assert t.step == 5
    assert _steps(out) == list(range(1, 6)), "rows past the resumed step must go"


def test_torn_metrics_line_and_no_duplicate_rows(tmp_path, reference):
    """Case 3: a crash mid-run leaves rows past the checkpoint and a torn last line; resume cleans both."""
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _trainer(out, 10, fail_at=8).fit()
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "split": "tr')  # an append cut short (a full disk does this)
    t = _trainer(out, 10)
    assert t.step == 5
    t.fit()
    assert _steps(out) == list(range(1, 11))
    torch.testing.assert_close(_weights(t), reference, atol=1e-6, rtol=0)


def test_disk_full_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """Case 4: an injected ENOSPC in the middle of trainer_state.pt (torch.save hides it in a RuntimeError)."""
    out = tmp_path / "run"
    _trainer(out, 5).fit()
    t = _trainer(out, 10)
    t.step = 10
    real_open = open

    class Full:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += len(b)
            if self.n > 500:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(b)

        def flush(self):
            self.f.flush()

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr(ckcore, "open", lambda p, mode="r": Full(real_open(p, mode)), raising=False)
    with pytest.raises(StorageError) as e:
        t.save()
    msg = str(e.value)
    assert "disk full" in msg and str(out) in msg and len(msg.splitlines()) == 1
    monkeypatch.undo()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert _trainer(out, 10).step == 5  # the step-5 checkpoint is intact


def test_disk_full_in_weights_file_and_log(tmp_path):
    """Case 4: ENOSPC raised by any writer inside the save, and by the metrics append."""
    t = _trainer(tmp_path / "run", 5)

    def full(folder):
        raise OSError(errno.ENOSPC, "No space left on device")

    t.save_fn = full
    with pytest.raises(StorageError, match="disk full"):
        t.save()

    def rust_full(folder):  # safetensors reports a full disk as its own error type
        raise RuntimeError("Error while serializing: IoError(No space left on device (os error 28))")

    t.save_fn = rust_full
    with pytest.raises(StorageError, match="disk full"):
        t.save()

    def denied(folder):
        raise PermissionError(errno.EACCES, "Permission denied")

    t.save_fn = denied
    with pytest.raises(StorageError, match=r"checkpoint: permission denied"):
        t.save()
    t.metrics_path = tmp_path / "no_such_dir_is_a_file"
    t.metrics_path.write_text("")
    t.metrics_path = t.metrics_path / "metrics.jsonl"  # a path under a file: OSError on mkdir/open
    with pytest.raises(StorageError, match="metrics.jsonl"):
        t.log({"step": 1})


def test_stale_temp_folders_removed_and_permissions_readable(tmp_path):
    """Case 5: temp folders of killed saves are cleaned; the checkpoint is 0755/0644 (subject to umask)."""
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".checkpoint.ab12cd34.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    _trainer(out, 5, ckpt_every=0).fit()
    assert not stale.exists()
    mask = os.umask(0)
    os.umask(mask)
    ck = out / "checkpoint"
    assert stat.S_IMODE(ck.stat().st_mode) == 0o777 & ~mask
    for f in ck.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f.name


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.mkdir, (self.target,)


def test_malicious_trainer_state_does_not_execute(tmp_path):
    """Case 6: a crafted trainer_state.pt whose unpickling would call os.mkdir is refused (weights_only=True)."""
    out = tmp_path / "run"
    _trainer(out, 5).fit()
    pwned = tmp_path / "pwned"
    torch.save({"step": 3, "x": _Evil(str(pwned))}, out / "checkpoint" / "trainer_state.pt")
    with pytest.raises(CheckpointError, match=r"trainer_state\.pt: unreadable training state"):
        _trainer(out, 10)
    assert not pwned.exists(), "unpickling ran code"


def test_state_holds_only_plain_types(tmp_path):
    """Case 6: what the trainer writes loads under weights_only=True (RNG states as tensors and plain values)."""
    out = tmp_path / "run"
    _trainer(out, 5).fit()
    state = torch.load(out / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 5 and isinstance(state["rng"][0]["numpy"]["keys"], torch.Tensor)


def test_rng_state_round_trips_through_weights_only(tmp_path):
    import random

    import numpy as np

    from genforge import runtime

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's legacy state
    torch.save(runtime.rng_state(), tmp_path / "rng.pt")
    first = (random.random(), np.random.standard_normal(), torch.rand(1).item())
    runtime.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.standard_normal(), torch.rand(1).item()) == first
