"""Hydra entry points: ``python train.py`` / ``ugmm-train`` and ``python eval.py`` / ``ugmm-eval``.

The work lives in :func:`train` and :func:`evaluate`, which take a composed ``DictConfig``, so tests,
notebooks and sweepers call them in-process (``hydra.compose`` with
``initialize_config_module("ugmm.conf")``). Configs ship inside the package (``ugmm/conf``), so the
console scripts work from any directory after ``pip install .``.

Every successful training job writes ``<run dir>/metrics.json``::

    {"status": "ok", "monitor": "val/acc", "mode": "max", "best": 0.97, "metrics": {...},
     "overrides": [...], "wall_time_s": 12.3, "best_ckpt": ".../checkpoints/epoch_004.ckpt"}
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
import torch
from lightning.pytorch import Callback, LightningDataModule, Trainer, seed_everything
from omegaconf import DictConfig, OmegaConf, open_dict

from ugmm.config import (
    ConfigError,
    check_group_overrides,
    check_plain_keys,  # robust (issue 12): "did you mean model.width?"
    validate_eval_config,
    validate_train_config,
)
from ugmm.data import DataError, MNISTDataModule, TabularDataModule
from ugmm.data.mnist import MNIST_FAMILY
from ugmm.divergence import EXIT_DIVERGED, DivergenceGuard, TrainingDivergedError  # robust (issue 12)
from ugmm.modules import MODULES, plain
from ugmm.resume import (
    TrainingInterruptedError,
    check_resumable,
    requeued_checkpoint,
    resume_callbacks,
)  # robust (issue 12)
from ugmm.sweeps.ddp import release_ddp_environment
from ugmm.sweeps.summary import one_line_error, write_failed_job, write_job_metrics
from ugmm.sweeps.wandb_logger import finish_wandb

log = logging.getLogger(__name__)

# the user-facing errors: one line, exit code 2
USER_ERRORS = (ConfigError, DataError)
EXIT_USAGE = 2

# Lightning's advice that does not apply here: the data is in memory, workers would only copy it
for _pattern in (
    ".*does not have many workers.*",
    ".*smaller than the logging interval.*",
    ".*Checkpoint directory .* exists and is not empty.*",
    ".*treespec, LeafSpec.*",  # Lightning's own use of a deprecated torch API
):
    warnings.filterwarnings("ignore", message=_pattern)


# --- building blocks ------------------------------------------------------------------------------
def build_datamodule(data: Any) -> LightningDataModule:
    """The DataModule for a ``data`` config (DictConfig or dict): MNIST family or a CSV table."""
    data = dict(plain(data))
    name = data["name"]
    if name in MNIST_FAMILY:
        keys = (
            "name",
            "data_dir",
            "download",
            "batch_size",
            "eval_batch_size",
            "val_size",
            "split_seed",
            "normalize",
            "augment",
        )
        return MNISTDataModule(**{k: data[k] for k in keys if k in data})
    keys = ("path", "target", "batch_size", "eval_batch_size", "test_fraction", "val_fraction", "split_seed", "split")
    return TabularDataModule(
        **{k: data[k] for k in keys if k in data}, standardize=data.get("standardize", True), name=name
    )


def loss_options(loss: Any) -> dict:
    """The loss group's settings besides its name, as keyword arguments of its LightningModule
    (``loss=nll``: ``conditional_weight``)."""
    return {k: v for k, v in dict(plain(loss)).items() if k != "name"}


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


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list) -> Trainer:
    return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def _prepare_output_dir(cfg: DictConfig) -> Path:
    """This job's directory: Hydra's run dir, or ``log_dir/task_name/runs/<timestamp>`` without Hydra."""
    try:
        out = Path(cfg.paths.output_dir)
    except Exception:  # composed by hydra.compose: ${hydra:runtime.output_dir} does not resolve
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
        out = Path(cfg.paths.log_dir) / cfg.task_name / "runs" / stamp
        with open_dict(cfg):
            cfg.paths.output_dir = str(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def find_last_checkpoint(log_dir: str | Path, task_name: str, exclude: Path | None = None) -> Path:
    """``checkpoints/last.ckpt`` of the latest run (by its timestamped dir name) of ``task_name``."""
    runs = Path(log_dir) / task_name / "runs"
    found = sorted(
        (p for p in runs.glob("*/checkpoints/last.ckpt") if exclude is None or p.parents[1] != exclude),
        key=lambda p: p.parents[1].name,
    )
    if not found:
        raise ConfigError(f"ckpt_path=last: no earlier run of task {task_name} has checkpoints/last.ckpt under {runs}")
    return found[-1]


def _hydra_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [str(o) for o in HydraConfig.get().overrides.task]


def _floats(metrics: dict) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        value = float(value.item() if isinstance(value, torch.Tensor) else value)
        out[key] = value
    return dict(sorted(out.items()))


def _json_number(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def _print_summary(title: str, metrics: dict[str, float], out_dir: Path, extra: dict[str, str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}")
    console = Console()
    console.print(table)
    for key, value in extra.items():
        console.print(f"{key}: {value}", soft_wrap=True)
    console.print(f"results: {out_dir.resolve()}", soft_wrap=True)


# --- train ----------------------------------------------------------------------------------------
def train(cfg: DictConfig) -> float:
    """Train (and test) one model from a composed config; returns the best monitored metric.

    Validates the config before any data loads (raising :class:`~ugmm.config.ConfigError`), fits with
    checkpoints under ``paths.output_dir``, tests the best checkpoint and writes ``metrics.json``.
    """
    start = time.perf_counter()
    validate_train_config(cfg)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path == "last":  # before this run's dir exists, so a missing run leaves nothing behind
        ckpt_path = str(find_last_checkpoint(cfg.paths.log_dir, cfg.task_name))
    if ckpt_path is not None:  # robust (issue 12): a finished run says so and how to extend it
        check_resumable(ckpt_path, cfg.trainer.get("max_epochs"), cfg.trainer.get("max_steps"))
    out_dir = _prepare_output_dir(cfg)
    if ckpt_path is None and (requeued := requeued_checkpoint(out_dir)) is not None:
        ckpt_path = str(requeued)  # robust (issue 12): a requeued SLURM job resumes its own last.ckpt
    if cfg.get("seed") is not None:
        seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = build_datamodule(cfg.data)
    module = MODULES[cfg.loss.name](
        n_features=datamodule.n_features,
        n_classes=datamodule.n_classes,
        model=cfg.model,
        optimizer=cfg.optimizer,
        scheduler=cfg.get("scheduler"),
        data=cfg.data,
        **loss_options(cfg.loss),
    )
    loggers = build_loggers(cfg)
    callbacks = build_callbacks(cfg, has_logger=bool(loggers))
    callbacks += [DivergenceGuard(), *resume_callbacks()]  # robust (issue 12)
    trainer = build_trainer(cfg, callbacks, loggers)
    for logger in loggers:
        logger.log_hyperparams({"cfg": OmegaConf.to_container(cfg, resolve=True)})

    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = _floats(trainer.callback_metrics)

    monitor, mode = cfg.monitor.metric, cfg.monitor.mode
    checkpoint = trainer.checkpoint_callback
    best_ckpt = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    if best_ckpt and checkpoint.monitor == monitor and checkpoint.best_model_score is not None:
        best = float(checkpoint.best_model_score)
    elif monitor in metrics:
        best = metrics[monitor]
    else:
        raise ConfigError(f"monitor.metric={monitor} was never logged; logged metrics: {', '.join(metrics)}")

    if cfg.get("test"):
        trainer.test(module, datamodule=datamodule, ckpt_path=best_ckpt, weights_only=True, verbose=False)
        metrics.update(_floats(trainer.callback_metrics))
    metrics = {k: v for k, v in metrics.items() if k.startswith(("val/", "test/"))}

    summary = {
        "status": "ok",
        "monitor": monitor,
        "mode": mode,
        "best": _json_number(best),
        "metrics": {k: _json_number(v) for k, v in metrics.items()},
        "overrides": _hydra_overrides(),
        "wall_time_s": time.perf_counter() - start,
        "best_ckpt": str(Path(best_ckpt).resolve()) if best_ckpt else None,
        # robust (issue 12): a resumed run links the run it continues (its own csv holds the new epochs)
        "resumed_from": str(Path(ckpt_path).resolve()) if ckpt_path else None,
    }
    if trainer.is_global_zero:
        (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        extra = {"best " + monitor: f"{best:.4f}"}
        if best_ckpt:
            extra["best checkpoint"] = summary["best_ckpt"]
        _print_summary(f"{cfg.task_name}: final metrics", metrics, out_dir, extra)
    # one W&B run per job: finish it here, with the final metrics as its summary
    finish_wandb(
        loggers, summary={f"best/{monitor}": summary["best"], **summary["metrics"]}, best_ckpt=summary["best_ckpt"]
    )
    return best


# --- eval -----------------------------------------------------------------------------------------
def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test a checkpoint; the model (and, unless a data group is given, the data) come from it."""
    start = time.perf_counter()
    validate_eval_config(cfg)
    ckpt_path = cfg.ckpt_path
    if ckpt_path == "last":
        ckpt_path = str(find_last_checkpoint(cfg.paths.log_dir, cfg.get("train_task_name", "train")))
    try:
        hparams = torch.load(ckpt_path, map_location="cpu", weights_only=True).get("hyper_parameters", {})
    except Exception as err:
        raise ConfigError(
            f"ckpt_path={ckpt_path} is not a readable uGMM-NN checkpoint ({type(err).__name__})"
        ) from None
    if hparams.get("loss") not in MODULES:
        raise ConfigError(f"ckpt_path={ckpt_path} was not written by ugmm-train (no loss in its hyperparameters)")
    if cfg.get("seed") is not None:
        seed_everything(cfg.seed, workers=True, verbose=False)
    data_cfg = cfg.data if cfg.get("data") is not None else hparams.get("data")
    if data_cfg is None:
        raise ConfigError(f"ckpt_path={ckpt_path} holds no data config: give data=<option>")
    out_dir = _prepare_output_dir(cfg)
    datamodule = build_datamodule(data_cfg)
    if (datamodule.n_features, datamodule.n_classes) != (hparams["n_features"], hparams["n_classes"]):
        raise ConfigError(
            f"data={data_cfg['name']} has {datamodule.n_features} features and {datamodule.n_classes} classes, "
            f"the checkpoint expects {hparams['n_features']} and {hparams['n_classes']}"
        )
    module = MODULES[hparams["loss"]].load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
    loggers = build_loggers(cfg)
    trainer = build_trainer(cfg, [], loggers)
    trainer.test(module, datamodule=datamodule, verbose=False)
    metrics = {k: v for k, v in _floats(trainer.callback_metrics).items() if k.startswith("test/")}
    summary = {
        "status": "ok",
        "ckpt_path": str(Path(ckpt_path).resolve()),
        "metrics": {k: _json_number(v) for k, v in metrics.items()},
        "overrides": _hydra_overrides(),
        "wall_time_s": time.perf_counter() - start,
    }
    if trainer.is_global_zero:
        (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        _print_summary("eval: test metrics", metrics, out_dir, {"checkpoint": summary["ckpt_path"]})
    return metrics


# --- entry points ---------------------------------------------------------------------------------
def _discard_run_dir() -> None:
    """Remove this job's run dir after a user error, so nothing half-written stays behind."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    out = Path(HydraConfig.get().runtime.output_dir)
    if out.is_dir():
        shutil.rmtree(out, ignore_errors=True)
        # and the empty parents Hydra made for it (runs/, <task>/), never anything holding files
        for parent in list(out.parents)[:2]:
            try:
                parent.rmdir()
            except OSError:
                break


def _fail(err: Exception) -> None:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _record_failed_job(err: Exception) -> float:
    """Under ``-m``: keep the sweep going; this job's metrics.json says "failed" with the error line."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    log.error("job %s failed: %s", hc.job.num, one_line_error(err), exc_info=err)
    if os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0":
        write_failed_job(hc.runtime.output_dir, err, [str(o) for o in hc.overrides.task])
    print(f"error: job {hc.job.num} ({' '.join(hc.overrides.task)}) failed: {one_line_error(err)}", file=sys.stderr)
    return float("nan")  # optuna tells a NaN objective as a failed trial


def _run_task(fn, cfg: DictConfig):
    """Run ``fn(cfg)``; a single run exits non-zero on failure, a multirun job records it and returns NaN."""
    try:
        return fn(cfg)
    except (TrainingDivergedError, TrainingInterruptedError) as err:  # robust (issue 12): diverged / preempted runs
        finish_wandb(None, failed=True)
        return _record_stopped_run(err, cfg)
    except USER_ERRORS as err:
        finish_wandb(None, failed=True)
        if _in_multirun():
            return _record_failed_job(err)
        _discard_run_dir()
        _fail(err)
    except Exception as err:
        finish_wandb(None, failed=True)  # every W&B run is finished, also a failed one
        if _in_multirun():
            return _record_failed_job(err)
        raise
    finally:
        release_ddp_environment()  # the next job of a multirun starts its own DDP ranks


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def _train_task(cfg: DictConfig) -> float:
    return _run_task(train, cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def _eval_task(cfg: DictConfig) -> None:
    _run_task(evaluate, cfg)


def _record_stopped_run(err: TrainingDivergedError | TrainingInterruptedError, cfg: DictConfig) -> float:
    """robust (issue 12): metrics.json says "diverged" or "interrupted"; one line on stderr. A diverged
    multirun job returns NaN (the sweep goes on, optuna counts a failed trial); everything else exits:
    ``EXIT_DIVERGED``, or 128 + the signal for an interrupted run (which says how to resume)."""
    diverged = isinstance(err, TrainingDivergedError)
    record = {"status": "diverged" if diverged else "interrupted", "error": str(err), "overrides": _hydra_overrides()}
    record.update(err.record() if diverged else {"epoch": err.epoch, "step": err.step, "ckpt": str(err.ckpt_path)})
    out = cfg.paths.get("output_dir") if cfg.get("paths") is not None else None
    if out and os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0":
        write_job_metrics(out, record)
    line = f"error: {err}"
    if not diverged and err.ckpt_path is not None:
        script = Path(sys.argv[0]).name
        script = f"python {script}" if script.endswith(".py") else script
        overrides = [o for o in _hydra_overrides() if not o.startswith("ckpt_path=")]
        command = " ".join([script, *overrides, "ckpt_path=last"])
        line += f"; resume with: {command}"
    if diverged and _in_multirun():
        from hydra.core.hydra_config import HydraConfig

        print(f"error: job {HydraConfig.get().job.num} diverged: {err}", file=sys.stderr)
        return float("nan")
    print(line, file=sys.stderr)
    sys.exit(EXIT_DIVERGED if diverged else err.exit_code)


def _precheck(config_name: str = "train") -> None:
    try:
        check_group_overrides(sys.argv[1:])
        check_plain_keys(sys.argv[1:], config_name)  # robust (issue 12): mistyped plain keys
    except ConfigError as err:
        _fail(err)


def train_main() -> None:
    """``ugmm-train`` / ``python train.py [overrides]``."""
    _precheck()
    _train_task()


def eval_main() -> None:
    """``ugmm-eval`` / ``python eval.py ckpt_path=... [overrides]``."""
    _precheck("eval")
    _eval_task()
