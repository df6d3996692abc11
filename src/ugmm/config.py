"""The config schema: types, ranges and choices of every checked key, in one place, and the checks.

Each config node is described by a dataclass below: a field's annotation is its type, its metadata the
allowed range or choices (taken from the code that owns them: ``STD_PARAMETERISATIONS`` from the layer,
``BACKENDS`` from the ops, ...). :func:`validate_train_config` walks a composed config against them and
raises :class:`ConfigError` with one line naming the key, the value and what is allowed; the entry
points print it as ``error: ...`` and exit with code 2. Nothing here reads files or the network: the
data modules report missing data themselves (:class:`ugmm.data.DataError`), when they are built.

The Trainer's config node is generated from ``lightning.Trainer``'s signature (:func:`register_configs`,
run when ``ugmm.conf`` is imported), so every Trainer argument can be set without ``+``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from ugmm.data.mnist import MNIST_FAMILY, MNISTDataModule
from ugmm.data.tabular import CATEGORICAL, IMPUTE, SPLITS, TabularDataModule, cv_problem
from ugmm.modules.base import INITS, BaseModule, build_optimizer, build_scheduler
from ugmm.modules.density import DensityModel
from ugmm.nn import uGMMNet
from ugmm.nn.layer import STD_PARAMETERISATIONS
from ugmm.ops import BACKENDS

# the config groups a command-line override may select (``group=option``)
GROUPS = ("data", "model", "loss", "optimizer", "scheduler", "trainer", "logger", "callbacks", "experiment")
GROUPS += ("debug", "paths", "hparams_search")
# keys that were replaced by a config group: the old override fails naming the new one
REPLACED = {"optimizer.name": "optimizer", "scheduler.name": "scheduler", "model.net": "model", "loss.name": "loss"}


class ConfigError(ValueError):
    """A config value that is not allowed; its message is the one line the user sees."""


def spec(**rule: Any) -> Any:
    """A schema field: ``ge``/``gt``/``lt``/``le`` bounds, ``choices``, ``rates`` (a rate or one per layer)."""
    return field(default=None, metadata=rule)


@dataclass
class ModelSchema:
    width: int | None = spec(ge=1)  # None: the data's suggestion (builders.resolve_model_width)
    depth: int = spec(ge=0)
    dropout: Any = spec(rates=True)
    std_floor: float = spec(ge=0.0)
    std_param: str = spec(choices=STD_PARAMETERISATIONS)
    init: str = spec(choices=INITS)
    label_scale: float | None = spec(gt=0.0)
    label_std: float | None = spec(gt=0.0)
    head_lr_scale: float = spec(gt=0.0)
    backend: str = spec(choices=BACKENDS)


@dataclass
class MNISTDataSchema:
    name: str = spec(choices=MNIST_FAMILY)
    data_dir: str = spec(nonempty="give data.data_dir=<folder> or set UGMM_DATA_DIR")
    batch_size: int = spec(ge=1)
    eval_batch_size: int = spec(ge=1)
    val_size: int = spec(ge=0, lt=60000)
    split_seed: int = spec(ge=0)


@dataclass
class TableDataSchema:
    batch_size: int | str = spec(ge=1, auto=True)
    eval_batch_size: int = spec(ge=1)
    test_fraction: float = spec(gt=0.0, lt=1.0)
    val_fraction: float = spec(ge=0.0, lt=1.0)
    split_seed: int = spec(ge=0)
    split: str | None = spec(choices=SPLITS)
    target: str = spec(nonempty="the name of the label column")
    categorical: str = spec(choices=CATEGORICAL)
    impute: str = spec(choices=IMPUTE)
    cv_folds: int = spec(ge=0)
    cv_fold: int | None = spec(ge=0)


@dataclass
class OptimizerSchema:
    lr: float = spec(gt=0.0)
    weight_decay: float | None = spec(ge=0.0)


@dataclass
class MultiStepSchema:
    milestones: list = spec(positive_ints=True)
    gamma: float = spec(gt=0.0, le=1.0)


@dataclass
class NLLSchema:
    conditional_weight: float | None = spec(ge=0.0)


@dataclass
class RunSchema:
    seed: int | None = spec(ge=0)
    test_checkpoint: str = spec(choices=("auto", "best", "last"))
    mode: str = spec(choices=("max", "min"))  # monitor.mode
    metric: str = spec(nonempty="e.g. monitor.metric=val/acc")  # monitor.metric


@dataclass
class ThreadsSchema:
    torch: int | None = spec(ge=1)
    kernels: int | None = spec(ge=1)


@dataclass
class TrainerSchema:
    max_epochs: int | None = spec(ge=-1, not_zero=True)


# --- the walker ---------------------------------------------------------------------------------
def _fmt(x: float) -> str:
    return "inf" if x == math.inf else f"{x:g}"


def _check_value(key: str, value: Any, kind: Any, rule: dict) -> None:
    kinds = typing.get_args(kind) or (kind,)
    if value is None and type(None) in kinds:
        return
    if rule.get("auto") and value == "auto":
        return
    if "rates" in rule:
        rates = list(value) if OmegaConf.is_list(value) else None
        if rates is not None:
            if not all(isinstance(p, int | float) and not isinstance(p, bool) and 0.0 <= p < 1.0 for p in rates):
                raise ConfigError(f"{key}={rates} must hold rates in [0, 1), one per layer")
            return
        kinds, rule = (float,), {"ge": 0.0, "lt": 1.0}
    if "choices" in rule:
        if value not in rule["choices"]:
            raise ConfigError(f"{key}={value} is not allowed; choose one of: {', '.join(rule['choices'])}")
        return
    if "nonempty" in rule:
        if not value:
            raise ConfigError(f"{key} is empty: {rule['nonempty']}")
        return
    if "positive_ints" in rule:
        if not OmegaConf.is_list(value) or not all(isinstance(m, int) and m > 0 for m in value):
            raise ConfigError(f"{key}={value} must be a list of positive epoch numbers")
        return
    if int in kinds and float not in kinds:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value} is not an integer")
        if rule.get("not_zero") and (value == 0 or value < rule["ge"]):
            raise ConfigError(f"{key}={value} is out of range: must be >= 1 (or -1 for no limit)")
        if "ge" in rule and value < rule["ge"]:
            raise ConfigError(f"{key}={value} is out of range: must be >= {rule['ge']}")
        if "lt" in rule and value >= rule["lt"]:
            raise ConfigError(f"{key}={value} is out of range: must be in [{rule['ge']}, {rule['lt']})")
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{key}={value} is not a finite number")
    low, low_open = (rule["gt"], True) if "gt" in rule else (rule.get("ge", -math.inf), False)
    high, high_open = (rule["le"], False) if "le" in rule else (rule.get("lt", math.inf), True)
    if not ((value > low if low_open else value >= low) and (value < high if high_open else value <= high)):
        interval = f"{'(' if low_open else '['}{_fmt(low)}, {_fmt(high)}{')' if high_open else ']'}"
        raise ConfigError(f"{key}={value} is out of range: must be in {interval}")


def check_node(node: Any, schema: type, prefix: str) -> None:
    """Check every key of ``node`` that ``schema`` describes (absent keys are not checked)."""
    if node is None:
        return
    hints = typing.get_type_hints(schema)
    for f in fields(schema):
        if f.name not in node:
            continue
        key = f"{prefix}{f.name}"
        if OmegaConf.is_missing(node, f.name):
            raise ConfigError(f"{key} is required but not set: give {key}=<value>")
        _check_value(key, node[f.name], hints[f.name], dict(f.metadata))


def _target(node: Any, key: str) -> type:
    if OmegaConf.is_missing(node, "_target_") if OmegaConf.is_config(node) else False:
        raise ConfigError(f"{key}._target_ is required but not set")
    target = node.get("_target_")
    try:
        return get_class(target)
    except Exception as err:
        raise ConfigError(f"{key}._target_={target} cannot be imported ({type(err).__name__})") from None


def _replaced_keys(cfg: DictConfig) -> None:
    for old, group in REPLACED.items():
        node, key = old.split(".")
        if OmegaConf.is_dict(cfg.get(node)) and key in cfg[node]:
            raise ConfigError(f"{old}={cfg[node][key]} is gone: use {group}={cfg[node][key]} (a config group now)")


def _check_optimizer(cfg: DictConfig) -> None:
    opt_cfg = cfg.get("optimizer")
    if not opt_cfg:
        raise ConfigError(f"optimizer is not set; choose one of: {', '.join(group_options('optimizer'))}")
    _target(opt_cfg, "optimizer")
    check_node(opt_cfg, OptimizerSchema, "optimizer.")
    # a trial construction on one dummy parameter: an argument the class does not take fails here
    try:
        opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], opt_cfg)
    except Exception as err:
        raise ConfigError(f"optimizer: {_one_line(err)}") from None
    sched_cfg = cfg.get("scheduler")
    if sched_cfg and "_target_" in sched_cfg:
        _target(sched_cfg, "scheduler")
        if get_class(sched_cfg._target_) is torch.optim.lr_scheduler.MultiStepLR:
            check_node(sched_cfg, MultiStepSchema, "scheduler.")
        max_epochs = OmegaConf.select(cfg, "trainer.max_epochs")
        try:
            build_scheduler(opt, sched_cfg, max_epochs=max_epochs, total_steps=1000)
        except Exception as err:
            raise ConfigError(f"scheduler: {_one_line(err)}") from None


def _one_line(err: BaseException) -> str:
    while err.__cause__ is not None:  # Hydra's InstantiationException wraps the real error
        err = err.__cause__
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def validate_data(cfg: DictConfig) -> None:
    """The ``data`` node: its class, sizes and fractions (no files are read)."""
    data = cfg.get("data")
    if data is None:
        raise ConfigError(f"data is not set; choose one of: {', '.join(group_options('data'))}")
    cls = _target(data, "data")
    if issubclass(cls, MNISTDataModule):
        if data.get("cv_folds"):
            raise ConfigError(
                f"data.cv_folds={data.cv_folds}: cross-validation is for tables (data=csv, data=iris); "
                f"data={data.get('name')} has a fixed test set"
            )
        check_node(data, MNISTDataSchema, "data.")
        augment = data.get("augment")
        if augment is not None:
            from ugmm.data import DataError
            from ugmm.data.augment import RandomAffine

            fields_ = {"degrees", "translate", "scale"}
            if not OmegaConf.is_dict(augment) or not set(augment) <= fields_:
                raise ConfigError(f"data.augment={augment} must be null or a mapping of {', '.join(sorted(fields_))}")
            try:
                RandomAffine(**OmegaConf.to_container(augment))
            except DataError as err:
                raise ConfigError(str(err)) from None
        if data.get("val_size") == 0:
            _check_monitor_without_validation(cfg, "data.val_size=0")
    elif issubclass(cls, TabularDataModule):
        if data.get("name") == "csv" and (OmegaConf.is_missing(data, "path") or not data.get("path")):
            raise ConfigError("data.path is required for data=csv: give data.path=<file.csv> data.target=<label>")
        check_node(data, TableDataSchema, "data.")
        folds, fold = data.get("cv_folds") or 0, data.get("cv_fold")
        # cv_fold=null with cv_folds=k is no problem here: train() runs every fold
        problem = cv_problem(folds, fold if fold is not None else 0) if folds or fold is not None else None
        if problem:
            raise ConfigError(problem)
        if folds:
            return  # the folds validate, val_fraction is not used
        test, val = data.get("test_fraction", 0.2), data.get("val_fraction", 0.1)
        if test + val >= 1.0:
            raise ConfigError(
                f"data.test_fraction + data.val_fraction = {test + val:g} must be < 1 to leave training rows"
            )
        if val == 0.0:
            _check_monitor_without_validation(cfg, "data.val_fraction=0")


def _check_monitor_without_validation(cfg: DictConfig, setting: str) -> None:
    """Without validation rows nothing logs val/*: checkpointing and early stopping would fail mid-run."""
    monitor = OmegaConf.select(cfg, "monitor.metric")
    if str(monitor).startswith("val/"):
        raise ConfigError(
            f"{setting} leaves no validation rows to compute monitor.metric={monitor}: monitor a training "
            "metric (monitor.metric=train/loss monitor.mode=min; train/nll for loss=nll) or keep a validation split"
        )


def check_resolves(cfg: Any, prefix: str = "") -> None:
    """Every ``${...}`` of the config resolves (those needing Hydra's runtime only when it runs)."""
    from omegaconf.errors import OmegaConfBaseException

    keys = cfg.keys() if OmegaConf.is_dict(cfg) else range(len(cfg))
    for key in keys:
        if not prefix and key == "hydra":
            continue
        path = f"{prefix}{key}"
        try:
            node = cfg._get_node(key)
            if OmegaConf.is_config(node) and not node._is_interpolation():
                check_resolves(node, path + ".")
            elif not OmegaConf.is_missing(cfg, key):
                cfg[key]  # noqa: B018 - resolves the value
        except OmegaConfBaseException as err:
            text = " ".join(str(err).split())
            if "HydraConfig was not set" in text:
                continue  # ${hydra:...} outside a Hydra run: paths.output_dir, set by train()
            raise ConfigError(f"{path}: {text.split(' full_key:')[0]}") from None


def validate_train_config(cfg: DictConfig) -> None:
    """Every check of a training config, in the order a user would fix them; raises :class:`ConfigError`."""
    check_resolves(cfg)  # a broken ${...} in one line, not a traceback later
    _replaced_keys(cfg)
    check_node(cfg.model, ModelSchema, "model.")
    net = _target(cfg.model, "model")
    module = _target(cfg.loss, "loss")
    if not issubclass(module, BaseModule):
        raise ConfigError(f"loss._target_={cfg.loss._target_} is not a ugmm.modules.BaseModule")
    if issubclass(module, DensityModel) and not issubclass(net, uGMMNet):
        raise ConfigError(f"loss=nll needs model=ugmm (a density model over features and label), got {net.__name__}")
    if issubclass(module, DensityModel):
        check_node(cfg.loss, NLLSchema, "loss.")
    _check_optimizer(cfg)
    check_node(cfg.monitor, RunSchema, "monitor.")
    check_node(cfg, RunSchema, "")
    check_node(cfg.get("threads"), ThreadsSchema, "threads.")
    check_node(cfg.get("trainer"), TrainerSchema, "trainer.")
    validate_data(cfg)


def validate_eval_config(cfg: DictConfig) -> None:
    """Checks for ``eval.py``: the checkpoint is named and, when a data group is given, the data."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.get("ckpt_path"):
        raise ConfigError("ckpt_path is required: give ckpt_path=<file.ckpt> or ckpt_path=last")
    check_node(cfg.get("threads"), ThreadsSchema, "threads.")
    check_node(cfg.get("trainer"), TrainerSchema, "trainer.")
    if cfg.get("data") is not None:
        validate_data(cfg)


# --- group options, checked before Hydra composes ---------------------------------------------
def group_options(group: str) -> list[str]:
    """The options of config group ``group`` shipped in ``ugmm/conf/<group>/`` (file names sans .yaml)."""
    folder = resources.files("ugmm.conf") / group
    if not folder.is_dir():
        return []
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def check_group_overrides(args: list[str]) -> None:
    """Reject ``group=option`` overrides whose option does not exist, and replaced keys, in one line.

    Hydra's own message for ``data=bogus`` spans several lines and ends with a hint about stack
    traces; this check runs first. Sweep syntax (``choice(...)``, globs, ranges) is left to Hydra;
    comma lists (multirun) are checked item by item.
    """
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key in REPLACED:
            raise ConfigError(f"{key}={value} is gone: use {REPLACED[key]}={value} (a config group now)")
        if key not in GROUPS or any(c in value for c in "()[]{}*?$") or value in ("", "null"):
            continue
        allowed = group_options(key)
        for option in value.split(","):
            if option.strip() not in allowed:
                raise ConfigError(
                    f"{key}={option.strip()} is not an option of group {key}; choose one of: {', '.join(allowed)}"
                )


def trainer_arguments() -> dict[str, Any]:
    """``lightning.Trainer``'s arguments and defaults, less ``logger`` and ``callbacks`` (built from their groups)."""
    from lightning.pytorch import Trainer

    params = inspect.signature(Trainer.__init__).parameters
    return {n: p.default for n, p in params.items() if n not in ("self", "logger", "callbacks")}


def legacy_plus_trainer(args: list[str]) -> list[str]:
    """``+trainer.<argument>=...`` (needed before every Trainer argument was in the config) -> without ``+``."""
    names = trainer_arguments()
    return [a[1:] if a.startswith("+trainer.") and a[9:].split("=", 1)[0] in names else a for a in args]


def register_configs() -> None:
    """Store ``trainer/lightning``: every ``lightning.Trainer`` argument with its default, typed ``Any``."""
    from hydra.core.config_store import ConfigStore

    specs = [("_target_", str, field(default="lightning.pytorch.Trainer"))]
    specs += [(n, Any, field(default=d)) for n, d in trainer_arguments().items()]
    ConfigStore.instance().store(group="trainer", name="lightning", node=dataclasses.make_dataclass("Trainer", specs))
