"""Conv features with a uGMM head or the same-size MLP head."""

import pytest
import torch

from ugmm.nn import MLP, ConvNet, uGMMNet


@pytest.mark.parametrize("head", ["ugmm", "mlp"])
def test_conv_net_shapes_and_gradients(head):
    net = ConvNet(784, 10, head=head, channels=(4, 8), n_features=16, width=8, depth=1)
    assert isinstance(net.head, uGMMNet if head == "ugmm" else MLP)
    assert net.head.sizes == [16, 8, 10]
    x = torch.rand(5, 784)
    out = net(x)
    assert out.shape == (5, 10) and torch.isfinite(out).all()
    torch.testing.assert_close(net(x.reshape(5, 1, 28, 28)), out)
    out.logsumexp(1).sum().backward()
    # the head's gradient reaches the convolutions
    assert net.features.blocks[0].weight.grad.abs().sum() > 0


def test_conv_net_linear_head_and_bad_arguments():
    assert ConvNet(784, 10, head="mlp", depth=0, n_features=32).head.sizes == [32, 10]
    with pytest.raises(ValueError, match="unknown head"):
        ConvNet(784, 10, head="rbf")
    with pytest.raises(ValueError, match="does not match image_shape"):
        ConvNet(100, 10)


def test_init_from_data_starts_the_ugmm_head_on_the_features():
    torch.manual_seed(0)
    net = ConvNet(784, 10, channels=(4, 8), n_features=16, width=8, depth=1)
    x = torch.rand(64, 784)
    net.init_from_data(x, generator=torch.Generator().manual_seed(0))
    features = net.features(x)
    first = net.head.layers[0]
    # every first-layer neuron's means are one row of the features
    assert all(any(torch.allclose(m, f) for f in features) for m in first.means)


def test_conv_ugmm_learns_a_toy_task():
    torch.manual_seed(0)
    x = torch.rand(128, 1, 8, 8) * 0.2
    y = torch.arange(128) % 2
    x[y == 1, :, :4] += 0.8  # class 1: a bright top half
    net = ConvNet(64, 2, image_shape=(1, 8, 8), channels=(4, 8), n_features=8, width=8, depth=1, std_floor=0.1)
    net.init_from_data(x)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    assert (net(x).argmax(1) == y).float().mean() > 0.95


@pytest.mark.parametrize("head", ["ugmm", "mlp"])
def test_feature_norm_gives_every_image_standardised_features(head):
    torch.manual_seed(0)
    net = ConvNet(784, 10, head=head, channels=(4, 8), n_features=64, width=8, depth=1, feature_norm=True)
    features = net.features(torch.rand(6, 784) * 5.0)
    torch.testing.assert_close(features.mean(1), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(features.var(1, unbiased=False), torch.ones(6), atol=1e-3, rtol=0)
    assert not any(p.requires_grad for p in net.features.project[-1].parameters())  # no affine parameters
    assert "normalize=True" in repr(net.features)
