"""Lightning callbacks of the framework: figures of a trained uGMM model, saved and logged; epoch times.

Lightning code, so it lives outside :mod:`ugmm.nn`; the figures themselves come from :mod:`ugmm.plots`.
Enable the figures with ``python train.py callbacks=plots`` (the default callbacks plus this one);
:class:`EpochTimes` runs in every training run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from ugmm.nn import uGMMLayer
from ugmm.plots import (
    plot_confusion_matrix,
    plot_mixing_weights,
    plot_neuron_densities,
    plot_neuron_images,
    plot_reliability_diagram,
    plot_training_curves,
)
from ugmm.uncertainty import expected_calibration_error, predictive_entropy


class EpochTimes(Callback):
    """Wall time of every training epoch, its validation included, in seconds.

    ``times`` holds one entry per epoch this process trained (a resumed run: the epochs after the
    checkpoint). What ``metrics.json`` reports as ``epoch_times_s``: an epoch's cost without the run's
    start-up (imports, data, the extension's load), which a difference of whole-run wall times mixes in.
    Not sent to the loggers: a resumed run's metrics history stays row for row the uninterrupted run's.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start: float | None = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning calls this after the epoch's validation: the time covers both
        if self._start is None:
            return
        seconds = time.perf_counter() - self._start
        self._start = None
        self.times.append(seconds)


def figure_to_rgb(fig) -> np.ndarray:
    """A figure rendered to an ``(H, W, 3)`` uint8 array (what TensorBoard and W&B take)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


class PlotFigures(Callback):
    """At the end of training (validation split) and of testing (test split), draw a trained model's figures.

    Figures: the learned mixture densities of ``neurons`` in uGMM layer ``layer`` and a heat map of
    that layer's mixing weights (both skipped for an MLP); for the first layer of an image model, the
    mixing weights, means and sigmas of ``image_neurons`` drawn on the image grid; the reliability
    diagram and the confusion matrix of the split, and the training curves
    (from the CSVLogger's ``metrics.csv``, when one is attached). Each is saved as
    ``<dirpath>/<stage>_<name>.png`` and logged to every TensorBoard and W&B logger present (tag
    ``plots/<stage>_<name>``). ``<dirpath>/<stage>_uncertainty.json`` records the split's accuracy,
    ECE and mean predictive entropy.

    Works with both modules: their ``forward`` returns per-class scores whose softmax is ``p(y | x)``
    (the classifier's logits, the density model's ``log p(x, y=c)``). Runs on global rank 0 only,
    over that rank's batches.

    Args:
        dirpath: where PNGs go (default: ``<trainer.default_root_dir>/plots``).
        layer: index of the uGMM layer whose neurons are drawn.
        neurons: neuron indices to draw.
        top_k: components drawn per neuron.
        image_neurons: neurons drawn as images on the input grid (first layer of an image model only;
            the grid is the data module's ``feature_shape``, e.g. (1, 28, 28)).
        n_bins: calibration bins.
        max_batches: limit on evaluation batches (None: the whole split).
        class_names: labels for the confusion matrix (default: the datamodule's ``classes`` or indices).
    """

    def __init__(
        self,
        dirpath: str | None = None,
        layer: int = 0,
        neurons: Sequence[int] = (0, 1, 2, 3),
        top_k: int = 6,
        image_neurons: Sequence[int] = tuple(range(16)),
        n_bins: int = 15,
        max_batches: int | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.dirpath = dirpath
        self.layer = int(layer)
        self.neurons = [int(n) for n in neurons]
        self.top_k = int(top_k)
        self.image_neurons = [int(n) for n in image_neurons]
        self.n_bins = int(n_bins)
        self.max_batches = None if max_batches is None else int(max_batches)
        self.class_names = None if class_names is None else list(class_names)
        self.saved: list[Path] = []  # every PNG written, in order

    # -- hooks ------------------------------------------------------------------------------------
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # before the trainer tears down: model still on its device, loggers still open
        loaders = trainer.val_dataloaders
        if loaders is None and trainer.datamodule is not None:
            loaders = trainer.datamodule.val_dataloader()
        self._draw(trainer, pl_module, "val", loaders, curves=True)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._draw(trainer, pl_module, "test", trainer.test_dataloaders, curves=False)

    # -- work -------------------------------------------------------------------------------------
    def _draw(self, trainer: Trainer, pl_module: LightningModule, stage: str, loaders, curves: bool) -> None:
        if not trainer.is_global_zero:
            return
        figures = {}
        layer = self._ugmm_layer(pl_module)
        if layer is not None:
            neurons = [j for j in self.neurons if j < layer.n_nodes] or [0]
            figures["neurons"] = plot_neuron_densities(
                layer, neurons, top_k=self.top_k, title=f"uGMM layer {self.layer}: learned neuron mixtures"
            )
            figures["mixing_weights"] = plot_mixing_weights(layer, title=f"uGMM layer {self.layer}: log10 pi")
            image_shape = self._image_shape(trainer, layer)
            images = [j for j in self.image_neurons if j < layer.n_nodes]
            if image_shape is not None and images:
                for quantity in ("weights", "means", "stds"):
                    figures[f"neuron_{quantity}"] = plot_neuron_images(layer, quantity, image_shape, images)
        if loaders is not None:
            scores, targets = self._predict(pl_module, loaders)
            if len(targets):
                probs = scores.softmax(dim=1)
                names = self.class_names or self._datamodule_classes(trainer, scores.shape[1])
                figures["reliability"] = plot_reliability_diagram(probs, targets, self.n_bins, title=stage)
                figures["confusion"] = plot_confusion_matrix(
                    scores.argmax(1), targets, scores.shape[1], class_names=names, title=stage
                )
                self._write_uncertainty(trainer, stage, scores, probs, targets)
        if curves:
            csv_path = self._metrics_csv(trainer)
            if csv_path is not None:
                figures["curves"] = plot_training_curves(csv_path, x="step", title="training curves")
        for name, fig in figures.items():
            self._emit(trainer, f"{stage}_{name}", fig)

    def _ugmm_layer(self, pl_module: LightningModule) -> uGMMLayer | None:
        layers = [m for m in pl_module.modules() if isinstance(m, uGMMLayer)]
        if not layers:
            return None  # an MLP: no mixtures to draw
        if not -len(layers) <= self.layer < len(layers):
            raise ValueError(f"PlotFigures layer={self.layer}, but the model has {len(layers)} uGMM layers")
        return layers[self.layer]

    @torch.no_grad()
    def _predict(self, pl_module: LightningModule, loaders) -> tuple[torch.Tensor, torch.Tensor]:
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        was_training = pl_module.training
        pl_module.eval()
        scores, targets = [], []
        try:
            for loader in loaders:
                for i, (x, y) in enumerate(loader):
                    if self.max_batches is not None and i >= self.max_batches:
                        break
                    scores.append(pl_module(x.to(pl_module.device)).float().cpu())
                    targets.append(y.cpu())
        finally:
            pl_module.train(was_training)
        if not scores:
            return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
        return torch.cat(scores), torch.cat(targets)

    def _image_shape(self, trainer: Trainer, layer: uGMMLayer) -> tuple[int, int] | None:
        """(H, W) when ``layer`` reads a flattened image (the first layer of an image model), else None."""
        shape = tuple(getattr(trainer.datamodule, "feature_shape", ()) or ())
        spatial = shape[-2:] if len(shape) >= 2 and all(s == 1 for s in shape[:-2]) else ()
        if self.layer != 0 or len(spatial) != 2 or spatial[0] * spatial[1] != layer.n_nodes_in:
            return None
        return spatial

    @staticmethod
    def _datamodule_classes(trainer: Trainer, n_classes: int) -> list[str] | None:
        classes = getattr(trainer.datamodule, "classes", None)
        return [str(c) for c in classes] if classes is not None and len(classes) == n_classes else None

    @staticmethod
    def _metrics_csv(trainer: Trainer) -> Path | None:
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                logger.save()  # flush what is buffered
                path = Path(logger.log_dir) / "metrics.csv"
                if path.is_file():
                    return path
        return None

    def _out_dir(self, trainer: Trainer) -> Path:
        out = Path(self.dirpath) if self.dirpath else Path(trainer.default_root_dir) / "plots"
        out.mkdir(parents=True, exist_ok=True)
        return out

    def _write_uncertainty(self, trainer, stage, scores, probs, targets) -> None:
        record = {
            "n": len(targets),
            "acc": float((scores.argmax(1) == targets).float().mean()),
            "ece": expected_calibration_error(probs, targets, self.n_bins),
            "mean_predictive_entropy": float(predictive_entropy(scores).mean()),
        }
        (self._out_dir(trainer) / f"{stage}_uncertainty.json").write_text(json.dumps(record, indent=2) + "\n")

    def _emit(self, trainer: Trainer, name: str, fig) -> None:
        path = self._out_dir(trainer) / f"{name}.png"
        fig.savefig(path, dpi=100)
        self.saved.append(path)
        image = None
        for logger in trainer.loggers:
            if isinstance(logger, (TensorBoardLogger, WandbLogger)):
                image = figure_to_rgb(fig) if image is None else image
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(f"plots/{name}", image, trainer.global_step, dataformats="HWC")
                logger.experiment.flush()
            elif isinstance(logger, WandbLogger):
                logger.log_image(key=f"plots/{name}", images=[image], step=trainer.global_step)
