"""GAN: alternating D/G steps, EMA, exact resume from a checkpoint, wrong-family checkpoints."""

import pytest
import torch

from genforge.errors import CheckpointError
from genforge.image.gan import MLPDiscriminator, MLPGenerator, gan_sample, gan_step, make_ema
from genforge.image.train import batch_indices, load_checkpoint, save_checkpoint


def _setup(seed=0):
    torch.manual_seed(seed)
    g, d = MLPGenerator((1, 4, 4), z_dim=4, hidden=16), MLPDiscriminator((1, 4, 4), hidden=16)
    ema = make_ema(g)
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-3, betas=(0.5, 0.999))
    return g, d, ema, opt_g, opt_d


DATA = torch.rand(40, 1, 4, 4)


def _run(parts, gen, start, n):
    g, d, ema, opt_g, opt_d = parts
    for step in range(start, start + n):
        gan_step(g, d, ema, opt_g, opt_d, DATA[batch_indices(40, 8, 0, step)], gen, ema_decay=0.9)


def test_alternating_steps_move_both_players():
    g, d, ema, opt_g, opt_d = parts = _setup()
    g0, d0 = [p.clone() for p in g.parameters()], [p.clone() for p in d.parameters()]
    gen = torch.Generator().manual_seed(0)
    _run(parts, gen, 0, 3)
    assert all(not torch.equal(a, b) for a, b in zip(g0, g.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(d0, d.parameters()))
    # EMA lags: it sits between the initial and the current generator
    assert all(not torch.equal(a, b) for a, b in zip(ema.parameters(), g.parameters()))


def test_resume_is_exact(tmp_path):
    # A: 6 steps straight through
    parts_a = _setup()
    gen_a = torch.Generator().manual_seed(7)
    _run(parts_a, gen_a, 0, 7)
    # B: 3 steps, checkpoint, fresh objects and RNG, load, 4 more (crossing the epoch boundary at step 5)
    parts_b = _setup()
    gen_b = torch.Generator().manual_seed(7)
    _run(parts_b, gen_b, 0, 3)
    names = ["g", "d", "ema"]
    save_checkpoint(tmp_path / "ck", "gan", 3, dict(zip(names, parts_b[:3])),
                    {"g": parts_b[3], "d": parts_b[4]}, gen_b)
    parts_c = _setup(seed=123)
    gen_c = torch.Generator()
    step = load_checkpoint(tmp_path / "ck", "gan", dict(zip(names, parts_c[:3])), {"g": parts_c[3], "d": parts_c[4]},
                           gen_c)
    assert step == 3
    _run(parts_c, gen_c, step, 4)
    for ma, mc in zip(parts_a[:3], parts_c[:3]):
        for pa, pc in zip(ma.state_dict().values(), mc.state_dict().values()):
            assert torch.equal(pa, pc)
    assert torch.equal(gan_sample(parts_a[2], 4, seed=1), gan_sample(parts_c[2], 4, seed=1))


def test_wrong_family_and_missing_checkpoint(tmp_path):
    g, d, ema, opt_g, opt_d = _setup()
    save_checkpoint(tmp_path / "ck", "gan", 1, {"g": g})
    with pytest.raises(CheckpointError, match="a 'gan' checkpoint, but a 'ddpm' model"):
        load_checkpoint(tmp_path / "ck", "ddpm", {"model": g})
    with pytest.raises(CheckpointError, match="no image checkpoint"):
        load_checkpoint(tmp_path / "nothing", "gan", {"g": g})
