"""Hydra sweeper driving an optuna study with ask/tell (TPE by default, seeded).

Each batch asks ``n_jobs`` trials, launches them with the configured launcher (basic, joblib,
submitit...), and tells optuna each job's return value: the monitored metric that ``train(cfg)``
returns. A job that failed (its task raised, or it returned NaN/inf) is told as a FAILED trial and the
search goes on.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

_DIRECTIONS = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}


def normalize_direction(direction: str) -> str:
    """``max``/``maximize`` -> ``maximize``; ``min``/``minimize`` -> ``minimize``."""
    key = str(direction).strip().lower()
    if key not in _DIRECTIONS:
        raise ValueError(f"optuna direction must be one of max, min, maximize, minimize; got {direction!r}")
    return _DIRECTIONS[key]


def _primitive(value: Any) -> Any:
    """A categorical choice optuna can store (None, bool, int, float, str)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return Override._get_value_element_as_str(value)


def override_to_distribution(override: Override) -> Any:
    """The optuna distribution of one sweep override, or ``None`` for a fixed value."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not override.is_sweep_override():
        return None
    value = override.value()
    key = override.get_key_element()
    if override.is_choice_sweep():
        choices = [_primitive(v) for v in override.sweep_iterator(transformer=Transformer.identity)]
        return CategoricalDistribution(choices)
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        values = list(value.range())
        if not values:
            raise ValueError(f"{key}: empty range {override.input_line!r}")
        if all(isinstance(v, int) for v in values):
            return IntDistribution(values[0], values[-1], step=int(value.step))
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(value.step))
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        log_scale = "log" in value.tags
        if "int" in value.tags:  # Hydra parses interval ends as floats: tag(int, ...) asks for integers
            return IntDistribution(int(value.start), int(value.end), log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    if isinstance(value, ChoiceSweep) or override.is_discrete_sweep():  # glob and simple lists
        return CategoricalDistribution([_primitive(v) for v in override.sweep_iterator()])
    raise ValueError(f"{key}: sweep type {override.value_type} is not supported by the optuna sweeper")


class UgmmOptunaSweeper(Sweeper):
    """Sweeper that asks optuna for parameters and tells it each job's returned objective.

    Args:
        sampler: an optuna sampler, or its config with ``_target_``; default in the config: seeded TPE.
        direction: ``max``/``maximize`` or ``min``/``minimize``.
        study_name: name of the study (default: the Hydra job name).
        storage: optuna storage URL (e.g. ``sqlite:///study.db``) to persist and resume a study.
        n_trials: total number of trials.
        n_jobs: trials launched per batch (in parallel with a parallel launcher).
        params: search space, ``{key: sweep expression}``; command-line sweeps are added to it.
    """

    def __init__(
        self,
        sampler: Any,
        direction: str,
        study_name: str | None,
        storage: str | None,
        n_trials: int,
        n_jobs: int,
        params: dict[str, str] | None,
    ) -> None:
        super().__init__()
        if n_trials < 1 or n_jobs < 1:
            raise ValueError(f"n_trials and n_jobs must be >= 1, got {n_trials} and {n_jobs}")
        self.sampler_conf = sampler
        self.direction = normalize_direction(direction)
        self.study_name = study_name
        self.storage = storage
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.params = dict(params or {})
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _search_space(self, arguments: list[str]) -> tuple[dict[str, Any], list[str]]:
        """Distributions of the swept keys, and the fixed overrides every trial gets."""
        assert self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        lines = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        overrides: dict[str, Override] = {}
        for o in parser.parse_overrides(lines):  # a command-line value replaces the config's
            overrides[o.get_key_element()] = o
        space, fixed = {}, []
        for key, o in overrides.items():
            dist = override_to_distribution(o)
            if dist is None:
                fixed.append(f"{key}={o.get_value_element_as_str()}")
            else:
                space[key] = dist
        if not space:
            raise ValueError("the optuna sweeper needs at least one swept parameter (hydra.sweeper.params)")
        return space, fixed

    def sweep(self, arguments: list[str]) -> Any:
        import optuna

        assert self.config is not None and self.launcher is not None
        space, fixed = self._search_space(arguments)
        sampler = self.sampler_conf  # Hydra instantiates the nested `_target_` before calling __init__
        if isinstance(sampler, dict | DictConfig):
            sampler = instantiate(sampler)
        study = optuna.create_study(
            study_name=self.study_name or self.config.hydra.job.name,
            storage=self.storage,
            sampler=sampler,
            direction=self.direction,
            load_if_exists=self.storage is not None,
        )
        log.info(
            "optuna study %s: %s, %s, %d trials, %d per batch",
            study.study_name,
            type(study.sampler).__name__,
            self.direction,
            self.n_trials,
            self.n_jobs,
        )
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        returns, done = [], 0
        while done < self.n_trials:
            n = min(self.n_jobs, self.n_trials - done)
            trials = [study.ask(space) for _ in range(n)]
            batch = [
                fixed + [f"{k}={Override._get_value_element_as_str(v)}" for k, v in t.params.items()] for t in trials
            ]
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=done)
            for trial, ret in zip(trials, results, strict=True):
                value = self._objective(ret)
                if value is None:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(trial, value)
            done += n
            returns.append(results)

        self._report(study, sweep_dir)
        return returns

    @staticmethod
    def _objective(ret: Any) -> float | None:
        """The job's finite float objective, or ``None`` when it failed or returned NaN/inf."""
        if ret.status != JobStatus.COMPLETED:
            log.warning("trial %s failed: %s", ret.overrides, ret._return_value)
            return None
        try:
            value = float(ret.return_value)
        except (TypeError, ValueError):
            log.warning("trial %s returned %r, not a number: told as failed", ret.overrides, ret.return_value)
            return None
        if not math.isfinite(value):
            log.warning("trial %s returned %s: told as failed", ret.overrides, value)
            return None
        return value

    def _report(self, study: Any, sweep_dir: Path) -> None:
        import optuna

        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        result: dict[str, Any] = {
            "name": "optuna",
            "direction": self.direction,
            "n_trials": len(study.trials),
            "n_complete": len(complete),
        }
        if complete:
            result["best_params"] = study.best_params
            result["best_value"] = study.best_value
            log.info("best parameters: %s", study.best_params)
            log.info("best value: %s", study.best_value)
        else:
            log.warning("no trial completed")
        OmegaConf.save(OmegaConf.create(result), sweep_dir / "optimization_results.yaml")
