"""The generative model: a uGMM-NN over the joint of features and label, trained by likelihood."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from ugmm.modules.base import BaseModule, build_net, plain
from ugmm.nn import log_joint, log_joint_all


class DensityModel(BaseModule):
    """A uGMM-NN with one output node modelling ``log p(x, y)``; loss = ``-mean log p(x, y)``.

    The label is appended to the features as one more input (its class index as a float), as in
    the paper's generative mode. Classification is MAP inference over the label: ``log p(x, y=c)``
    for every class in one batched call (:func:`ugmm.nn.log_joint_all`), then the argmax; the
    softmax of those scores is the posterior ``p(y | x)`` used for the calibration error.

    Args: as :class:`~ugmm.modules.Classifier`; ``model.net`` must be ``ugmm``.

    Logs ``{train,val,test}/nll`` (the loss, per row), ``{val,test}/loglik`` (mean log p(x, y)),
    ``/acc`` (MAP accuracy), ``/ece``, ``val/acc_best`` and ``train/loss``.
    """

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        model: Mapping,
        optimizer: Mapping,
        scheduler: Mapping | None = None,
        data: Mapping | None = None,
    ) -> None:
        model = plain(model)
        if model.get("net", "ugmm") != "ugmm":
            raise ValueError(f"loss=nll needs model=ugmm (a density model), got model.net={model.get('net')}")
        super().__init__("nll", n_features, n_classes, model, optimizer, scheduler, data)
        self.net = build_net(model, int(n_features) + 1, 1)
        self.register_buffer("states", torch.arange(int(n_classes), dtype=torch.float32), persistent=False)
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_nll", MeanMetric())
        for stage in ("val", "test"):
            setattr(self, f"{stage}_acc", MulticlassAccuracy(num_classes=int(n_classes), average="micro"))
            setattr(self, f"{stage}_ece", MulticlassCalibrationError(num_classes=int(n_classes), n_bins=15))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Joint scores ``log p(x, y=c)`` for every class, ``(B, n_classes)``."""
        x = x.flatten(1)
        with_label = torch.cat([x, x.new_zeros(len(x), 1)], dim=1)  # the label column's value is ignored
        return log_joint_all(self.net, with_label, var_index=-1, states=self.states).T

    def net_inputs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Features and the label's class index as one more column, ``(B, n_features + 1)``."""
        return torch.cat([x.flatten(1), y.to(x.dtype).unsqueeze(1)], dim=1)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = -log_joint(self.net, x.flatten(1), y).mean()
        self.train_nll(loss.detach(), weight=len(y))
        self.log("train/nll", self.train_nll, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=False)
        return loss

    def _eval_step(self, batch, stage: str) -> None:
        x, y = batch
        scores = self(x)  # (B, C)
        loglik = scores.gather(1, y.unsqueeze(1)).squeeze(1)  # log p(x, y) of the true label
        nll = getattr(self, f"{stage}_nll")
        nll(-loglik.mean(), weight=len(y))
        getattr(self, f"{stage}_acc")(scores, y)
        getattr(self, f"{stage}_ece")(scores.softmax(dim=-1), y)
        self.log(f"{stage}/nll", nll, on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/acc", getattr(self, f"{stage}_acc"), on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/ece", getattr(self, f"{stage}_ece"), on_step=False, on_epoch=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self.log("val/loglik", -self.val_nll.compute())
        self._log_best(self.val_acc.compute())

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self.log("test/loglik", -self.test_nll.compute())
