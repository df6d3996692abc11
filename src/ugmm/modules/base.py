"""What both LightningModules share: the network, optimizer and LR schedule from ``_target_`` configs.

Hyperparameters are plain dicts, lists and numbers (never OmegaConf nodes, partials or modules), so
checkpoints load with torch's default ``weights_only=True``; the ``_target_`` configs among them are
instantiated only when needed (the network in ``__init__``, the optimizer in ``configure_optimizers``).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch import LightningModule
from torchmetrics import MaxMetric, Metric

from ugmm.containers import plain

log = logging.getLogger(__name__)

# reference: mu ~ N(0, 1), sigma ~ U(0, 1) as the paper's code; data: uGMMNet.init_from_data on training rows
INITS = ("reference", "data")
INIT_ROWS = 4096  # training rows the data initialisation looks at
# keys of the model config the LightningModule reads; the network gets every other one
MODULE_KEYS = ("init", "label_scale", "label_std", "head_lr_scale")
# checkpoints written before the model config had a _target_ name the network by model.net
_LEGACY_NETS = {"ugmm": "ugmm.nn.uGMMNet", "mlp": "ugmm.nn.MLP"}


def net_class(model: Mapping) -> type:
    """The network class a model config names by ``_target_`` (or, in old checkpoints, ``net``)."""
    target = model.get("_target_") or _LEGACY_NETS.get(model.get("net", "ugmm"), model.get("net"))
    return get_class(target)


def net_arguments(model: Mapping) -> tuple[type, dict, list[str]]:
    """The network class of ``model``, the keyword arguments it takes, and the keys it does not take.

    Keys the class has no parameter for (a uGMM experiment's ``std_floor`` under ``model=mlp``) are
    left out, so a baseline runs on exactly the same recipe as the uGMM-NN it is compared with.
    """
    model = plain(model)
    cls = net_class(model)
    skip = {"_target_", "_partial_", "net", *MODULE_KEYS}
    params = inspect.signature(cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs, ignored = {}, []
    for key, value in model.items():
        if key in skip:
            continue
        if takes_any or key in params:
            kwargs[key] = value
        else:
            ignored.append(key)
    return cls, kwargs, ignored


def build_net(model: Mapping, n_inputs: int, n_outputs: int) -> torch.nn.Module:
    """``model`` = ``{_target_: ugmm.nn.uGMMNet | ugmm.nn.MLP | ..., width, depth, ...}`` -> the network.

    The class is called with ``(n_inputs, n_outputs)`` and every key it accepts besides ``_target_``,
    ``_partial_`` and :data:`MODULE_KEYS` (see :func:`net_arguments`; the others are logged and ignored).
    """
    cls, kwargs, ignored = net_arguments(model)
    if ignored:
        log.info("model keys %s do not apply to %s: ignored", ", ".join(ignored), cls.__name__)
    return cls(int(n_inputs), int(n_outputs), **kwargs)


def build_optimizer(params, optimizer: Mapping) -> torch.optim.Optimizer:
    """``optimizer`` = ``{_target_: torch.optim.Adam, lr: ..., ...}``, called with ``params``.

    An optimizer that has a fused implementation (Adam, AdamW, SGD, Adagrad) gets ``fused=True`` when the
    config does not say otherwise and every parameter is a float tensor on the CPU or a GPU: the same
    update in one kernel per step instead of several per parameter (Adam on a uGMM-NN: ~3x faster on CPU).
    ``+optimizer.fused=false`` keeps the per-parameter loop.
    """
    optimizer = dict(plain(optimizer))
    if "_target_" not in optimizer:
        raise ValueError(f"optimizer={optimizer} has no _target_ (the old {{name: adam}} form is now optimizer=adam)")
    factory = instantiate({**optimizer, "_partial_": True})
    params = list(params)
    if params and isinstance(params[0], dict):  # parameter groups; "lr_scale" multiplies the config's lr
        params = [_scaled_group(group, optimizer.get("lr")) for group in params]
        tensors = [p for group in params for p in group["params"]]
    else:
        tensors = params
    if "fused" not in optimizer and _fusable(factory.func, tensors):
        return factory(params, fused=True)
    return factory(params)


def _scaled_group(group: dict, lr: float | None) -> dict:
    group = dict(group)
    scale = group.pop("lr_scale", None)
    if scale is not None:
        if lr is None:
            raise ValueError("a parameter group's lr_scale needs optimizer.lr")
        group["lr"] = float(lr) * float(scale)
    return group


def _fusable(optimizer_class, params: list) -> bool:
    try:
        takes_fused = "fused" in inspect.signature(optimizer_class).parameters
    except (TypeError, ValueError):  # no signature to read
        return False
    return takes_fused and all(
        isinstance(p, torch.Tensor) and p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params
    )


def build_scheduler(
    opt: torch.optim.Optimizer, scheduler: Mapping | None, max_epochs: int | None = None, total_steps: Any = None
) -> dict | None:
    """``scheduler`` = ``{_target_, interval: epoch|step, ...}`` or empty/None -> Lightning's scheduler dict.

    ``T_max: null`` becomes ``max_epochs`` and ``total_steps: null`` the trainer's ``total_steps``
    (a number or a callable giving it), so the common schedules span the whole run by default.
    """
    scheduler = dict(plain(scheduler) or {})
    if "_target_" not in scheduler:
        if "name" in scheduler:
            raise ValueError(f"scheduler={scheduler} has no _target_ (the old {{name: ...}} form is now scheduler=...)")
        return None
    interval = scheduler.pop("interval", "epoch")
    if "T_max" in scheduler and scheduler["T_max"] is None:
        scheduler["T_max"] = max(1, int(max_epochs or 1))
    if "total_steps" in scheduler and scheduler["total_steps"] is None:
        scheduler["total_steps"] = int(total_steps() if callable(total_steps) else total_steps)
    sched = instantiate({**scheduler, "_partial_": True})(opt)
    return {"scheduler": sched, "interval": interval}


class BaseModule(LightningModule):
    """Optimizer/scheduler from config and the best validation accuracy so far (``val/acc_best``).

    Subclasses set :attr:`loss_name` (the ``loss`` hyperparameter ``eval.py`` loads them by).
    """

    loss_name: str = ""

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        model: Mapping,
        optimizer: Mapping,
        scheduler: Mapping | None,
        data: Mapping | None,
        extra: Mapping | None = None,
    ) -> None:
        super().__init__()
        # plain containers only: checkpoints must load with weights_only=True; ``extra`` holds a
        # subclass's own constructor arguments, so load_from_checkpoint passes them back
        self.save_hyperparameters(
            {
                "n_features": int(n_features),
                "n_classes": int(n_classes),
                "model": plain(model),
                "optimizer": plain(optimizer),
                "scheduler": plain(scheduler),
                "data": plain(data),
                "loss": self.loss_name,
                **plain(dict(extra or {})),
            }
        )
        # persistent, so a resumed run keeps the best accuracy seen before the interruption
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)

    def configure_optimizers(self):
        opt = build_optimizer(self.parameter_groups(), self.hparams["optimizer"])
        trainer = self._trainer
        sched = build_scheduler(
            opt,
            self.hparams.get("scheduler"),
            max_epochs=trainer.max_epochs if trainer is not None else None,
            total_steps=(lambda: trainer.estimated_stepping_batches) if trainer is not None else None,
        )
        return opt if sched is None else {"optimizer": opt, "lr_scheduler": sched}

    def parameter_groups(self) -> list[dict]:
        """The optimizer's parameter groups: one, or with ``model.head_lr_scale`` the network's ``head``
        apart, its learning rate scaled (a conv model's uGMM head learns at the uGMM-NN's own pace)."""
        scale = float(self.hparams["model"].get("head_lr_scale", 1.0))
        if scale == 1.0:
            return [{"params": list(self.parameters())}]
        head = getattr(self.net, "head", None)
        if not isinstance(head, torch.nn.Module):  # an MLP baseline under a conv recipe: one learning rate
            log.info("model.head_lr_scale does not apply to %s (no head): ignored", type(self.net).__name__)
            return [{"params": list(self.parameters())}]
        in_head = {id(p) for p in head.parameters()}
        rest = [p for p in self.parameters() if id(p) not in in_head]
        return [{"params": rest}, {"params": list(head.parameters()), "lr_scale": scale}]

    def net_inputs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """What the network reads for a batch: ``(B, n_inputs)``."""
        raise NotImplementedError

    def on_train_start(self) -> None:
        # here, not in __init__: the data exists only now; never on resume (the checkpoint holds the weights)
        if self.hparams["model"].get("init", "reference") != "data" or self.trainer.ckpt_path is not None:
            return
        if not hasattr(self.net, "init_from_data"):  # an MLP baseline under a uGMM recipe: nothing to start
            log.info("model.init=data does not apply to %s: ignored", type(self.net).__name__)
            return
        sample = getattr(self.trainer.datamodule, "train_sample", None)
        if sample is None:
            raise RuntimeError("model.init=data needs a DataModule with train_sample(n, generator) (ugmm.data)")
        # the same rows and draws on every DDP rank, so the replicas start identical
        generator = torch.Generator().manual_seed(torch.initial_seed() % 2**63)
        x, y = sample(INIT_ROWS, generator)
        self.net.init_from_data(self.net_inputs(x.to(self.device), y.to(self.device)), generator=generator)

    def _log_epoch_training_metrics(self, metrics: Mapping[str, Metric]) -> None:
        """Log each training metric's epoch value once, computed (and synchronised across processes), and reset it.

        Called from ``on_train_epoch_end`` with the metrics ``training_step`` only updates: the values logging
        the metric objects at every step gave, without Lightning's bookkeeping of a ``log()`` call per metric
        per step (~1 ms each on a 2-core CPU, a tenth of a uGMM-NN's MNIST step).
        """
        if not any(metric.update_called for metric in metrics.values()):
            return  # no training batch this epoch
        for name, metric in metrics.items():
            self.log(name, metric.compute(), prog_bar=True, sync_dist=True)
            metric.reset()

    def _log_best(self, acc: torch.Tensor) -> None:
        # the sanity check's few batches must not count as a best accuracy
        if not self.trainer.sanity_checking:
            self.val_acc_best.update(acc)
        best = self.val_acc_best.compute() if self.val_acc_best.update_count else acc
        self.log("val/acc_best", best, prog_bar=True)
