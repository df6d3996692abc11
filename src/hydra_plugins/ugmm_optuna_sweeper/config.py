"""Structured config of the ``ugmm_optuna`` sweeper, registered as ``hydra/sweeper=ugmm_optuna``."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class TPESamplerConf:
    """optuna's TPE sampler, seeded so that a search is reproducible."""

    _target_: str = "optuna.samplers.TPESampler"
    seed: int | None = 42
    n_startup_trials: int = 10


@dataclass
class UgmmOptunaSweeperConf:
    """Options of :class:`hydra_plugins.ugmm_optuna_sweeper.sweeper.UgmmOptunaSweeper`.

    ``direction`` accepts ``max``/``min`` (the ``mode`` of the monitored metric) as well as optuna's
    ``maximize``/``minimize``. ``params`` maps config keys to Hydra sweep expressions:
    ``choice(a,b)`` (categorical), ``range(1,4)`` (discrete, stop exclusive), ``interval(0.0,0.5)``
    (continuous; ``tag(log, interval(1e-4,1e-1))`` for a log scale, ``tag(int, interval(4,64))`` for
    integers). Plain values are fixed for every trial.
    """

    _target_: str = "hydra_plugins.ugmm_optuna_sweeper.sweeper.UgmmOptunaSweeper"
    sampler: Any = field(default_factory=TPESamplerConf)
    direction: str = "maximize"
    study_name: str | None = None
    storage: str | None = None
    n_trials: int = 20
    n_jobs: int = 1
    params: dict[str, str] | None = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="ugmm_optuna", node=UgmmOptunaSweeperConf, provider="ugmm_optuna_sweeper"
)
