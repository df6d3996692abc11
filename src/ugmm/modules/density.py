"""The generative model: a uGMM-NN over the joint of features and label, trained by likelihood."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torchmetrics.classification import MulticlassAccuracy

from ugmm.containers import plain
from ugmm.modules.base import BaseModule, build_net, net_class
from ugmm.modules.metrics import CalibrationError, RowMean
from ugmm.nn import log_joint, log_joint_all, uGMMNet
from ugmm.uncertainty import log_marginal


class DensityModel(BaseModule):
    """A uGMM-NN with one output node modelling ``log p(x, y)``; loss = ``-mean log p(x, y)``.

    The label is appended to the features as one more input, as in the paper's generative mode: its
    class index as a float, times ``model.label_scale`` (default 1, the paper's encoding). Among 784
    pixels the label is one component of 785 in every first-layer neuron; a larger scale spaces the
    classes further apart relative to the components' sigmas (and the sigma floor).

    Classification is MAP inference over the label: ``log p(x, y=c)`` for every class in one batched
    call (:func:`ugmm.nn.log_joint_all`), then the argmax; the softmax of those scores is the
    posterior ``p(y | x)`` used for the calibration error. :meth:`log_marginal` gives ``log p(x)``.

    Args: as :class:`~ugmm.modules.Classifier`; the network must be a :class:`~ugmm.nn.uGMMNet`; ``model.label_scale``
    (default 1) scales the label's value; ``model.label_std`` (the config's default 0.3; null: the
    initialisation's own) sets the label components' sigma, in classes, at the start of training
    (:meth:`set_label_std`).

    ``conditional_weight`` (``loss.conditional_weight``; here 0 by default, pure likelihood, the
    paper's; the config's default is 1.0)
    trains the hybrid generative-discriminative objective ``-log p(x, y) - w log p(y | x)``, with
    ``p(y | x)`` the softmax of the MAP scores over the classes. Why: the network's ``p(x, y)`` is not
    normalised over the label, so likelihood alone never lowers the score of a *wrong* label; once
    the output's sigmas reach their floor the likelihood saturates and the MAP decision drifts (Iris,
    reference split, seeds 0-4: 67-90% MAP test accuracy; 97-100% with w = 0.1, see
    ``experiment=paper_iris``). A small w supplies that contrast while the model stays a density
    over features and label, classified by MAP.

    Logs ``{train,val,test}/nll`` (per row: ``-log p(x, y)``), ``{val,test}/loglik`` (mean log p(x, y)),
    ``/acc`` (MAP accuracy), ``/ece``, ``val/acc_best``, ``train/loss`` (the objective) and, with a
    conditional weight, ``train/cond_nll`` (``-log p(y | x)``).
    """

    loss_name = "nll"

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        model: Mapping,
        optimizer: Mapping,
        scheduler: Mapping | None = None,
        data: Mapping | None = None,
        conditional_weight: float = 0.0,
    ) -> None:
        model = plain(model)
        if not issubclass(net_class(model), uGMMNet):
            raise ValueError(f"loss=nll needs model=ugmm (a density model), got {net_class(model).__name__}")
        super().__init__(
            n_features,
            n_classes,
            model,
            optimizer,
            scheduler,
            data,
            extra={"conditional_weight": float(conditional_weight)},
        )
        self.conditional_weight = float(conditional_weight)
        self.label_scale = float(model.get("label_scale", 1.0))
        label_std = model.get("label_std")
        self.label_std = None if label_std is None else float(label_std)
        self.net = build_net(model, int(n_features) + 1, 1)
        # the label column's value for each class: class index * label_scale
        states = torch.arange(int(n_classes), dtype=torch.float32) * self.label_scale
        self.register_buffer("states", states, persistent=False)
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_nll", RowMean())
        for stage in ("val", "test"):
            setattr(self, f"{stage}_acc", MulticlassAccuracy(num_classes=int(n_classes), average="micro"))
            setattr(self, f"{stage}_ece", CalibrationError(num_classes=int(n_classes), n_bins=15))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Joint scores ``log p(x, y=c)`` for every class, ``(B, n_classes)``."""
        return log_joint_all(self.net, self._with_label_column(x), var_index=-1, states=self.states).T

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x) = logsumexp_c log p(x, y=c)``, ``(B,)``: the out-of-distribution score."""
        return log_marginal(self.net, self._with_label_column(x), var_index=-1, states=self.states)

    @staticmethod
    def _with_label_column(x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return torch.cat([x, x.new_zeros(len(x), 1)], dim=1)  # the label column's value is ignored

    def net_inputs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Features and the label's value (class index * label_scale) as one more column, ``(B, n_features + 1)``."""
        return torch.cat([x.flatten(1), self.label_value(y, x.dtype).unsqueeze(1)], dim=1)

    def label_value(self, y: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The label column's value of class indices ``y`` (B,): ``y * label_scale``, shape (B,)."""
        return y.to(dtype) * self.label_scale

    def on_train_start(self) -> None:
        super().on_train_start()  # model.init
        if self.label_std is not None and self.trainer.ckpt_path is None:  # a resumed run keeps its sigmas
            self.set_label_std(self.label_std)

    @torch.no_grad()
    def set_label_std(self, std: float) -> None:
        """Set every first-layer neuron's label component to sigma = ``std`` classes (``std * label_scale``).

        Why: ``model.init=data`` gives the label's component the label's spread over the data (about 2.9
        classes on MNIST), so it barely tells the classes apart; a narrow one (e.g. 0.3) makes each
        neuron prefer its own prototype's class.
        """
        first = self.net.layers[0]
        sigma = float(std) * self.label_scale
        if not sigma > first.std_floor:
            raise ValueError(
                f"model.label_std * model.label_scale = {sigma:g} must exceed model.std_floor={first.std_floor:g}: "
                "raise model.label_std (or set it to null: the initialisation's own)"
            )
        excess = torch.full_like(first.raw_std[:, -1], sigma - first.std_floor)
        first.raw_std[:, -1] = first.raw_std_for(excess)  # the layer's own inverse of its parameterisation

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        nlls = -log_joint(self.net, x.flatten(1), self.label_value(y, x.dtype))
        nll = nlls.mean()
        loss = nll
        if self.conditional_weight > 0.0:
            # -log p(y | x) over the MAP scores (full mixtures, as at inference: no component dropout)
            cond_nll = torch.nn.functional.cross_entropy(self(x), y)
            loss = nll + self.conditional_weight * cond_nll
            self.log("train/cond_nll", cond_nll.detach(), on_step=False, on_epoch=True)
        self.train_nll.update(nlls.detach())  # logged once per epoch, by on_train_epoch_end
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=False)
        return loss

    def on_train_epoch_end(self) -> None:
        self._log_epoch_training_metrics({"train/nll": self.train_nll})

    def _eval_step(self, batch, stage: str) -> None:
        x, y = batch
        scores = self(x)  # (B, C)
        loglik = scores.gather(1, y.unsqueeze(1)).squeeze(1)  # log p(x, y) of the true label
        nll = getattr(self, f"{stage}_nll")
        nll.update(-loglik)
        getattr(self, f"{stage}_acc").update(scores, y)
        getattr(self, f"{stage}_ece").update(scores.softmax(dim=-1), y)
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
