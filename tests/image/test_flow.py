"""RealNVP: invertibility, log-det against autograd's Jacobian, bits/dim and training."""

import math

import torch

from genforge.image.flow import RealNVP


def _randomised(flow):
    torch.manual_seed(0)
    for layer in flow.layers:  # the last linear starts at zero (identity map); make the test see a real map
        layer.net[-1].weight.data.normal_(0, 0.3)
        layer.net[-1].bias.data.normal_(0, 0.3)
    return flow


def test_invertible_to_1e5():
    flow = _randomised(RealNVP((1, 4, 4), n_layers=4, hidden=32))
    x = torch.randn(8, 16)
    z, _ = flow(x)
    assert not torch.allclose(z, x)
    assert (flow.inverse(z) - x).abs().max() < 1e-5


def test_logdet_matches_autograd_jacobian():
    flow = _randomised(RealNVP((1, 2, 2), n_layers=4, hidden=16)).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    _, logdet = flow(x)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], x[i])  # (4, 4)
        assert abs(torch.linalg.slogdet(jac).logabsdet.item() - logdet[i].item()) < 1e-8


def test_bits_per_dim_of_untrained_flow_and_training():
    # uniform dequantized noise at 17 levels: a good model needs ~log2(17) = 4.09 bits/dim or less
    torch.manual_seed(0)
    x = torch.zeros(128, 1, 4, 4)
    x[:64, :, :2] = 1.0  # two patterns: top half or bottom half lit
    x[64:, :, 2:] = 1.0
    flow = RealNVP((1, 4, 4), n_layers=4, hidden=64)
    g = torch.Generator().manual_seed(0)
    start = flow.bits_per_dim(x, 17, g).item()
    opt = torch.optim.Adam(flow.parameters(), lr=2e-3)
    for _ in range(300):
        bpd = flow.bits_per_dim(x, 17, g)
        opt.zero_grad()
        bpd.backward()
        opt.step()
    end = flow.bits_per_dim(x, 17, g).item()
    assert end < start - 1.0 and end < math.log2(17)
    assert flow.sample(5).shape == (5, 1, 4, 4)
