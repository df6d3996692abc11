"""Config nodes as plain Python containers: what checkpoints, loggers and ``metrics.json`` store."""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def plain(cfg: Any) -> Any:
    """An OmegaConf node (or anything) as plain dicts, lists and scalars, interpolations resolved.

    Checkpoints keep their hyperparameters this way, so they load with ``torch.load(weights_only=True)``.
    """
    if isinstance(cfg, DictConfig | ListConfig):
        return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    if isinstance(cfg, Mapping):
        return {k: plain(v) for k, v in cfg.items()}
    if isinstance(cfg, list | tuple):
        return [plain(v) for v in cfg]
    if isinstance(cfg, Enum):
        return cfg.name
    return cfg
