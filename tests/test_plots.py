"""Figures: the plotted numbers are the model's, and every figure renders to a PNG."""

import os
import subprocess
import sys

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from matplotlib.figure import Figure

from ugmm.nn import uGMMLayer
from ugmm.plots import (
    load_csv_rows,
    neuron_density,
    plot_confusion_matrix,
    plot_neuron_densities,
    plot_reliability_diagram,
    plot_sweep_summary,
    plot_training_curves,
)
from ugmm.plots.classification import confusion_counts
from ugmm.uncertainty import expected_calibration_error

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _save(fig, tmp_path, name):
    assert isinstance(fig, Figure)
    path = tmp_path / f"{name}.png"
    fig.savefig(path, dpi=60)
    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 2000
    return path


def test_plotting_does_not_need_pyplot_or_a_display(tmp_path):
    # a fresh interpreter without a display and with the user's own backend choice: the figures carry their
    # own Agg canvas, render to PNG and leave the global backend as the user set it
    code = (
        "import sys, torch; from ugmm.plots import plot_confusion_matrix, plot_reliability_diagram; "
        "fig = plot_confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1]), 2); fig.savefig(sys.argv[1]); "
        "plot_reliability_diagram(torch.rand(20, 2).softmax(-1), torch.randint(0, 2, (20,))); "
        "import matplotlib; print(type(fig.canvas).__name__, matplotlib.get_backend())"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["MPLBACKEND"] = "template"
    png = tmp_path / "c.png"
    out = subprocess.run([sys.executable, "-c", code, str(png)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["FigureCanvasAgg", "template"]
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_neuron_density_is_the_layer_output():
    """With every input equal to t, neuron j's log-density is log of the mixture drawn at t."""
    layer = uGMMLayer(6, 3).eval()
    t = torch.linspace(-3, 3, 41)
    out = layer(t[:, None].expand(-1, 6)).detach().double()  # (41, 3)
    for j in range(3):
        comps, mix = neuron_density(layer, j, t)
        assert comps.shape == (6, 41)
        torch.testing.assert_close(comps.sum(0), mix)
        torch.testing.assert_close(mix.log(), out[:, j], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        neuron_density(layer, 3, t)
    with pytest.raises(TypeError, match="uGMMLayer"):
        neuron_density(torch.nn.Linear(2, 2), 0, t)


def test_plot_neuron_densities(tmp_path):
    layer = uGMMLayer(784, 16, std_floor=1e-3)
    fig = plot_neuron_densities(layer, neurons=[0, 5, 15], top_k=4, title="first layer")
    assert len(fig.axes) == 3
    for ax in fig.axes:
        assert len(ax.lines) == 5  # 4 components + the mixture
        assert ax.lines[-1].get_label() == "mixture"
    # the drawn components are the heaviest ones, in order
    heaviest = torch.argsort(layer.log_weights[5], descending=True)[:4].tolist()
    assert [line.get_label().split(":")[0] for line in fig.axes[1].lines[:4]] == [f"in {k}" for k in heaviest]
    _save(fig, tmp_path, "neurons")
    _save(plot_neuron_densities(layer, [1], top_k=2, x_range=(-1, 1), log_scale=True), tmp_path, "neurons_log")
    with pytest.raises(ValueError, match="at least one neuron"):
        plot_neuron_densities(layer, [])


def test_reliability_diagram(tmp_path):
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(2 * torch.randn(300, 10, generator=g), dim=1)
    targets = torch.randint(10, (300,), generator=g)
    fig = plot_reliability_diagram(probs, targets, n_bins=10, title="test")
    ece = expected_calibration_error(probs, targets, n_bins=10)
    assert f"ECE = {ece:.4f}" in fig.axes[0].get_title()
    assert "n = 300" in fig.axes[0].get_title()
    # the histogram panel counts every sample once
    assert sum(p.get_height() for p in fig.axes[1].patches) == 300
    _save(fig, tmp_path, "reliability")


def test_confusion_matrix(tmp_path):
    preds = torch.tensor([0, 1, 1, 2, 2, 2, 0])
    targets = torch.tensor([0, 1, 2, 2, 2, 1, 0])
    counts = confusion_counts(preds, targets, 3)
    assert counts.tolist() == [[2, 0, 0], [0, 1, 1], [0, 1, 2]]
    fig = plot_confusion_matrix(preds, targets, 3, class_names=["setosa", "versicolor", "virginica"])
    assert "accuracy 0.7143" in fig.axes[0].get_title()
    image = fig.axes[0].images[0].get_array()
    assert image[1, 2] == pytest.approx(0.5) and image[2, 2] == pytest.approx(2 / 3)
    _save(fig, tmp_path, "confusion")
    raw = plot_confusion_matrix(preds, targets, 3, normalize=False)
    assert raw.axes[0].images[0].get_array()[2, 2] == 2
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        confusion_counts(torch.tensor([3]), torch.tensor([0]), 3)
    with pytest.raises(ValueError, match="class_names"):
        plot_confusion_matrix(preds, targets, 3, class_names=["a"])


def _csv_logger_metrics(tmp_path):
    """A metrics.csv written by Lightning's own CSVLogger: per-step train loss, per-epoch val metrics."""
    logger = CSVLogger(tmp_path, name="run")
    step = 0
    for epoch in range(3):
        for _ in range(4):
            logger.log_metrics({"train/loss_step": 2.0 / (step + 1), "epoch": epoch}, step=step)
            step += 1
        logger.log_metrics({"val/loss": 1.0 / (epoch + 1), "val/acc": 0.5 + 0.1 * epoch, "epoch": epoch}, step=step)
    logger.save()
    return tmp_path / "run" / "version_0" / "metrics.csv"


def test_training_curves_from_csv_logger(tmp_path):
    path = _csv_logger_metrics(tmp_path)
    fig = plot_training_curves(path)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "acc"]  # train/loss_step and val/loss share a panel
    loss_ax = fig.axes[0]
    assert sorted(line.get_label() for line in loss_ax.lines) == ["train/loss_step", "val/loss"]
    val_line = next(line for line in loss_ax.lines if line.get_label() == "val/loss")
    assert list(val_line.get_xdata()) == [4.0, 8.0, 12.0] and list(val_line.get_ydata()) == [1.0, 0.5, 1 / 3]
    _save(fig, tmp_path, "curves")
    by_epoch = plot_training_curves(load_csv_rows(path), metrics=["val/acc"], x="epoch")
    assert list(by_epoch.axes[0].lines[0].get_xdata()) == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="not in the file"):
        plot_training_curves(path, metrics=["val/f1"])
    with pytest.raises(FileNotFoundError):
        plot_training_curves(tmp_path / "missing.csv")


def test_sweep_summary(tmp_path):
    rows = [
        {
            "model.width": w,
            "loss": loss,
            "seed": s,
            "best": 0.9 + 0.0001 * w + (0.02 if loss == "nll" else 0) + 0.01 * s,
        }
        for w in (16, 64, 128)
        for loss in ("cross_entropy", "nll")
        for s in (0, 1)
    ]
    rows.append({"model.width": 32, "loss": "nll", "seed": 0, "best": ""})  # a failed run: skipped
    path = tmp_path / "summary.csv"
    path.write_text(
        "model.width,loss,seed,best\n"
        + "".join(f"{r['model.width']},{r['loss']},{r['seed']},{r['best']}\n" for r in rows)
    )
    fig = plot_sweep_summary(path, x=["model.width", "loss"], hue="loss")
    assert len(fig.axes) == 2
    ce_line = fig.axes[0].lines[0]
    assert list(ce_line.get_xdata()) == [16.0, 64.0, 128.0]
    torch.testing.assert_close(
        torch.tensor([float(v) for v in ce_line.get_ydata()], dtype=torch.float64),
        torch.tensor([0.9 + 0.0001 * w + 0.005 for w in (16, 64, 128)], dtype=torch.float64),
    )
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == ["cross_entropy", "nll"]
    assert "over 12 runs" in fig._suptitle.get_text()
    _save(fig, tmp_path, "sweep")
    with pytest.raises(ValueError, match="not in the sweep summary"):
        plot_sweep_summary(path, x="model.depth")
    with pytest.raises(ValueError, match="say which column"):
        plot_sweep_summary([{"a": 1, "b": 2}], x="a")


def test_sweep_summary_from_the_real_summary_csv(tmp_path):
    """summary.csv as the sweep summary writes it: overrides in one column, "best <monitor>", failed jobs."""
    from ugmm.integrations.sweep_summary import SweepSummary
    from ugmm.records import write_job_metrics

    for num, (width, loss, best) in enumerate([(8, "nll", 0.9), (16, "nll", 0.94), (8, "cross_entropy", 0.96)]):
        write_job_metrics(
            tmp_path / str(num),
            {
                "status": "ok",
                "monitor": "val/acc",
                "mode": "max",
                "best": best,
                "metrics": {"test/acc": best - 0.01},
                "overrides": [f"model.width={width}", f"loss={loss}"],
                "wall_time_s": 1.0,
            },
        )
    write_job_metrics(
        tmp_path / "3", {"status": "failed", "error": "boom", "overrides": ["model.width=32", "loss=nll"]}
    )
    csv_path, _ = SweepSummary.from_sweep_dir(tmp_path).write(tmp_path)
    fig = plot_sweep_summary(csv_path, x="model.width", hue="loss")
    by_label = {c.get_label(): c.lines[0] for c in fig.axes[0].containers}  # errorbar containers
    nll = by_label["loss=nll"]
    assert list(nll.get_xdata()) == [8.0, 16.0] and list(nll.get_ydata()) == pytest.approx([0.9, 0.94])
    assert fig.axes[0].get_ylabel() == "best val/acc"
    assert "over 3 runs" in fig._suptitle.get_text()  # the failed job is left out
    _save(fig, tmp_path, "sweep_real")
    test_acc = plot_sweep_summary(csv_path, x="loss", y="test/acc")
    assert [t.get_text() for t in test_acc.axes[0].get_xticklabels()] == ["cross_entropy", "nll"]
