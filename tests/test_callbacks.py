"""The PlotFigures callback, in-process through the real entry point on Iris: PNGs saved and logged."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from ugmm.cli import train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _compose(tmp_path, *overrides):
    with initialize_config_module("ugmm.conf", version_base="1.3"):
        return compose(
            "train",
            overrides=[
                "callbacks=plots",
                "logger=many_loggers",
                f"paths.log_dir={tmp_path}",
                "trainer.max_epochs=3",
                "trainer.check_val_every_n_epoch=1",  # paper_iris validates every 10 epochs
                *overrides,
            ],
        )


@pytest.mark.parametrize("experiment", ["paper_iris", "iris_classifier"])
def test_plots_callback_on_iris(tmp_path, experiment):
    if experiment == "paper_iris":  # the generative model: NLL, MAP over the label
        cfg = _compose(tmp_path, "experiment=paper_iris")
    else:  # the discriminative one, on the same data
        cfg = _compose(tmp_path, "data=iris", "loss=cross_entropy", "model.width=8", "model.dropout=0.0")
    train(cfg)
    out = Path(cfg.paths.output_dir)
    plots = out / "plots"
    names = sorted(p.name for p in plots.glob("*.png"))
    assert names == [
        "test_confusion.png",
        "test_mixing_weights.png",
        "test_neurons.png",
        "test_reliability.png",
        "val_confusion.png",
        "val_curves.png",
        "val_mixing_weights.png",
        "val_neurons.png",
        "val_reliability.png",
    ]
    for p in plots.glob("*.png"):
        assert p.read_bytes()[:8] == PNG_MAGIC
    # the recorded test accuracy is the one the module logged
    record = json.loads((plots / "test_uncertainty.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert record["n"] == 30
    assert record["acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert record["ece"] == pytest.approx(metrics["test/ece"], abs=1e-5)
    assert 0.0 <= record["mean_predictive_entropy"] <= 1.0987  # at most log 3
    # and the figures reached TensorBoard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert {f"plots/{n[:-4]}" for n in names} <= set(events.Tags()["images"])


def test_plots_reach_an_offline_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = _compose(tmp_path, "experiment=paper_iris", "logger=[csv,wandb]", "trainer.max_epochs=1", "test=false")
    train(cfg)
    out = Path(cfg.paths.output_dir)
    # wandb stores each image as media/images/<key>_<step>_<hash>.png
    media = sorted(p.name.rsplit("_", 2)[0] for p in out.rglob("media/images/plots/*.png"))
    assert media == ["val_confusion", "val_curves", "val_mixing_weights", "val_neurons", "val_reliability"]
