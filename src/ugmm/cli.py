"""Hydra entry points: ``python train.py`` / ``ugmm-train`` and ``python eval.py`` / ``ugmm-eval``.

The work lives in :func:`train` and :func:`evaluate`, which take a composed ``DictConfig``, so tests,
notebooks and sweepers call them in-process (``hydra.compose`` with
``initialize_config_module("ugmm.conf")``). Configs ship inside the package (``ugmm/conf``), so the
console scripts work from any directory after ``pip install .``. The pieces: the schema
(:mod:`ugmm.config`), config -> objects (:mod:`ugmm.builders`), the run's bookkeeping
(:mod:`ugmm.runs`, :mod:`ugmm.records`) and how a job ends (:mod:`ugmm.tasks`).

Every successful training job writes ``<run dir>/metrics.json`` (atomically)::

    {"status": "ok", "monitor": "val/acc", "mode": "max", "best": 0.97, "metrics": {...},
     "overrides": [...], "wall_time_s": 12.3, "best_ckpt": ".../checkpoints/epoch_004.ckpt"}

A table's run adds ``"preprocessing"`` (what was imputed and one-hot encoded) when there was any. A
cross-validation (``data.cv_folds=k``) writes one record for its k folds: :func:`cv_record`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from lightning.pytorch import seed_everything
from omegaconf import DictConfig, OmegaConf, open_dict

from ugmm import builders, runs
from ugmm.callbacks import EpochTimes
from ugmm.config import (
    ConfigError,
    check_group_overrides,
    legacy_plus_trainer,
    validate_eval_config,
    validate_train_config,
)
from ugmm.containers import plain
from ugmm.divergence import DivergenceGuard
from ugmm.integrations.wandb_logger import finish_wandb
from ugmm.modules import MODULES
from ugmm.ops import kernel_threads, torch_threads
from ugmm.overrides import check_plain_keys
from ugmm.records import mean_std, write_job_metrics
from ugmm.resume import check_resumable, interruptions_from, requeued_checkpoint, resume_callbacks
from ugmm.tasks import fail, run_task

log = logging.getLogger(__name__)

# re-exported for notebooks and scripts: ``from ugmm.cli import build_datamodule, train``
build_datamodule = builders.build_datamodule
find_last_checkpoint = runs.find_last_checkpoint


def _best(trainer, metrics: dict[str, float], monitor: str) -> tuple[float, str | None]:
    """The monitored metric's best value (the checkpoint callback's, else the last logged) and its checkpoint."""
    checkpoint = trainer.checkpoint_callback
    best_ckpt = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    if best_ckpt and checkpoint.monitor == monitor and checkpoint.best_model_score is not None:
        return float(checkpoint.best_model_score), best_ckpt
    if monitor in metrics:
        return metrics[monitor], best_ckpt
    raise ConfigError(f"monitor.metric={monitor} was never logged; logged metrics: {', '.join(metrics)}")


@contextlib.contextmanager
def cpu_threads(node) -> Iterator[None]:
    """A run's ``threads.torch`` (torch's own ops) and ``threads.kernels`` (the fused uGMM kernels), restored
    afterwards. Both null: nothing changes (the kernels follow torch's count, which DDP launchers lower per
    process); ``threads.torch`` alone: the kernels keep the count the run found (one per core unless
    OMP_NUM_THREADS says)."""
    node = node or {}
    torch_n, kernels_n = node.get("torch"), node.get("kernels")
    if kernels_n is None and torch_n is not None:
        kernels_n = torch.get_num_threads()
    with torch_threads(torch_n), kernel_threads(kernels_n):
        yield


@dataclass
class FitResult:
    """What one fit-and-test leaves: the best monitored value, its checkpoint and the final metrics."""

    best: float
    best_ckpt: str | None
    metrics: dict[str, float]  # the val/ and test/ metrics
    is_global_zero: bool
    loggers: list
    tested: str = "best"  # which weights the test metrics are of: best (checkpoint) | last
    tested_ckpt: str | None = None  # their checkpoint (eval.py on it repeats the test metrics)
    epoch_times_s: list[float] | None = None  # wall time of each epoch trained here, validation included


def train(cfg: DictConfig) -> float:
    """Train (and test) one model from a composed config; returns the best monitored metric.

    Validates the config before any data loads (raising :class:`~ugmm.config.ConfigError`), fits with
    checkpoints under ``paths.output_dir``, tests the best checkpoint and writes ``metrics.json``.
    ``data.cv_folds=k`` with ``data.cv_fold=null`` runs :func:`cross_validate` instead.
    """
    start = time.perf_counter()
    validate_train_config(cfg)
    folds = OmegaConf.select(cfg, "data.cv_folds") or 0
    if folds and OmegaConf.select(cfg, "data.cv_fold") is None:
        return cross_validate(cfg, folds, start)
    # before this run's dir exists, so a missing checkpoint leaves nothing behind
    ckpt_path = runs.resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.log_dir, cfg.task_name)
    if ckpt_path is not None:  # a finished run says so and how to extend it
        check_resumable(ckpt_path, cfg.trainer.get("max_epochs"), cfg.trainer.get("max_steps"))
    datamodule = builders.build_datamodule(cfg.data)
    out_dir = runs.prepare_output_dir(cfg)
    if ckpt_path is None and (requeued := requeued_checkpoint(out_dir)) is not None:
        ckpt_path = str(requeued)  # a requeued SLURM job resumes its own last.ckpt
    run = _fit_and_test(cfg, datamodule, ckpt_path)
    monitor = cfg.monitor.metric
    summary = {
        "status": "ok",
        "monitor": monitor,
        "mode": cfg.monitor.mode,
        "best": runs.json_number(run.best),
        "metrics": {k: runs.json_number(v) for k, v in run.metrics.items()},
        "overrides": runs.hydra_overrides(),
        "wall_time_s": time.perf_counter() - start,
        "epoch_times_s": [round(t, 4) for t in run.epoch_times_s or []],
        "best_ckpt": str(Path(run.best_ckpt).resolve()) if run.best_ckpt else None,
        "tested": run.tested,
        "tested_ckpt": str(Path(run.tested_ckpt).resolve()) if run.tested_ckpt else None,
        # robust (issue 12): a resumed run links the run it continues (its own csv holds the new epochs)
        "resumed_from": str(Path(ckpt_path).resolve()) if ckpt_path else None,
    }
    preprocessing = getattr(datamodule, "preprocessing_summary", "")
    if preprocessing:
        summary["preprocessing"] = preprocessing
    if run.is_global_zero:
        write_job_metrics(out_dir, summary)
        extra = {"best " + monitor: f"{run.best:.4f}"}
        if run.best_ckpt:
            extra["best checkpoint"] = summary["best_ckpt"]
        if run.tested == "last":
            extra["tested"] = "the last model (test_checkpoint=last)"
        if preprocessing:
            extra["data"] = preprocessing
        runs.print_summary(f"{cfg.task_name}: final metrics", run.metrics, out_dir, extra)
    # one W&B run per job: finish it here, with the final metrics as its summary
    finish_wandb(
        run.loggers, summary={f"best/{monitor}": summary["best"], **summary["metrics"]}, best_ckpt=summary["best_ckpt"]
    )
    return run.best


def _fit_and_test(cfg: DictConfig, datamodule, ckpt_path: str | None, one_device: bool = False) -> FitResult:
    """Fit the ``loss`` module on ``datamodule`` (from ``ckpt_path``, if given), then test its best checkpoint.

    ``one_device``: a trainer over several devices is a :class:`~ugmm.config.ConfigError` (cross-validation
    runs its folds one after another in this process).
    """
    if cfg.get("seed") is not None:
        seed_everything(cfg.seed, workers=True, verbose=False)
    with runs.quiet_lightning_advice():
        datamodule.prepare_data()  # missing data fails here, in one line, before anything is built
        builders.resolve_max_epochs(cfg, datamodule)
        builders.resolve_model_width(cfg, datamodule)
        module = builders.build_module(cfg, datamodule)
        loggers = builders.build_loggers(cfg)
        callbacks = builders.build_callbacks(cfg, has_logger=bool(loggers))
        epoch_times = EpochTimes()
        # NaN loss stops at once; exact resume, preemption; epoch times for metrics.json
        callbacks += [DivergenceGuard(), *resume_callbacks(), epoch_times]
        test_checkpoint, callbacks = builders.resolve_test_checkpoint(cfg, datamodule, callbacks)
        trainer = builders.build_trainer(cfg, callbacks, loggers)
        if one_device and trainer.world_size > 1:
            raise ConfigError(
                f"data.cv_folds={cfg.data.cv_folds} runs its folds one after another on one device; this trainer "
                f"has {trainer.world_size} (set trainer.devices=1, or run each fold with data.cv_fold=<i>)"
            )
        if preprocessing := getattr(datamodule, "preprocessing_summary", ""):
            log.info("data: %s", preprocessing)
        for logger in loggers:
            logger.log_hyperparams({"cfg": OmegaConf.to_container(cfg, resolve=True)})
        with cpu_threads(cfg.get("threads")):
            with interruptions_from(callbacks):
                trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
            metrics = runs.floats(trainer.callback_metrics)
            best, best_ckpt = _best(trainer, metrics, cfg.monitor.metric)
            if cfg.get("test"):
                tested = best_ckpt if test_checkpoint == "best" else None  # None: the weights training ended with
                trainer.test(module, datamodule=datamodule, ckpt_path=tested, weights_only=True, verbose=False)
                metrics.update(runs.floats(trainer.callback_metrics))
    metrics = {k: v for k, v in metrics.items() if k.startswith(("val/", "test/"))}
    # the un-monitored checkpoint callback (callbacks.last_checkpoint) holds the weights training ended with
    last_ckpt = next((c.best_model_path for c in trainer.checkpoint_callbacks if c.monitor is None), None) or None
    tested_ckpt = best_ckpt if test_checkpoint == "best" else last_ckpt
    return FitResult(
        best, best_ckpt, metrics, trainer.is_global_zero, loggers, test_checkpoint, tested_ckpt, epoch_times.times
    )


def cross_validate(cfg: DictConfig, k: int, start: float | None = None) -> float:
    """``data.cv_folds=k``, ``data.cv_fold=null``: one model per fold, in turn; returns the mean best metric.

    Fold ``i`` trains with ``data.cv_fold=i`` in ``<run dir>/fold_<i>`` (its checkpoints and logs; no
    metrics.json there, so sweeps count the run once); the test rows are the same for every fold.
    The run's ``metrics.json`` is :func:`cv_record`'s.
    """
    start = time.perf_counter() if start is None else start
    if cfg.get("ckpt_path") is not None:
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path} cannot resume a cross-validation (data.cv_folds={k}): start it again, "
            "or resume one fold's run with data.cv_fold=<i>"
        )
    datamodules = [builders.build_datamodule({**plain(cfg.data), "cv_fold": i}) for i in range(k)]
    for datamodule in datamodules:
        datamodule.table  # noqa: B018 - reads and encodes each fold's table: a bad one fails before any training
    out_dir = runs.prepare_output_dir(cfg)
    results = []
    for i, datamodule in enumerate(datamodules):
        fold_cfg = copy.deepcopy(cfg)
        with open_dict(fold_cfg):
            fold_cfg.data.cv_fold = i
            fold_cfg.paths.output_dir = str(out_dir / f"fold_{i}")
        runs.prepare_output_dir(fold_cfg)
        run = _fit_and_test(fold_cfg, datamodule, None, one_device=True)
        log.info("fold %d of %d: best %s %.4f", i, k, cfg.monitor.metric, run.best)
        summary = {f"best/{cfg.monitor.metric}": run.best, **run.metrics}
        finish_wandb(run.loggers, summary=summary, best_ckpt=run.best_ckpt)  # one W&B run per fold
        results.append(run)
    record, line = cv_record(cfg, results)
    record["wall_time_s"] = time.perf_counter() - start
    if preprocessing := datamodules[0].preprocessing_summary:
        record["preprocessing"] = preprocessing  # fold 0's: the folds differ only in which rows train
    log.info("%s", line)
    write_job_metrics(out_dir, record)
    name, _, value = line.partition(": ")
    runs.print_summary(f"{cfg.task_name}: {k}-fold cross-validation", record["metrics"], out_dir, {name: value})
    return record["best"] if record["best"] is not None else math.nan


def cv_record(cfg: DictConfig, results: list[FitResult]) -> tuple[dict, str]:
    """A cross-validation's ``metrics.json`` record and its one-line summary.

    ``best``: the mean over folds of each fold's best monitored value (what a sweep optimises), and
    ``best_std``; ``metrics``: ``cv/<metric>_mean`` and ``_std`` (sample std over folds, ``/`` in the
    name as ``_``: ``cv/val_acc_mean``, ``cv/test_acc_std``) of every val/ and test/ metric all folds
    logged; ``folds``: each fold's ``best``, ``metrics`` and ``best_ckpt``. The line:
    ``"5-fold CV: val/acc 0.951 +- 0.021, test/acc 0.944 +- 0.015"`` (the monitor and its test twin).
    """
    monitor = cfg.monitor.metric
    best, best_std = mean_std([run.best for run in results])
    metrics = {}
    for key in sorted(set.intersection(*(set(run.metrics) for run in results))):
        mean, std = mean_std([run.metrics[key] for run in results])
        metrics[f"cv/{_flat(key)}_mean"], metrics[f"cv/{_flat(key)}_std"] = mean, std
    folds = [
        {
            "fold": i,
            "best": runs.json_number(run.best),
            "metrics": {key: runs.json_number(v) for key, v in run.metrics.items()},
            "best_ckpt": str(Path(run.best_ckpt).resolve()) if run.best_ckpt else None,
        }
        for i, run in enumerate(results)
    ]
    record = {
        "status": "ok",
        "monitor": monitor,
        "mode": cfg.monitor.mode,
        "best": runs.json_number(best),
        "best_std": runs.json_number(best_std),
        "cv_folds": len(results),
        "metrics": {key: runs.json_number(v) for key, v in metrics.items()},
        "folds": folds,
        "overrides": runs.hydra_overrides(),
        "best_ckpt": None,  # one per fold, under folds
        "resumed_from": None,
    }
    line = f"{len(results)}-fold CV: {monitor} {best:.3f} +- {best_std:.3f}"
    tested = "test/" + monitor.removeprefix("val/") if monitor.startswith("val/") else "test/acc"
    if f"cv/{_flat(tested)}_mean" in metrics:
        mean, std = metrics[f"cv/{_flat(tested)}_mean"], metrics[f"cv/{_flat(tested)}_std"]
        line += f", {tested} {mean:.3f} +- {std:.3f}"
    return record, line


def _flat(metric: str) -> str:
    """``val/acc`` -> ``val_acc``: a metric's name inside a ``cv/`` key."""
    return metric.replace("/", "_")


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test a checkpoint; the model (and, unless a data group is given, the data) come from it."""
    start = time.perf_counter()
    validate_eval_config(cfg)
    ckpt_path = runs.resolve_ckpt_path(cfg.ckpt_path, cfg.paths.log_dir, cfg.get("train_task_name", "train"))
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
    datamodule = builders.build_datamodule(data_cfg)
    if (datamodule.n_features, datamodule.n_classes) != (hparams["n_features"], hparams["n_classes"]):
        raise ConfigError(
            f"data={data_cfg['name']} has {datamodule.n_features} features and {datamodule.n_classes} classes, "
            f"the checkpoint expects {hparams['n_features']} and {hparams['n_classes']}"
        )
    out_dir = runs.prepare_output_dir(cfg)
    with runs.quiet_lightning_advice():
        datamodule.prepare_data()
        module = MODULES[hparams["loss"]].load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
        trainer = builders.build_trainer(cfg, [], builders.build_loggers(cfg))
        with cpu_threads(cfg.get("threads")):
            trainer.test(module, datamodule=datamodule, verbose=False)
    metrics = {k: v for k, v in runs.floats(trainer.callback_metrics).items() if k.startswith("test/")}
    summary = {
        "status": "ok",
        "ckpt_path": str(Path(ckpt_path).resolve()),
        "metrics": {k: runs.json_number(v) for k, v in metrics.items()},
        "overrides": runs.hydra_overrides(),
        "wall_time_s": time.perf_counter() - start,
    }
    if trainer.is_global_zero:
        write_job_metrics(out_dir, summary)
        runs.print_summary("eval: test metrics", metrics, out_dir, {"checkpoint": summary["ckpt_path"]})
    return metrics


# --- entry points ---------------------------------------------------------------------------------
@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def _train_task(cfg: DictConfig) -> float:
    return run_task(train, cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def _eval_task(cfg: DictConfig) -> None:
    run_task(evaluate, cfg)


def _precheck(config_name: str = "train") -> None:
    """Before Hydra composes: one-line errors for unknown group options, replaced and mistyped keys."""
    import ugmm.conf  # noqa: F401 - registers the generated configs (trainer/lightning)

    sys.argv[1:] = legacy_plus_trainer(sys.argv[1:])
    try:
        check_group_overrides(sys.argv[1:])
        check_plain_keys(sys.argv[1:], config_name)
    except ConfigError as err:
        fail(err)


def train_main() -> None:
    """``ugmm-train`` / ``python train.py [overrides]``."""
    _precheck()
    _train_task()


def eval_main() -> None:
    """``ugmm-eval`` / ``python eval.py ckpt_path=... [overrides]``."""
    _precheck("eval")
    _eval_task()
