"""What both LightningModules share: building the network, the optimizer and the LR schedule.

Hyperparameters are plain dicts, lists and numbers (never OmegaConf nodes, partials or modules), so
checkpoints load with torch's default ``weights_only=True``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torchmetrics import MaxMetric

from ugmm.nn import MLP, uGMMNet

NETS = ("ugmm", "mlp")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("multistep", "cosine", "none")
# reference: mu ~ N(0, 1), sigma ~ U(0, 1) as the paper's code; data: uGMMNet.init_from_data on training rows
INITS = ("reference", "data")
INIT_ROWS = 4096  # training rows the data initialisation looks at


def plain(cfg: Any) -> Any:
    """An OmegaConf node (or anything) as plain Python containers, interpolations resolved."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # omegaconf is a dependency; stay importable without it anyway
        return cfg
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    if isinstance(cfg, Mapping):
        return {k: plain(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [plain(v) for v in cfg]
    return cfg


def build_net(model: Mapping, n_inputs: int, n_outputs: int) -> torch.nn.Module:
    """``model`` = {net: ugmm|mlp, width, depth, dropout[, std_floor, std_param, backend]} -> the torch network."""
    kind = model.get("net", "ugmm")
    common = {"width": int(model["width"]), "depth": int(model["depth"]), "dropout": model.get("dropout", 0.0)}
    if kind == "ugmm":
        return uGMMNet(
            n_inputs,
            n_outputs,
            std_floor=float(model.get("std_floor", 1e-3)),
            std_param=model.get("std_param", "exp"),
            backend=model.get("backend", "auto"),
            **common,
        )
    if kind == "mlp":
        return MLP(n_inputs, n_outputs, **common)
    raise ValueError(f"model.net={kind} is not one of {', '.join(NETS)}")


def build_optimizer(params, optimizer: Mapping) -> torch.optim.Optimizer:
    """``optimizer`` = {name: adam|adamw|sgd, lr, weight_decay[, momentum]}."""
    name = optimizer.get("name", "adam")
    lr, wd = float(optimizer["lr"]), float(optimizer.get("weight_decay", 0.0))
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=float(optimizer.get("momentum", 0.9)))
    raise ValueError(f"optimizer.name={name} is not one of {', '.join(OPTIMIZERS)}")


def build_scheduler(opt: torch.optim.Optimizer, scheduler: Mapping | None, max_epochs: int | None):
    """``scheduler`` = {name: multistep, milestones, gamma} | {name: cosine} | None; stepped per epoch."""
    name = "none" if not scheduler else scheduler.get("name", "none")
    if name == "none":
        return None
    if name == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=[int(m) for m in scheduler["milestones"]], gamma=float(scheduler.get("gamma", 0.1))
        )
    if name == "cosine":
        t_max = int(scheduler.get("t_max") or max_epochs or 1)
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, t_max))
    raise ValueError(f"scheduler.name={name} is not one of {', '.join(SCHEDULERS)}")


class BaseModule(LightningModule):
    """Optimizer/scheduler from config and the best validation accuracy so far (``val/acc_best``)."""

    def __init__(
        self,
        loss: str,
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
                "loss": loss,
                **plain(dict(extra or {})),
            }
        )
        # persistent, so a resumed run keeps the best accuracy seen before the interruption
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)

    def configure_optimizers(self):
        opt = build_optimizer(self.parameters(), self.hparams["optimizer"])
        max_epochs = self.trainer.max_epochs if self._trainer is not None else None
        sched = build_scheduler(opt, self.hparams.get("scheduler"), max_epochs)
        if sched is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def net_inputs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """What the network reads for a batch: ``(B, n_inputs)``."""
        raise NotImplementedError

    def on_train_start(self) -> None:
        # here, not in __init__: the data exists only now; never on resume (the checkpoint holds the weights)
        if self.hparams["model"].get("init", "reference") != "data" or self.trainer.ckpt_path is not None:
            return
        train = getattr(self.trainer.datamodule, "splits", {}).get("train")
        if train is None:
            raise RuntimeError("model.init=data needs a DataModule with in-memory splits (ugmm.data)")
        # the same rows and draws on every DDP rank, so the replicas start identical
        generator = torch.Generator().manual_seed(torch.initial_seed() % 2**63)
        rows = torch.randperm(len(train), generator=generator)[:INIT_ROWS]
        x, y = train.__getitems__(rows.tolist())
        self.net.init_from_data(self.net_inputs(x.to(self.device), y.to(self.device)), generator=generator)

    def _log_best(self, acc: torch.Tensor) -> None:
        # the sanity check's few batches must not count as a best accuracy
        if not self.trainer.sanity_checking:
            self.val_acc_best.update(acc)
        best = self.val_acc_best.compute() if self.val_acc_best.update_count else acc
        self.log("val/acc_best", best, prog_bar=True)
