"""What a layer's neurons learned, drawn on the input grid: images of their weights, means and sigmas.

A first-layer neuron of an image model holds one component per pixel, so its mixing weights pi[j, :],
means mu[j, :] and sigmas sigma[j, :] are each an image: where the neuron looks (pi), what it expects
there (mu) and how sure it is (sigma). For any layer, :func:`plot_mixing_weights` shows log pi of every
neuron over every input as one heat map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ugmm.plots.neurons import mixture_params

#: quantity name -> (what the colour shows, colour map)
QUANTITIES = {
    "weights": ("mixing weight pi", "magma"),
    "means": ("mean mu", "coolwarm"),
    "stds": ("sigma", "viridis"),
}


def neuron_images(layer, quantity: str, image_shape: Sequence[int], neurons: Sequence[int]) -> torch.Tensor:
    """``quantity`` (``weights``, ``means`` or ``stds``) of each chosen neuron as an image, ``(len(neurons), H, W)``.

    Args:
        layer: a :class:`~ugmm.nn.uGMMLayer` whose inputs are the flattened image (``n_nodes_in = H * W``).
        quantity: ``weights`` (pi, summing to 1 over the image), ``means`` or ``stds``.
        image_shape: ``(H, W)`` of the input images, e.g. ``(28, 28)`` for MNIST.
        neurons: neuron indices.
    """
    if quantity not in QUANTITIES:
        raise ValueError(f"quantity={quantity!r} is not one of {', '.join(QUANTITIES)}")
    means, stds, log_w = mixture_params(layer)
    height, width = (int(s) for s in image_shape)
    if height * width != means.shape[1]:
        raise ValueError(f"image_shape {height}x{width} does not cover the layer's {means.shape[1]} inputs")
    neurons = [int(j) for j in neurons]
    bad = [j for j in neurons if not -means.shape[0] <= j < means.shape[0]]
    if bad or not neurons:
        raise ValueError(f"neurons {bad or neurons} out of range for a layer of {means.shape[0]} neurons")
    values = {"weights": log_w.exp(), "means": means, "stds": stds}[quantity]
    return values[neurons].reshape(len(neurons), height, width)


def _grid_figure(n_panels: int, ncols: int, panel_size: float = 1.6) -> tuple[Figure, list]:
    ncols = max(1, min(ncols, n_panels))
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(panel_size * ncols + 1.2, panel_size * nrows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(n_panels)]
    return fig, axes


def plot_neuron_images(
    layer,
    quantity: str = "weights",
    image_shape: Sequence[int] = (28, 28),
    neurons: Sequence[int] = tuple(range(16)),
    ncols: int = 8,
    title: str | None = None,
):
    """A grid of neurons, each drawn as an image of one quantity on the input grid, sharing one colour scale.

    Means use a colour scale centred on 0 when they take both signs (standardised pixels); weights
    start at 0. Returns the Figure.
    """
    images = neuron_images(layer, quantity, image_shape, neurons)
    label, cmap = QUANTITIES[quantity]
    low, high = float(images.min()), float(images.max())
    if quantity == "weights":
        low = 0.0
    elif quantity == "means" and low < 0.0 < high:
        low, high = -max(-low, high), max(-low, high)
    fig, axes = _grid_figure(len(images), ncols)
    shown = None
    for ax, j, image in zip(axes, neurons, images):
        shown = ax.imshow(image.numpy(), cmap=cmap, vmin=low, vmax=high, interpolation="nearest")
        ax.set_title(f"neuron {int(j)}", fontsize="small")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(shown, ax=axes, label=label, shrink=0.8)
    fig.suptitle(title or f"{label} of each neuron on the {image_shape[0]}x{image_shape[1]} input grid")
    return fig


def plot_mixing_weights(layer, max_neurons: int | None = None, title: str | None = None):
    """Heat map of log10 pi, neurons (rows) x inputs (columns), for a uGMM layer of any size.

    A uniform neuron sits at ``-log10(n_inputs)`` everywhere; a neuron that relies on a few inputs shows
    them as bright columns. Returns the Figure.
    """
    _, _, log_w = mixture_params(layer)
    if max_neurons is not None:
        log_w = log_w[: int(max_neurons)]
    log10_w = (log_w / math.log(10.0)).clamp_min(-12.0)  # dropped (-inf) weights at the bottom of the scale
    n_nodes, n_in = log10_w.shape
    fig = Figure(figsize=(min(14.0, 3.0 + n_in / 40.0), min(10.0, 1.5 + n_nodes / 12.0)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    shown = ax.imshow(log10_w.numpy(), aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_xlabel("input k")
    ax.set_ylabel("neuron j")
    fig.colorbar(shown, ax=ax, label="log10 pi[j, k]")
    ax.set_title(title or f"mixing weights: {n_nodes} neurons x {n_in} inputs")
    return fig
