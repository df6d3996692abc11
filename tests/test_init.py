"""Sigma parameterisations and the data initialisation (layer, network, and through train())."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch.nn import functional as F  # noqa: N812 - the usual alias

from ugmm.data import TabularDataModule
from ugmm.modules import Classifier, DensityModel
from ugmm.nn import uGMMLayer, uGMMNet
from ugmm.ops.reference import mixture_loglik_reference


@pytest.mark.parametrize("std_param", ["exp", "softplus"])
def test_std_parameterisations_follow_their_formula(std_param):
    layer = uGMMLayer(6, 4, std_floor=0.05, std_param=std_param, backend="reference")
    g = torch.exp if std_param == "exp" else F.softplus
    torch.testing.assert_close(layer.stds, 0.05 + g(layer.raw_std.detach()))
    # the reference's starting distribution either way: sigma - floor ~ U(0, 1)
    big = uGMMLayer(100, 100, std_floor=0.05, std_param=std_param)
    excess = big.stds - 0.05
    assert 0.0 < float(excess.min()) and float(excess.max()) < 1.0 and abs(float(excess.mean()) - 0.5) < 0.02
    x = torch.randn(5, 6)
    torch.testing.assert_close(
        layer(x), mixture_loglik_reference(x, layer.means, layer.stds, layer.log_weights), rtol=1e-5, atol=1e-5
    )
    assert f"std_param={std_param!r}" in repr(layer)


def test_softplus_sigma_gets_gradients():
    layer = uGMMLayer(3, 2, std_param="softplus", backend="reference").double()
    x = torch.randn(4, 3, dtype=torch.float64)
    layer(x).sum().backward()
    assert layer.raw_std.grad is not None and torch.isfinite(layer.raw_std.grad).all()
    assert layer.raw_std.grad.abs().sum() > 0


def test_unknown_std_param_is_an_error():
    with pytest.raises(ValueError, match="std_param"):
        uGMMLayer(3, 2, std_param="sigmoid")


@pytest.mark.parametrize("std_param", ["exp", "softplus"])
def test_layer_init_from_data_puts_neurons_on_rows(std_param):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 8, generator=gen)
    x[:, 0] = 3.0  # a constant input: its sigma must not collapse to a spike
    x[:, 1] *= 10.0
    layer = uGMMLayer(8, 6, std_floor=1e-3, std_param=std_param)
    layer.init_from_data(x, generator=gen)
    # every neuron's means are one of the rows
    assert all(any(torch.equal(m, row) for row in x) for m in layer.means)
    spread = x.std(dim=0)
    expected = spread.clamp_min(spread.mean()) + 1e-3
    torch.testing.assert_close(layer.stds, expected.expand(6, -1), rtol=1e-5, atol=1e-6)
    assert float(layer.stds[0, 0]) == pytest.approx(float(spread.mean()) + 1e-3, rel=1e-5)
    with pytest.raises(ValueError, match="init_from_data"):
        layer.init_from_data(torch.randn(5, 7))


def test_network_init_from_data_goes_layer_by_layer():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 10, generator=gen)
    net = uGMMNet(10, 3, hidden=[5, 4], dropout=0.5, backend="reference")
    net.train()  # dropout must not touch the initialisation
    net.init_from_data(x, generator=gen)
    with torch.no_grad():
        h1 = net.layers[0](x, drop=False)
    assert all(any(torch.equal(m, row) for row in h1) for m in net.layers[1].means)
    # the second layer now sits where its inputs are (log-densities), not around 0
    assert (net.layers[1].means.mean() - h1.mean()).abs() < 3 * h1.std()


class _FirstStepParams(Callback):
    """Records the first layer's means just before the first optimisation step."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0 and trainer.current_epoch == 0:
            self.means = pl_module.net.layers[0].means.clone()


@pytest.mark.parametrize("module_cls", [Classifier, DensityModel])
def test_model_init_data_starts_training_on_training_rows(module_cls):
    dm = TabularDataModule(batch_size=32)  # the packaged Iris
    model = {
        "_target_": "ugmm.nn.uGMMNet",
        "width": 6,
        "depth": 1,
        "dropout": 0.0,
        "init": "data",
        "backend": "reference",
    }
    module = module_cls(4, 3, model=model, optimizer={"_target_": "torch.optim.Adam", "lr": 1e-2})
    before = module.net.layers[0].means.clone()
    probe = _FirstStepParams()
    trainer = Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[probe],
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=dm)
    train = dm.splits["train"]
    rows = module.net_inputs(train.x, train.y)
    assert not torch.equal(probe.means, before)
    assert all(any(torch.equal(m, row) for row in rows) for m in probe.means)
