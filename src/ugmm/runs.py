"""A run's bookkeeping: its directory, the checkpoint it resumes, its summary, Hydra's runtime facts."""

from __future__ import annotations

import contextlib
import math
import shutil
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import torch
from omegaconf import DictConfig, open_dict

from ugmm.config import ConfigError

# Lightning's advice that does not apply here: the data is in memory, workers would only copy it
QUIET_WARNINGS = (
    ".*does not have many workers.*",
    ".*smaller than the logging interval.*",
    ".*Checkpoint directory .* exists and is not empty.*",
    ".*treespec, LeafSpec.*",  # Lightning's own use of a deprecated torch API
)


@contextlib.contextmanager
def quiet_lightning_advice() -> Iterator[None]:
    """Silence :data:`QUIET_WARNINGS` inside the block only (training and evaluation), not on import."""
    with warnings.catch_warnings():
        for pattern in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        yield


def prepare_output_dir(cfg: DictConfig) -> Path:
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


def resolve_ckpt_path(ckpt_path: str | None, log_dir: str | Path, task_name: str) -> str | None:
    """``ckpt_path`` as a file: ``last`` is the latest run's ``last.ckpt``; a missing file is a user error."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        return str(find_last_checkpoint(log_dir, task_name))
    if not Path(ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={ckpt_path} does not exist (give a .ckpt file, last, or null)")
    return str(ckpt_path)


def hydra_overrides() -> list[str]:
    """The job's command-line overrides (empty without Hydra's runtime)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [str(o) for o in HydraConfig.get().overrides.task]


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def discard_run_dir() -> None:
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


def floats(metrics: dict) -> dict[str, float]:
    """Logged metrics (tensors or numbers) as sorted floats."""
    return dict(sorted((k, float(v.item() if isinstance(v, torch.Tensor) else v)) for k, v in metrics.items()))


def json_number(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def print_summary(title: str, metrics: dict[str, float], out_dir: Path, extra: dict[str, str]) -> None:
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
