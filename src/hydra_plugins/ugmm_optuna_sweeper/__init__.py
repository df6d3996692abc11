"""A small Hydra sweeper on optuna's ask/tell API (``hydra/sweeper=ugmm_optuna``).

Written because the published ``hydra-optuna-sweeper`` 1.3.0 pins ``optuna<3.0`` (installing it
downgrades optuna to 2.10) and is built on distributions optuna deprecated in 3.0.
"""

__version__ = "0.1.0"
