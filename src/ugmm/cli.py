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
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import hydra
import torch
from lightning.pytorch import seed_everything
from omegaconf import DictConfig, OmegaConf

from ugmm import builders, runs
from ugmm.config import (
    ConfigError,
    check_group_overrides,
    legacy_plus_trainer,
    validate_eval_config,
    validate_train_config,
)
from ugmm.divergence import DivergenceGuard
from ugmm.integrations.wandb_logger import finish_wandb
from ugmm.modules import MODULES
from ugmm.overrides import check_plain_keys
from ugmm.records import write_job_metrics
from ugmm.resume import check_resumable, requeued_checkpoint, resume_callbacks
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


def train(cfg: DictConfig) -> float:
    """Train (and test) one model from a composed config; returns the best monitored metric.

    Validates the config before any data loads (raising :class:`~ugmm.config.ConfigError`), fits with
    checkpoints under ``paths.output_dir``, tests the best checkpoint and writes ``metrics.json``.
    """
    start = time.perf_counter()
    validate_train_config(cfg)
    # before this run's dir exists, so a missing checkpoint leaves nothing behind
    ckpt_path = runs.resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.log_dir, cfg.task_name)
    if ckpt_path is not None:  # a finished run says so and how to extend it
        check_resumable(ckpt_path, cfg.trainer.get("max_epochs"), cfg.trainer.get("max_steps"))
    datamodule = builders.build_datamodule(cfg.data)
    out_dir = runs.prepare_output_dir(cfg)
    if ckpt_path is None and (requeued := requeued_checkpoint(out_dir)) is not None:
        ckpt_path = str(requeued)  # a requeued SLURM job resumes its own last.ckpt
    if cfg.get("seed") is not None:
        seed_everything(cfg.seed, workers=True, verbose=False)
    with runs.quiet_lightning_advice():
        datamodule.prepare_data()  # missing data fails here, in one line, before anything is built
        module = builders.build_module(cfg, datamodule)
        loggers = builders.build_loggers(cfg)
        callbacks = builders.build_callbacks(cfg, has_logger=bool(loggers))
        callbacks += [DivergenceGuard(), *resume_callbacks()]  # NaN loss stops at once; exact resume, preemption
        trainer = builders.build_trainer(cfg, callbacks, loggers)
        for logger in loggers:
            logger.log_hyperparams({"cfg": OmegaConf.to_container(cfg, resolve=True)})
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        metrics = runs.floats(trainer.callback_metrics)
        monitor, mode = cfg.monitor.metric, cfg.monitor.mode
        best, best_ckpt = _best(trainer, metrics, monitor)
        if cfg.get("test"):
            trainer.test(module, datamodule=datamodule, ckpt_path=best_ckpt, weights_only=True, verbose=False)
            metrics.update(runs.floats(trainer.callback_metrics))
    metrics = {k: v for k, v in metrics.items() if k.startswith(("val/", "test/"))}
    summary = {
        "status": "ok",
        "monitor": monitor,
        "mode": mode,
        "best": runs.json_number(best),
        "metrics": {k: runs.json_number(v) for k, v in metrics.items()},
        "overrides": runs.hydra_overrides(),
        "wall_time_s": time.perf_counter() - start,
        "best_ckpt": str(Path(best_ckpt).resolve()) if best_ckpt else None,
        # robust (issue 12): a resumed run links the run it continues (its own csv holds the new epochs)
        "resumed_from": str(Path(ckpt_path).resolve()) if ckpt_path else None,
    }
    if trainer.is_global_zero:
        write_job_metrics(out_dir, summary)
        extra = {"best " + monitor: f"{best:.4f}"}
        if best_ckpt:
            extra["best checkpoint"] = summary["best_ckpt"]
        runs.print_summary(f"{cfg.task_name}: final metrics", metrics, out_dir, extra)
    # one W&B run per job: finish it here, with the final metrics as its summary
    finish_wandb(
        loggers, summary={f"best/{monitor}": summary["best"], **summary["metrics"]}, best_ckpt=summary["best_ckpt"]
    )
    return best


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
