"""Sweeps and scale: multirun summaries, failure isolation, W&B per job, DDP under Hydra.

- :mod:`ugmm.sweeps.summary`: each job's ``metrics.json``; :class:`SweepSummaryCallback` (a Hydra
  callback) writes ``summary.csv``/``summary.md`` into the sweep dir when a multirun ends.
- :mod:`ugmm.sweeps.wandb_logger`: :class:`HydraWandbLogger` (one run per job, grouped by sweep,
  offline without credentials) and :func:`finish_wandb`; :mod:`ugmm.sweeps.wandb_records` reads an
  offline run's ``.wandb`` file.
- :mod:`ugmm.sweeps.ddp`: :class:`HydraDDPStrategy`, DDP whose child ranks re-run only the current job.
- The optuna sweeper is a Hydra plugin: ``hydra_plugins.ugmm_optuna_sweeper`` (``hparams_search=optuna``).
"""

from ugmm.sweeps.summary import (
    JobResult,
    SweepSummary,
    SweepSummaryCallback,
    read_job,
    write_failed_job,
    write_job_metrics,
)

__all__ = [
    "JobResult",
    "SweepSummary",
    "SweepSummaryCallback",
    "read_job",
    "write_failed_job",
    "write_job_metrics",
]
