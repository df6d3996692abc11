"""Missing values by MPE: the most probable value of a hidden feature under a density model."""

import pytest
import torch

from ugmm.nn import impute_mean, impute_mpe, log_joint_all, uGMMNet


@pytest.fixture
def density_net():
    torch.manual_seed(3)
    net = uGMMNet(4, 1, width=6, depth=1, std_floor=0.3).double()
    return net


def _brute_force(net, x, var_index, fine, marginalize=None):
    if marginalize is None:
        scores = log_joint_all(net, x, var_index, fine)
    else:
        index, states = marginalize
        column = torch.tensor([index])
        scores = torch.stack([log_joint_all(net, x.index_fill(1, column, s), var_index, fine) for s in states])
        scores = torch.logsumexp(scores, dim=0)
    return fine[scores.argmax(dim=0)]


@pytest.mark.parametrize("marginalize", [None, (3, torch.tensor([0.0, 1.0, 2.0]))])
def test_impute_mpe_finds_the_mode(density_net, marginalize):
    x = torch.randn(16, 4, dtype=torch.float64)
    fine = torch.linspace(-4.0, 4.0, 40001, dtype=torch.float64)
    expected = _brute_force(density_net, x, 1, fine, marginalize)
    got = impute_mpe(density_net, x, 1, torch.linspace(-4.0, 4.0, 161), marginalize=marginalize, refine=3)
    # the refined value is as good as the brute-force one (to the fine grid's step)
    torch.testing.assert_close(got.double(), expected, atol=2e-3, rtol=0)


def test_impute_mpe_ignores_the_hidden_value_and_keeps_the_net_unchanged(density_net):
    x = torch.randn(8, 4, dtype=torch.float64)
    before = [p.clone() for p in density_net.parameters()]
    grid = torch.linspace(-3.0, 3.0, 61)
    a = impute_mpe(density_net, x, 2, grid)
    b = impute_mpe(density_net, x.index_fill(1, torch.tensor([2]), 100.0), 2, grid)
    torch.testing.assert_close(a, b)
    assert all(torch.equal(p, q) for p, q in zip(before, density_net.parameters()))


def test_impute_mean_is_the_posterior_mean_on_the_grid(density_net):
    x = torch.randn(8, 4, dtype=torch.float64)
    grid = torch.linspace(-6.0, 6.0, 601)
    density = log_joint_all(density_net, x, 0, grid.double()).exp()  # (S, B)
    expected = (density * grid.double().unsqueeze(1)).sum(0) / density.sum(0)
    torch.testing.assert_close(impute_mean(density_net, x, 0, grid).double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impute", [impute_mpe, impute_mean])
def test_imputation_needs_a_grid(density_net, impute):
    with pytest.raises(ValueError, match="at least 2 candidate"):
        impute(density_net, torch.zeros(2, 4), 0, torch.tensor([0.0]))
