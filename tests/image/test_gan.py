"""GAN on the shared Trainer: alternating D/G parts move both players, the EMA follows G, and a run interrupted
after a checkpoint resumes to exactly the weights of an uninterrupted run."""

import pytest
import torch

from genforge.image.gan import GAN, GANConfig
from genforge.image.run import ImageBatches, ImageTrainer, parts
from genforge.train.trainer import TrainConfig

DATA = torch.rand(40, 1, 4, 4)


class Crash(RuntimeError):
    pass


class CrashingBatches(ImageBatches):
    """Raises when asked for `crash_at`'s batch: a process dying between checkpoints."""

    def __init__(self, crash_at: int | None) -> None:
        super().__init__(DATA, None, batch_size=8, seed=0)
        self.crash_at = crash_at

    def get_batch(self, step, micro, rank, world):
        if step == self.crash_at:
            raise Crash(f"killed at step {step}")
        return super().get_batch(step, micro, rank, world)


def _trainer(out_dir, crash_at=None, seed=0, steps=7):
    torch.manual_seed(seed)  # a different init than the first run's: resume must overwrite every tensor
    model = GAN(GANConfig((1, 4, 4), z_dim=4, hidden=16, ema_decay=0.9))
    cfg = TrainConfig(max_steps=steps, micro_batch=8, lr=1e-3, warmup_steps=2, weight_decay=0.0, beta1=0.5,
                      beta2=0.999, grad_clip=0.0, eval_every=0, ckpt_every=3, log_every=1, seed=0, device="cpu",
                      progress=False)
    return ImageTrainer(model, cfg, parts(model), CrashingBatches(crash_at), out_dir, name="gan"), model


def test_alternating_parts_move_both_players_and_the_ema(tmp_path):
    trainer, model = _trainer(tmp_path, steps=3)
    g0, d0, e0 = ([p.clone() for p in m.parameters()] for m in (model.g, model.d, model.ema))
    out = trainer.fit()
    assert out["step"] == 3
    assert all(not torch.equal(a, b) for a, b in zip(g0, model.g.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(d0, model.d.parameters()))
    # the EMA moved, but lags: it sits between the initial and the current generator
    assert all(not torch.equal(a, b) for a, b in zip(e0, model.ema.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(model.ema.parameters(), model.g.parameters()))


def test_interrupted_run_resumes_exactly(tmp_path):
    ref, ref_model = _trainer(tmp_path / "ref")
    ref.fit()
    crashed, _ = _trainer(tmp_path / "run", crash_at=5)  # checkpoint at step 3, dies during step 5
    with pytest.raises(Crash):
        crashed.fit()
    resumed, model = _trainer(tmp_path / "run", seed=123)
    assert resumed.step == 3
    resumed.fit()
    for (name, a), b in zip(ref_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(ref_model.sample(4, seed=1), model.sample(4, seed=1))
