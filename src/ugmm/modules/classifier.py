"""The discriminative model: a uGMM-NN (or the same-size MLP) trained with cross-entropy."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torchmetrics.classification import MulticlassAccuracy

from ugmm.modules.base import BaseModule, build_net
from ugmm.modules.metrics import CalibrationError, RowMean


class Classifier(BaseModule):
    """Cross-entropy on the network's outputs (a uGMM-NN's log-densities act as logits).

    Args:
        n_features: flattened input size (784 for MNIST).
        n_classes: output nodes.
        model: the network's ``_target_`` config (``{_target_: ugmm.nn.uGMMNet, width, depth, ...}``).
        optimizer: an optimizer's ``_target_`` config (``{_target_: torch.optim.Adam, lr, ...}``);
            scheduler: a scheduler's (``interval``: epoch | step) or None.
        data: the data config, kept in the checkpoint so ``eval.py`` can rebuild the same splits.

    Logs ``{train,val,test}/loss``, ``/acc``, ``/ece`` (expected calibration error, 15 bins) and
    ``val/acc_best``. Batches: ``x`` ``(B, *)`` flattening to ``n_features``, ``y`` int64 ``(B,)``.
    """

    loss_name = "cross_entropy"

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        model: Mapping,
        optimizer: Mapping,
        scheduler: Mapping | None = None,
        data: Mapping | None = None,
    ) -> None:
        super().__init__(n_features, n_classes, model, optimizer, scheduler, data)
        self.net = build_net(self.hparams["model"], int(n_features), int(n_classes))
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_loss", RowMean())
            setattr(self, f"{stage}_acc", MulticlassAccuracy(num_classes=int(n_classes), average="micro"))
        self.val_ece = CalibrationError(num_classes=int(n_classes), n_bins=15)
        self.test_ece = CalibrationError(num_classes=int(n_classes), n_bins=15)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_classes)``."""
        return self.net(x.flatten(1))

    def net_inputs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        # per row in float64 for the epoch metric: the same value whatever the batch (see modules.metrics)
        losses = torch.nn.functional.cross_entropy(logits.detach().double(), y, reduction="none")
        # update, not forward: the logged values are the epoch's (on_step=False), so no per-batch compute
        getattr(self, f"{stage}_loss").update(losses)
        getattr(self, f"{stage}_acc").update(logits.detach(), y)
        if stage == "train":
            return loss  # logged once per epoch, by on_train_epoch_end
        self.log(f"{stage}/loss", getattr(self, f"{stage}_loss"), on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/acc", getattr(self, f"{stage}_acc"), on_step=False, on_epoch=True, prog_bar=True)
        ece = getattr(self, f"{stage}_ece")
        ece.update(logits.detach().softmax(dim=-1), y)
        self.log(f"{stage}/ece", ece, on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def on_train_epoch_end(self) -> None:
        self._log_epoch_training_metrics({"train/loss": self.train_loss, "train/acc": self.train_acc})

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_best(self.val_acc.compute())

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")
