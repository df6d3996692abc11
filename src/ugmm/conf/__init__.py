"""The packaged Hydra configs; importing this package registers the generated ones (``trainer/lightning``)."""

from ugmm.config import register_configs

register_configs()
