"""Config -> objects: the data module, LightningModule, callbacks, loggers and Trainer of a run.

Every object comes from a ``_target_`` config through Hydra's ``instantiate``; nothing here chooses a
class by name. The LightningModule receives the model, optimizer and scheduler configs as plain
dicts (its hyperparameters) and instantiates them itself, so checkpoints hold no objects.
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
from hydra.errors import InstantiationException
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import DictConfig, open_dict

from ugmm.config import ConfigError
from ugmm.containers import plain
from ugmm.data import DataError
from ugmm.data.mnist import MNIST_FAMILY
from ugmm.integrations.ddp import HydraDDPStrategy

log = logging.getLogger(__name__)


def _unwrapped(err: InstantiationException) -> Exception:
    """The user error inside Hydra's wrapper, so it reaches the user as one line; else the wrapper."""
    cause = err.__cause__
    return cause if isinstance(cause, ConfigError | DataError) else err


def _legacy_data_target(data: dict) -> str:
    # checkpoints written before data configs had a _target_
    return "ugmm.data.MNISTDataModule" if data.get("name") in MNIST_FAMILY else "ugmm.data.TabularDataModule"


def build_datamodule(data: Any) -> LightningDataModule:
    """The DataModule of a ``data`` config (DictConfig or dict with a ``_target_``)."""
    data = dict(plain(data))
    data.setdefault("_target_", _legacy_data_target(data))
    try:
        return hydra.utils.instantiate(data, _convert_="all")
    except InstantiationException as err:
        raise _unwrapped(err) from None


def build_module(cfg: DictConfig, datamodule: LightningDataModule) -> LightningModule:
    """The ``loss`` group's LightningModule, sized by the data, holding the model/optimizer/scheduler configs."""
    try:
        return hydra.utils.instantiate(
            plain(cfg.loss),
            n_features=datamodule.n_features,
            n_classes=datamodule.n_classes,
            model=plain(cfg.model),
            optimizer=plain(cfg.optimizer),
            scheduler=plain(cfg.get("scheduler")) or None,
            data=plain(cfg.data),
            _recursive_=False,
            _convert_="all",
        )
    except InstantiationException as err:
        raise _unwrapped(err) from None


def build_callbacks(cfg: DictConfig, has_logger: bool) -> list[Callback]:
    """Instantiate every ``callbacks.<name>`` with a ``_target_`` (null entries are switched off)."""
    callbacks = []
    for conf in (cfg.get("callbacks") or {}).values():
        if conf is None or "_target_" not in conf:
            continue
        if not has_logger and conf._target_.endswith("LearningRateMonitor"):
            continue  # it raises without a logger
        callbacks.append(hydra.utils.instantiate(conf))
    return callbacks


def build_loggers(cfg: DictConfig) -> list:
    """Instantiate every ``logger.<name>`` with a ``_target_``; ``logger=none`` gives an empty list."""
    return [
        hydra.utils.instantiate(conf)
        for conf in (cfg.get("logger") or {}).values()
        if conf is not None and "_target_" in conf
    ]


# test_checkpoint=auto: fewer validation rows than this and the best checkpoint is chosen by noise
# (the accuracy of 1000 rows at 95% has a standard error of 0.7 points; of 15 Iris rows, 5.6)
MIN_SELECTION_ROWS = 1000


def resolve_test_checkpoint(cfg: DictConfig, datamodule, callbacks: list[Callback]) -> tuple[str, list[Callback]]:
    """``best`` or ``last`` for ``test_checkpoint`` and the callbacks to train with: ``auto`` is ``best``
    when the validation split has at least :data:`MIN_SELECTION_ROWS` rows, else ``last``, and with
    ``last`` early stopping is off (the budget ends the run, not a noisy validation curve)."""
    choice = cfg.get("test_checkpoint", "auto") or "auto"
    if choice == "auto":
        rows = datamodule.validation_rows()
        choice = "best" if rows >= MIN_SELECTION_ROWS else "last"
        if choice == "last":
            log.info(
                "test_checkpoint=auto: %d validation rows (< %d) pick noise; the last model is tested, early "
                "stopping is off (test_checkpoint=best to choose by %s)",
                rows,
                MIN_SELECTION_ROWS,
                cfg.monitor.metric,
            )
    if choice == "last":
        callbacks = [c for c in callbacks if not isinstance(c, EarlyStopping)]
    return choice, callbacks


def resolve_max_epochs(cfg: DictConfig, datamodule) -> None:
    """``trainer.max_epochs: null`` (and no ``trainer.max_steps``) becomes the data's suggestion, in ``cfg``
    itself, so the logged config, the schedule (``T_max: null``) and the checkpoints all see the number."""
    trainer = cfg.trainer
    if trainer.get("max_epochs") is not None or trainer.get("max_steps") not in (None, -1):
        return
    epochs = int(datamodule.suggested_max_epochs())
    with open_dict(cfg):
        cfg.trainer.max_epochs = epochs
    log.info("trainer.max_epochs=null: %d epochs, the %s data's suggestion", epochs, type(datamodule).__name__)


def resolve_model_width(cfg: DictConfig, datamodule) -> None:
    """``model.width: null`` becomes the data's suggestion (MNIST family 128, tables 256), in ``cfg`` itself,
    so the logged config and the checkpoints hold the number; models without a width are left alone."""
    if "width" not in cfg.model or cfg.model.width is not None:
        return
    width = int(datamodule.suggested_width())
    with open_dict(cfg):
        cfg.model.width = width
    log.info("model.width=null: %d, the %s data's suggestion", width, type(datamodule).__name__)


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list) -> Trainer:
    """``lightning.Trainer`` from the ``trainer`` node; its own argument checks become one-line errors.

    Lightning's own multi-process DDP (``trainer.strategy=ddp``, ``ddp_spawn``, or ``auto`` with several
    devices) is replaced by :class:`~ugmm.integrations.ddp.HydraDDPStrategy` with the same backend and
    options, so a DDP job keeps one output directory (Lightning's would re-run the command line).
    """
    trainer = _instantiate_trainer(cfg.trainer, callbacks, loggers)
    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy) and not isinstance(strategy, HydraDDPStrategy) and trainer.world_size > 1:
        options = {k: v for k, v in strategy._ddp_kwargs.items() if k != "start_method"}
        hydra_aware = HydraDDPStrategy(process_group_backend=strategy._process_group_backend, **options)
        trainer = _instantiate_trainer(cfg.trainer, callbacks, loggers, strategy=hydra_aware)
    return trainer


def _instantiate_trainer(trainer: DictConfig, callbacks: list, loggers: list, **overrides: Any) -> Trainer:
    try:
        return hydra.utils.instantiate(trainer, callbacks=callbacks, logger=loggers or False, **overrides)
    except InstantiationException as err:
        cause = err.__cause__ or err
        first = (str(cause).strip().splitlines() or [""])[0]
        raise ConfigError(f"trainer: {type(cause).__name__}: {first}") from None
