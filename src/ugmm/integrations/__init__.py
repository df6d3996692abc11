"""Glue to the tools around training: Hydra multirun, DDP, Weights & Biases (optuna: a Hydra plugin).

- :mod:`ugmm.integrations.ddp`: :class:`HydraDDPStrategy`, DDP whose child ranks re-run only the
  current job, and :func:`release_ddp_environment`.
- :mod:`ugmm.integrations.wandb_logger`: :class:`HydraWandbLogger` (one run per job, grouped by sweep,
  offline without credentials) and :func:`finish_wandb`; :mod:`ugmm.integrations.wandb_offline` reads
  an offline run's ``.wandb`` file.
- :mod:`ugmm.integrations.sweep_summary`: :class:`SweepSummaryCallback` (a Hydra callback) writes
  ``summary.csv``/``summary.md`` into the sweep dir when a multirun ends.
- The optuna sweeper is a Hydra plugin and lives where Hydra finds plugins:
  ``hydra_plugins.ugmm_optuna_sweeper`` (``hparams_search=optuna``).

Nothing here is imported by ``ugmm.nn``, ``ugmm.modules`` or ``ugmm.data``.
"""
