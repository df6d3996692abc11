"""The generative Iris model: the hybrid objective (loss.conditional_weight) and the paper_iris experiment."""

from __future__ import annotations

import warnings

import lightning
import pytest
import torch

from ugmm.cli import build_datamodule
from ugmm.config import ConfigError, validate_train_config
from ugmm.data import TabularDataModule
from ugmm.modules import DensityModel
from ugmm.nn import log_joint
from ugmm_helpers import make_cfg

MODEL = {
    "_target_": "ugmm.nn.uGMMNet",
    "width": 6,
    "depth": 1,
    "dropout": 0.0,
    "std_floor": 0.1,
    "backend": "reference",
}
ADAM = {"_target_": "torch.optim.Adam", "lr": 0.01}


def _step(model: DensityModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # self.log without a Trainer: only a warning, the loss is what counts
        warnings.simplefilter("ignore")
        return model.training_step((x, y), 0)


def test_conditional_weight_adds_the_label_posterior():
    x, y = torch.randn(16, 4), torch.arange(16) % 3
    torch.manual_seed(0)
    pure = DensityModel(4, 3, MODEL, ADAM)
    torch.manual_seed(0)
    hybrid = DensityModel(4, 3, MODEL, ADAM, conditional_weight=0.5)
    nll = -log_joint(pure.net, x, y.float()).mean()
    torch.testing.assert_close(_step(pure, x, y), nll)
    # -log p(x, y) - w log p(y | x), p(y | x) the softmax of the MAP scores log p(x, c)
    cond = torch.nn.functional.cross_entropy(hybrid(x), y)
    torch.testing.assert_close(_step(hybrid, x, y), nll + 0.5 * cond)
    # the extra term reaches every parameter of the network through the MAP scores
    _step(hybrid, x, y).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in hybrid.net.parameters())


def test_conditional_weight_is_kept_in_the_checkpoint(tmp_path):
    model = DensityModel(4, 3, MODEL, ADAM, conditional_weight=0.25)
    path = tmp_path / "m.ckpt"
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    torch.save({**checkpoint, "pytorch-lightning_version": lightning.__version__}, path)
    loaded = DensityModel.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    assert loaded.conditional_weight == 0.25


def test_bad_conditional_weight():
    with pytest.raises(ConfigError, match=r"^loss.conditional_weight=-0.5 is out of range: must be in \[0, inf\)$"):
        validate_train_config(make_cfg(["experiment=paper_iris", "loss.conditional_weight=-0.5"]))


def test_paper_iris_uses_the_reference_split():
    cfg = make_cfg(["experiment=paper_iris"])
    validate_train_config(cfg)
    dm = build_datamodule(cfg.data)
    dm.setup()
    # the 30 rows of train_test_split(test_size=0.2, random_state=42), whatever the validation share
    assert (cfg.data.split, len(dm.splits["test"]), cfg.loss._target_) == ("reference", 30, "ugmm.modules.DensityModel")
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == 120


def test_hybrid_objective_classifies_the_reference_test_rows():
    # paper_iris in miniature (plain loop, 300 full-batch steps): data init + conditional weight 0.1
    # measured 97-100% on the 30 reference test rows for seeds 0-4; the bound leaves room for backends
    dm = TabularDataModule(split="reference", val_fraction=0.0)
    dm.setup()
    (x, y), (x_test, y_test) = (dm.splits["train"].x, dm.splits["train"].y), (dm.splits["test"].x, dm.splits["test"].y)
    torch.manual_seed(0)
    model = DensityModel(4, 3, {**MODEL, "width": 10, "depth": 2}, ADAM, conditional_weight=0.1)
    model.net.init_from_data(model.net_inputs(x, y))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):
        opt.zero_grad()
        _step(model, x, y).backward()
        opt.step()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(dim=1) == y_test).float().mean().item()
    assert accuracy >= 0.9, accuracy
