"""Checking a composed Hydra config before anything loads: allowed values, ranges, files.

Every problem raises :class:`ConfigError` with one line naming the key, the value and what is
allowed; the entry points print it as ``error: ...`` and exit with code 2, no traceback.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ugmm.data.base import DataError
from ugmm.data.mnist import MNIST_FAMILY
from ugmm.data.tabular import SPLITS
from ugmm.modules.base import INITS, NETS, OPTIMIZERS, SCHEDULERS
from ugmm.nn.layer import STD_PARAMETERISATIONS
from ugmm.ops import BACKENDS

LOSSES = ("cross_entropy", "nll")
TABULAR = ("csv", "iris")
DATA_NAMES = (*MNIST_FAMILY, *TABULAR)
ACCELERATORS = ("cpu", "gpu", "cuda", "auto", "mps", "tpu")
MONITOR_MODES = ("max", "min")
# the config groups a command-line override may select (``group=option``)
GROUPS = ("data", "model", "loss", "trainer", "logger", "callbacks", "experiment", "debug", "paths")


class ConfigError(ValueError):
    """A config value that is not allowed; its message is the one line the user sees."""


# --- group options, checked before Hydra composes ---------------------------------------------
def group_options(group: str) -> list[str]:
    """The options of config group ``group`` shipped in ``ugmm/conf/<group>/`` (file names sans .yaml)."""
    folder = resources.files("ugmm.conf") / group
    if not folder.is_dir():
        return []
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def check_group_overrides(args: list[str]) -> None:
    """Reject ``group=option`` command-line overrides whose option does not exist, in one line.

    Hydra's own message for ``data=bogus`` spans several lines and ends with a hint about
    stack traces; this check runs first. Sweep syntax (``choice(...)``, globs, ranges) is left to
    Hydra; comma lists (multirun) are checked item by item.
    """
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key not in GROUPS:
            continue
        if any(c in value for c in "()[]{}*?$") or value in ("", "null"):
            continue
        allowed = group_options(key)
        for option in value.split(","):
            if option.strip() not in allowed:
                raise ConfigError(
                    f"{key}={option.strip()} is not an option of group {key}; choose one of: {', '.join(allowed)}"
                )


# --- value checks -------------------------------------------------------------------------------
def _value(cfg: DictConfig, key: str) -> Any:
    """``cfg.<key>`` with a one-line error when it is required but missing (``???``)."""
    node: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        if node is None or part not in node:
            return None
        if OmegaConf.is_missing(node, part):
            raise ConfigError(f"{key} is required but not set: give {key}=<value>")
        node = node[part] if i == len(parts) - 1 else node.get(part)
    return node


def _int(cfg: DictConfig, key: str, low: int | None = None) -> int:
    value = _value(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}={value} is not an integer")
    if low is not None and value < low:
        raise ConfigError(f"{key}={value} is out of range: must be >= {low}")
    return value


def _float(cfg: DictConfig, key: str, low: float, high: float, high_open: bool = True, low_open: bool = False) -> float:
    value = _value(cfg, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{key}={value} is not a finite number")
    ok_low = value > low if low_open else value >= low
    ok_high = value < high if high_open else value <= high
    if not (ok_low and ok_high):
        upper = "inf" if high == math.inf else f"{high:g}"
        interval = f"{'(' if low_open else '['}{low:g}, {upper}{')' if high_open else ']'}"
        raise ConfigError(f"{key}={value} is out of range: must be in {interval}")
    return float(value)


def _choice(cfg: DictConfig, key: str, allowed: tuple[str, ...]) -> str:
    value = _value(cfg, key)
    if value not in allowed:
        raise ConfigError(f"{key}={value} is not allowed; choose one of: {', '.join(allowed)}")
    return value


def validate_data(cfg: DictConfig, check_files: bool = True) -> None:
    """The ``data`` node: its name, sizes and fractions, and (``check_files``) that its files exist.

    For the MNIST family a missing data set is downloaded here when ``data.download`` allows it, so
    an offline machine fails before any run starts, with one line saying where to put the files.
    """
    data = cfg.data
    if data is None:
        raise ConfigError(f"data is not set; choose one of: {', '.join(group_options('data'))}")
    name = _choice(cfg, "data.name", DATA_NAMES)
    _int(cfg, "data.batch_size", 1)
    _int(cfg, "data.eval_batch_size", 1)
    _int(cfg, "data.split_seed", 0)
    if name in MNIST_FAMILY:
        _int(cfg, "data.val_size", 1)
        if _int(cfg, "data.val_size", 1) >= 60000:
            raise ConfigError(f"data.val_size={data.val_size} is out of range: must be in [1, 60000)")
        augment = _value(cfg, "data.augment")
        if augment is not None:
            from ugmm.data.augment import RandomAffine

            fields = {"degrees", "translate", "scale"}
            if not OmegaConf.is_dict(augment) or not set(augment) <= fields:
                raise ConfigError(f"data.augment={augment} must be null or a mapping of {', '.join(sorted(fields))}")
            try:
                RandomAffine(**OmegaConf.to_container(augment))
            except DataError as err:
                raise ConfigError(str(err)) from None
        data_dir = _value(cfg, "data.data_dir")
        if not data_dir:
            raise ConfigError("data.data_dir is empty: give data.data_dir=<folder> or set UGMM_DATA_DIR")
        if check_files:
            from ugmm.data.mnist import ensure_downloaded

            try:
                ensure_downloaded(data_dir, name, bool(_value(cfg, "data.download")))
            except DataError as err:
                raise ConfigError(str(err)) from None
        return
    if _value(cfg, "data.split") is not None:
        _choice(cfg, "data.split", SPLITS)
    test = _float(cfg, "data.test_fraction", 0.0, 1.0, low_open=True)
    val = _float(cfg, "data.val_fraction", 0.0, 1.0)
    if test + val >= 1.0:
        raise ConfigError(f"data.test_fraction + data.val_fraction = {test + val:g} must be < 1 to leave training rows")
    monitor = _value(cfg, "monitor.metric")
    if val == 0.0 and str(monitor).startswith("val/"):
        # without validation rows nothing logs val/*: checkpointing and early stopping would fail mid-run
        raise ConfigError(
            f"data.val_fraction=0 leaves no validation rows to compute monitor.metric={monitor}: "
            "monitor a training metric (monitor.metric=train/nll monitor.mode=min) or keep val_fraction > 0"
        )
    path = _value(cfg, "data.path")
    if name == "csv" and not path:
        raise ConfigError("data.path is required for data=csv: give data.path=<file.csv> data.target=<label column>")
    target = _value(cfg, "data.target")
    if not target:
        raise ConfigError("data.target is required: the name of the label column")
    if check_files:
        from ugmm.data.tabular import IRIS_CSV, read_header

        file = Path(path) if path else IRIS_CSV
        try:
            header = read_header(file)
        except DataError as err:
            raise ConfigError(str(err)) from None
        if target not in header:
            raise ConfigError(f"data.target={target} is not a column of {file}; columns: {', '.join(header)}")
        if len(header) < 2:
            raise ConfigError(f"{file} has no feature columns besides data.target={target}")


def _check_resolves(cfg: Any, prefix: str = "") -> None:
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
                _check_resolves(node, path + ".")
            elif not OmegaConf.is_missing(cfg, key):
                cfg[key]  # noqa: B018 - resolves the value
        except OmegaConfBaseException as err:
            text = " ".join(str(err).split())
            if "HydraConfig was not set" in text:
                continue  # ${hydra:...} outside a Hydra run: paths.output_dir, set by train()
            raise ConfigError(f"{path}: {text.split(' full_key:')[0]}") from None


def validate_train_config(cfg: DictConfig, check_files: bool = True) -> None:
    """Every check of a training config, in the order a user would fix them; raises :class:`ConfigError`."""
    _check_resolves(cfg)  # robust (issue 12): a broken ${...} in one line, not a traceback later
    net = _choice(cfg, "model.net", NETS)
    _int(cfg, "model.width", 1)
    _int(cfg, "model.depth", 0)
    dropout = _value(cfg, "model.dropout")
    if OmegaConf.is_list(dropout):
        # one rate per layer (len = depth + 1); the network checks the length
        if not all(isinstance(p, (int, float)) and not isinstance(p, bool) and 0.0 <= p < 1.0 for p in dropout):
            raise ConfigError(f"model.dropout={list(dropout)} must hold rates in [0, 1), one per layer")
    else:
        _float(cfg, "model.dropout", 0.0, 1.0)
    if net == "ugmm":
        _float(cfg, "model.std_floor", 0.0, math.inf)
        if _value(cfg, "model.std_param") is not None:
            _choice(cfg, "model.std_param", STD_PARAMETERISATIONS)
        if _value(cfg, "model.init") is not None:
            _choice(cfg, "model.init", INITS)
        if _value(cfg, "model.label_scale") is not None:
            _float(cfg, "model.label_scale", 0.0, math.inf, low_open=True)
        if _value(cfg, "model.label_std") is not None:
            _float(cfg, "model.label_std", 0.0, math.inf, low_open=True)
        _choice(cfg, "model.backend", BACKENDS)
    loss = _choice(cfg, "loss.name", LOSSES)
    if loss == "nll" and net != "ugmm":
        raise ConfigError(f"loss=nll needs model=ugmm (a density model over features and label), got model={net}")
    if loss == "nll" and _value(cfg, "loss.conditional_weight") is not None:
        _float(cfg, "loss.conditional_weight", 0.0, math.inf)
    _choice(cfg, "optimizer.name", OPTIMIZERS)
    _float(cfg, "optimizer.lr", 0.0, math.inf, low_open=True)
    _float(cfg, "optimizer.weight_decay", 0.0, math.inf)
    sched = cfg.get("scheduler")
    if sched is not None:
        kind = _choice(cfg, "scheduler.name", SCHEDULERS)
        if kind == "multistep":
            milestones = _value(cfg, "scheduler.milestones")
            if not OmegaConf.is_list(milestones) or not all(isinstance(m, int) and m > 0 for m in milestones):
                raise ConfigError(f"scheduler.milestones={milestones} must be a list of positive epoch numbers")
            _float(cfg, "scheduler.gamma", 0.0, 1.0, low_open=True, high_open=False)
    _choice(cfg, "monitor.mode", MONITOR_MODES)
    if not _value(cfg, "monitor.metric"):
        raise ConfigError("monitor.metric is empty: e.g. monitor.metric=val/acc")
    seed = cfg.get("seed")
    if seed is not None:
        _int(cfg, "seed", 0)
    _validate_trainer(cfg)
    validate_data(cfg, check_files=check_files)
    ckpt = cfg.get("ckpt_path")
    if ckpt not in (None, "last") and check_files and not Path(ckpt).is_file():
        raise ConfigError(f"ckpt_path={ckpt} does not exist (give a .ckpt file, last, or null)")


def validate_eval_config(cfg: DictConfig, check_files: bool = True) -> None:
    """Checks for ``eval.py``: the checkpoint and, when a data group is given, the data."""
    ckpt = _value(cfg, "ckpt_path")
    if not ckpt:
        raise ConfigError("ckpt_path is required: give ckpt_path=<file.ckpt> or ckpt_path=last")
    if ckpt != "last" and check_files and not Path(ckpt).is_file():
        raise ConfigError(f"ckpt_path={ckpt} does not exist")
    _validate_trainer(cfg)
    if cfg.get("data") is not None:
        validate_data(cfg, check_files=check_files)


def _validate_trainer(cfg: DictConfig) -> None:
    accelerator = _value(cfg, "trainer.accelerator")
    if accelerator is not None and accelerator not in ACCELERATORS:
        raise ConfigError(f"trainer.accelerator={accelerator} is not allowed; choose one of: {', '.join(ACCELERATORS)}")
    max_epochs = _value(cfg, "trainer.max_epochs")
    if max_epochs is not None and (not isinstance(max_epochs, int) or max_epochs < -1 or max_epochs == 0):
        raise ConfigError(f"trainer.max_epochs={max_epochs} is out of range: must be >= 1 (or -1 for no limit)")


# --- plain keys, checked against the composed config --------------------------------------------
def _config_keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a config (nodes and leaves), ``hydra`` excluded."""
    keys = []
    if OmegaConf.is_dict(node):
        for key in node.keys():
            if not prefix and key == "hydra":
                continue
            path = f"{prefix}{key}"
            keys.append(path)
            try:
                child = node._get_node(key)
            except Exception:
                continue
            keys += _config_keys(child, path + ".")
    return keys


def check_plain_keys(args: list[str], config_name: str = "train") -> None:
    """Reject ``key=value`` overrides of keys the composed config does not have, with the closest key.

    ``model.widht=3`` -> "model.widht is not a key of the config; did you mean model.width?". The
    config is composed with the command line's group choices (``data=iris``, ``experiment=...``), so
    keys those options bring count. Keys with ``+``/``~``, ``hydra.*`` and sweeps over groups are left
    to Hydra; so is anything that does not compose here.
    """
    plain, groups = [], []
    plain_check = True
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key = arg.split("=", 1)[0]
        if key.startswith(("+", "~")) or key.startswith("hydra.") or key == "hydra":
            continue
        if key in GROUPS or key == "hparams_search" or "/" in key:
            value = arg.split("=", 1)[1]
            if "," in value or any(c in value for c in "()[]{}*?$"):
                plain_check = False  # a sweep over options: each job composes its own keys
            groups.append(arg)
        elif "." in key or key.isidentifier():
            plain.append(key)
    from hydra import compose, initialize_config_module

    if plain and plain_check:
        try:
            with initialize_config_module("ugmm.conf", version_base="1.3"):
                cfg = compose(config_name=config_name, overrides=groups)
        except Exception:
            return
        keys = _config_keys(cfg)
        known = set(keys)
        for key in plain:
            if key not in known:
                hint = _key_hint(cfg, key, keys)
                raise ConfigError(f"{key} is not a key of the config; {hint} (a new key: +{key}=...)")
    overrides = [a for a in args if not a.startswith("-")]
    sweeps = ("choice(", "range(", "interval(", "glob(", "tag(", "hparams_search=", "hydra.mode=", "hydra.sweeper")
    if any(a.startswith("-") or any(w in a for w in sweeps) for a in args):
        return  # a multirun (-m, an optuna search) or Hydra's own flags: its sweep syntax is Hydra's to read
    try:  # the whole command line, composed as Hydra will: its errors in one line
        with initialize_config_module("ugmm.conf", version_base="1.3"):
            compose(config_name=config_name, overrides=overrides)
    except Exception as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        text = " ".join(lines[:2]) if lines else type(err).__name__
        raise ConfigError(f"{_unparsable(overrides) or 'the command line'}: {text}") from None


def _unparsable(overrides: list[str]) -> str | None:
    """The first override Hydra's grammar cannot parse, if one is."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_override(override)
        except Exception:
            return override
    return None


def _key_hint(cfg: DictConfig, key: str, keys: list[str]) -> str:
    """The closest existing key (a sibling first, then anywhere by its full or last name) or the choices."""
    import difflib

    parent, _, leaf = key.rpartition(".")
    if parent and parent in keys and OmegaConf.select(cfg, parent) is None:
        return f"{parent} is null here: set it as a whole, e.g. {parent}={{{leaf}: ...}}"
    siblings = [k for k in keys if k.rpartition(".")[0] == parent]
    close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6) or difflib.get_close_matches(
        key, keys, n=1, cutoff=0.75
    )
    if not close:
        by_leaf = {}
        for k in keys:
            by_leaf.setdefault(k.rpartition(".")[2], k)
        close = [by_leaf[m] for m in difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)]
    if close:
        return f"did you mean {close[0]}?"
    if parent in keys:
        return f"keys under {parent}: " + ", ".join(k.rpartition(".")[2] for k in siblings)
    return "top-level keys: " + ", ".join(k for k in keys if "." not in k)
