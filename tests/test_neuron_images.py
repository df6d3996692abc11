"""Neurons drawn on the input grid (weights, means, sigmas) and the mixing-weight heat map."""

from pathlib import Path

import pytest
import torch

from ugmm.cli import train
from ugmm.nn import uGMMLayer
from ugmm.plots import neuron_images, plot_mixing_weights, plot_neuron_images
from ugmm_helpers import make_cfg, write_fake_mnist

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_neuron_images_are_the_layer_parameters_on_the_grid():
    layer = uGMMLayer(6 * 4, 5)
    for quantity, expected in (
        ("weights", layer.log_weights.exp()),
        ("means", layer.means),
        ("stds", layer.stds),
    ):
        images = neuron_images(layer, quantity, (6, 4), [4, 0])
        assert images.shape == (2, 6, 4)
        # pixel (r, c) of neuron j is component r * W + c
        torch.testing.assert_close(images[0, 2, 3], expected[4, 2 * 4 + 3].double())
        torch.testing.assert_close(images[1].flatten(), expected[0].double())
    assert neuron_images(layer, "weights", (6, 4), [1]).sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("sigmas", (6, 4), [0]), "not one of weights, means, stds"),
        (("means", (5, 5), [0]), "does not cover the layer's 24 inputs"),
        (("means", (6, 4), [5]), "out of range"),
        (("means", (6, 4), []), "out of range"),
    ],
)
def test_neuron_images_reject_bad_requests(args, message):
    with pytest.raises(ValueError, match=message):
        neuron_images(uGMMLayer(24, 5), *args)


def test_plots_save(tmp_path):
    layer = uGMMLayer(28 * 28, 20)
    figures = {
        "weights": plot_neuron_images(layer, "weights", neurons=range(10), ncols=5),
        "means": plot_neuron_images(layer, "means", neurons=[0, 3]),
        "heat": plot_mixing_weights(layer),
    }
    for name, fig in figures.items():
        path = tmp_path / f"{name}.png"
        fig.savefig(path)
        assert path.read_bytes()[:8] == PNG_MAGIC
    # one panel per neuron plus the shared colour bar
    assert len(figures["weights"].axes) == 10 + 1
    # the means' colour scale is centred on 0 when they take both signs
    low, high = figures["means"].axes[0].images[0].get_clim()
    assert low == pytest.approx(-high) and high > 0
    # the heat map holds log10 pi of every neuron and input
    heat = figures["heat"].axes[0].images[0].get_array()
    assert heat.shape == (20, 784)
    torch.testing.assert_close(
        torch.as_tensor(heat.data), (layer.log_weights.double() / torch.log(torch.tensor(10.0)).double())
    )


def test_plots_callback_draws_mnist_neurons_as_images(tmp_path):
    write_fake_mnist(tmp_path / "data")
    cfg = make_cfg(
        [
            "callbacks=plots",
            "logger=csv",
            f"paths.log_dir={tmp_path / 'logs'}",
            f"data.data_dir={tmp_path / 'data'}",
            "data.val_size=40",
            "model.width=8",
            "model.depth=1",
            "trainer.max_epochs=1",
            "callbacks.plot_figures.image_neurons=[0,1,2]",
        ]
    )
    train(cfg)
    plots = Path(cfg.paths.output_dir) / "plots"
    for stage in ("val", "test"):
        for name in ("neuron_weights", "neuron_means", "neuron_stds", "mixing_weights"):
            assert (plots / f"{stage}_{name}.png").read_bytes()[:8] == PNG_MAGIC
