"""Figures for uGMM models: neuron mixture densities, calibration, confusion, training curves, sweeps.

Every function returns a :class:`matplotlib.figure.Figure` drawn on the Agg canvas, built without
pyplot so nothing here touches global GUI state: save it with ``fig.savefig(path)``, show it in a
notebook with ``display(fig)``, or log it (see :mod:`ugmm.callbacks`). Torch + matplotlib only.
"""

from ugmm.plots.classification import plot_confusion_matrix, plot_reliability_diagram
from ugmm.plots.curves import load_csv_rows, plot_sweep_summary, plot_training_curves
from ugmm.plots.neuron_images import neuron_images, plot_mixing_weights, plot_neuron_images
from ugmm.plots.neurons import mixture_params, neuron_density, plot_neuron_densities

__all__ = [
    "load_csv_rows",
    "mixture_params",
    "neuron_density",
    "neuron_images",
    "plot_confusion_matrix",
    "plot_mixing_weights",
    "plot_neuron_densities",
    "plot_neuron_images",
    "plot_reliability_diagram",
    "plot_sweep_summary",
    "plot_training_curves",
]
