"""Generative MNIST: the label's scale in DensityModel, experiment=mnist_generative on fake IDX files,
and scripts/ood_density.py on the checkpoint it writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ugmm.cli import train
from ugmm.config import ConfigError, validate_train_config
from ugmm.data.mnist import PIXEL_STATS, Normalize, load_split
from ugmm.modules import DensityModel
from ugmm.nn import log_joint
from ugmm_helpers import load_script, make_cfg, write_fake_mnist

QUIET = ["callbacks.rich_progress_bar=null", "callbacks.model_summary=null", "trainer.enable_progress_bar=false"]
MODEL = {"_target_": "ugmm.nn.uGMMNet", "width": 6, "depth": 1, "dropout": 0.0, "std_floor": 0.1}
OPT = {"_target_": "torch.optim.Adam", "lr": 0.01}


ood_density = load_script("ood_density")


def test_label_scale_sets_the_label_column_and_the_map_states():
    torch.manual_seed(0)
    default = DensityModel(5, 3, model=MODEL, optimizer=OPT)
    scaled = DensityModel(5, 3, model={**MODEL, "label_scale": 10.0}, optimizer=OPT).eval()
    assert default.states.tolist() == [0.0, 1.0, 2.0]  # the paper's encoding unless asked otherwise
    assert scaled.states.tolist() == [0.0, 10.0, 20.0]
    x, y = torch.randn(4, 5), torch.tensor([0, 2, 1, 2])
    assert scaled.net_inputs(x, y)[:, -1].tolist() == [0.0, 20.0, 10.0, 20.0]
    # training scores log p(x, y * scale); MAP scores every class the same way
    joint = scaled(x)
    torch.testing.assert_close(joint.gather(1, y.unsqueeze(1)).squeeze(1), log_joint(scaled.net, x, y * 10.0))
    torch.testing.assert_close(scaled.log_marginal(x), torch.logsumexp(joint, dim=1))


@pytest.mark.parametrize("key", ["label_scale", "label_std"])
def test_label_options_must_be_positive(key):
    cfg = make_cfg(["data=iris", "loss=nll", f"model.{key}=-1"])
    with pytest.raises(ConfigError, match=f"model.{key}=-1"):
        validate_train_config(cfg)


@pytest.mark.parametrize("std_param", ["exp", "softplus"])
def test_set_label_std_narrows_only_the_label_components(std_param):
    model = DensityModel(5, 3, model={**MODEL, "label_scale": 10.0, "std_param": std_param}, optimizer=OPT)
    first = model.net.layers[0]
    pixels = first.stds[:, :-1].clone()
    model.set_label_std(0.3)  # classes are 10 apart: sigma 3
    torch.testing.assert_close(first.stds[:, -1], torch.full((6,), 3.0))
    torch.testing.assert_close(first.stds[:, :-1], pixels)
    with pytest.raises(ValueError, match="must exceed model.std_floor"):
        model.set_label_std(0.005)  # sigma 0.05 < the floor 0.1


def test_label_std_is_applied_at_train_start(tmp_path):
    # lr 1e-9: one epoch of Adam moves no sigma measurably, so the checkpoint shows the start
    overrides = ["data=iris", "loss=nll", "model.width=4", "model.init=data", "model.label_std=0.5"]
    overrides += ["model.std_floor=0.1", "trainer.max_epochs=1", "optimizer.lr=1e-9", "logger=none"]
    cfg = make_cfg([f"paths.log_dir={tmp_path / 'logs'}", *QUIET, *overrides])
    train(cfg)
    ckpt = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())["best_ckpt"]
    first = DensityModel.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).net.layers[0]
    torch.testing.assert_close(first.stds[:, -1], torch.full((4,), 0.5), atol=1e-5, rtol=0)
    assert not torch.allclose(first.stds[:, :-1], torch.tensor(0.5))  # the features keep the data's spread


@pytest.fixture(scope="module")
def generative_run(tmp_path_factory) -> tuple[Path, dict]:
    """experiment=mnist_generative as configured, a few batches of one epoch on fake MNIST files."""
    tmp = tmp_path_factory.mktemp("gen")
    root = write_fake_mnist(tmp / "data", n_train=400, n_test=60)
    overrides = [
        "experiment=mnist_generative",
        f"paths.log_dir={tmp / 'logs'}",
        *QUIET,
        f"data.data_dir={root}",
        "data.download=false",
        "data.val_size=100",
        "data.batch_size=64",
        "data.eval_batch_size=64",
        "trainer.max_epochs=1",
        "++trainer.limit_train_batches=3",
    ]
    cfg = make_cfg(overrides)
    train(cfg)
    return root, json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())


def test_mnist_generative_trains_with_finite_likelihood(generative_run):
    _, record = generative_run
    metrics = record["metrics"]
    assert record["status"] == "ok"
    # metrics.json writes a NaN as null: every value must be a real, finite number
    for key in ("val/nll", "val/loglik", "test/nll", "test/loglik", "test/ece"):
        assert metrics[key] is not None and math.isfinite(metrics[key]), key
    assert metrics["test/loglik"] == pytest.approx(-metrics["test/nll"])
    assert 0.0 <= metrics["test/acc"] <= 1.0
    hparams = torch.load(record["best_ckpt"], map_location="cpu", weights_only=True)["hyper_parameters"]
    assert (
        hparams["loss"] == "nll"
        and hparams["model"]["label_scale"] == make_cfg(["experiment=mnist_generative"]).model.label_scale
    )


def test_ood_script_on_the_checkpoint(generative_run, tmp_path):
    root, record = generative_run
    out = tmp_path / "ood.json"
    assert ood_density.main([record["best_ckpt"], "--data-dir", str(root), "--n", "40", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["n"] == 40 and report["data"] == "MNIST"
    assert set(report["shifts"]) == {"rotate90", "uniform_noise", "gaussian_noise0.3"}
    assert math.isfinite(report["in_distribution"]["mean_loglik"])
    assert report["in_distribution"]["mean_loglik"] <= report["score_upper_bound"]
    for shift in report["shifts"].values():
        assert math.isfinite(shift["mean_loglik"]) and 0.0 <= shift["auroc"] <= 1.0
    # the score is the model's own log p(x) of the normalised test images: recompute its mean by hand
    model = ood_density.load_density_model(record["best_ckpt"])
    raw, _ = load_split(root, "MNIST", train=False)
    x = Normalize(*PIXEL_STATS["MNIST"])(raw[:40])
    assert report["in_distribution"]["mean_loglik"] == pytest.approx(model.log_marginal(x).mean().item(), rel=1e-5)


def test_ood_script_rejects_a_classifier_checkpoint(tmp_path):
    cfg = make_cfg([f"paths.log_dir={tmp_path / 'logs'}", *QUIET, "data=iris", "model.width=4", "trainer.max_epochs=1"])
    train(cfg)
    ckpt = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())["best_ckpt"]
    with pytest.raises(SystemExit, match="not a density model checkpoint"):
        ood_density.main([ckpt])
