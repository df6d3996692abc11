"""uGMMLayer against an independent float64 formula, gradients, dropout and numerical safety."""

import math

import pytest
import torch
from torch import nn

from ugmm.nn import component_dropout_mask, uGMMLayer
from ugmm.ops import mixture_loglik_reference


def formula64(x, means, stds, log_weights):
    """The paper's formula written independently, with explicit loops over neurons, in float64."""
    x, means, stds, log_weights = (t.double() for t in (x, means, stds, log_weights))
    out = torch.empty(x.shape[0], means.shape[0], dtype=torch.float64)
    for j in range(means.shape[0]):
        dens = torch.distributions.Normal(means[j], stds[j]).log_prob(x)  # (B, n_in)
        out[:, j] = torch.logsumexp(dens + log_weights[j], dim=1)
    return out


@pytest.mark.parametrize("n_in,n_out,batch", [(1, 1, 1), (7, 3, 5), (33, 17, 9), (784, 4, 3)])
def test_layer_matches_formula(n_in, n_out, batch):
    layer = uGMMLayer(n_in, n_out)
    x = torch.randn(batch, n_in) * 2
    y = layer(x)
    assert y.shape == (batch, n_out) and y.dtype == torch.float32
    want = formula64(x, layer.means, layer.stds, layer.log_weights)
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-4)


def test_views_are_consistent_and_read_only():
    layer = uGMMLayer(6, 4)
    assert torch.allclose(torch.logsumexp(layer.log_weights, dim=1), torch.zeros(4), atol=1e-6)
    assert (layer.stds >= layer.std_floor).all()
    assert not layer.means.requires_grad and not layer.stds.requires_grad and not layer.log_weights.requires_grad


def test_extreme_sigmas_stay_finite():
    layer = uGMMLayer(10, 5, std_floor=1e-4)
    with torch.no_grad():
        layer.raw_std[:, :5] = -30.0  # sigma at the floor
        layer.raw_std[:, 5:] = 8.0  # sigma ~ 3000
    x = torch.randn(4, 10) * 50
    y = layer(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(
        y.double(), formula64(x, layer.means, layer.stds, layer.log_weights), rtol=1e-5, atol=1e-3
    )


def test_reference_gradcheck_float64():
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    mu = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    sd = (torch.rand(4, 5, dtype=torch.float64) + 0.3).requires_grad_()
    lw = torch.log_softmax(torch.randn(4, 5, dtype=torch.float64), dim=1).requires_grad_()
    assert torch.autograd.gradcheck(mixture_loglik_reference, (x, mu, sd, lw))


def test_layer_gradcheck_float64_with_dropout_mask():
    layer = uGMMLayer(5, 3, std_floor=1e-2).double()
    drop = torch.zeros(3, 5, dtype=torch.bool)
    drop[0, :4] = True
    drop[2, 1] = True
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x_: layer(x_, drop=drop), (x,))
    params = tuple(layer.parameters())
    assert torch.autograd.gradcheck(lambda *p: _functional(layer, x.detach(), drop, *p), params)


def _functional(layer, x, drop, mean, raw_std, logits):
    lw = torch.log_softmax(logits.masked_fill(drop, float("-inf")), dim=1)
    return mixture_loglik_reference(x, mean, layer.std_floor + raw_std.exp(), lw)


def test_dropout_mask_matches_formula_on_survivors():
    layer = uGMMLayer(8, 6, dropout=0.5)
    drop = component_dropout_mask(6, 8, 0.5)
    x = torch.randn(5, 8)
    y = layer(x, drop=drop)
    lw = torch.log_softmax(layer.logits.detach().masked_fill(drop, float("-inf")), dim=1)
    torch.testing.assert_close(y.double(), formula64(x, layer.means, layer.stds, lw), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("n_in,p", [(1, 0.9), (2, 0.9), (5, 0.99)])
def test_dropout_never_kills_a_neuron_or_yields_nan(n_in, p):
    layer = uGMMLayer(n_in, 64, dropout=p).train()
    for _ in range(200):
        drop = layer.sample_dropout_mask()
        assert not drop.all(dim=1).any()
        y = layer(torch.randn(3, n_in))
        assert torch.isfinite(y).all()
        y.sum().backward()
        assert all(torch.isfinite(q.grad).all() for q in layer.parameters())


def test_dropout_only_in_training_and_shared_across_batch():
    layer = uGMMLayer(20, 4, dropout=0.5)
    x = torch.randn(1, 20).repeat(6, 1)
    layer.train()
    y = layer(x)
    assert torch.allclose(y, y[:1].expand_as(y))  # one mask for the whole batch
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))
    assert layer.sample_dropout_mask() is None


def test_float32_under_autocast():
    layer = uGMMLayer(12, 5)
    x = torch.randn(4, 12).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.float32


def test_bad_shapes_and_arguments_raise_one_line():
    layer = uGMMLayer(4, 2)
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        layer(torch.randn(3, 5))
    with pytest.raises(ValueError, match="dropout"):
        uGMMLayer(4, 2, dropout=1.0)
    with pytest.raises(ValueError, match="n_nodes"):
        uGMMLayer(0, 2)
    with pytest.raises(ValueError, match="backend"):
        uGMMLayer(4, 2, backend="cuda-magic")


def test_repr_and_reset():
    layer = uGMMLayer(784, 128, dropout=0.2)
    assert "n_nodes_in=784, n_nodes=128, dropout=0.2" in repr(layer)
    before = layer.mean.clone()
    layer.reset_parameters()
    assert not torch.equal(before, layer.mean)


def test_paper_readme_usage_trains_one_step():
    class uGMMNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.flatten = nn.Flatten()
            self.fc1 = uGMMLayer(n_nodes_in=28 * 28, n_nodes=16, dropout=0.5)
            self.fc2 = uGMMLayer(n_nodes_in=16, n_nodes=8, dropout=0.0)
            self.fc3 = uGMMLayer(n_nodes_in=8, n_nodes=10, dropout=0.0)

        def forward(self, x):
            return self.fc3(self.fc2(self.fc1(self.flatten(x))))

    model = uGMMNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(10, (8,))
    loss = nn.CrossEntropyLoss()(model(x), y)
    loss.backward()
    opt.step()
    assert math.isfinite(loss.item())


def test_drop_false_keeps_every_component_in_training_mode():
    layer = uGMMLayer(6, 4, dropout=0.9, backend="reference").train()
    x = torch.randn(5, 6)
    full = layer.eval()(x)
    layer.train()
    torch.testing.assert_close(layer(x, drop=False), full)
    assert not torch.allclose(layer(x), full)  # the default still samples a mask at p = 0.9
