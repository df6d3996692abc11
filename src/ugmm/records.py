"""Run records: every job's ``metrics.json``, written atomically, and read back.

Every train job writes ``<job output dir>/metrics.json`` (see :func:`write_job_metrics`)::

    {"status": "ok" | "failed", "monitor": "val/acc", "mode": "max" | "min", "best": 0.93,
     "metrics": {...final metrics...}, "overrides": ["model.width=32", ...], "wall_time_s": 4.2,
     "best_ckpt": "<path or null>", "error": "<one line, failed jobs only>"}

``status`` is ``"ok"``, ``"failed"`` or another word a task wrapper chooses (``"diverged"``); the
multirun summary (:mod:`ugmm.integrations.sweep_summary`) reads these records. A job directory without
``metrics.json`` (a job killed before it could write one) reads as failed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


def one_line_error(exc: BaseException) -> str:
    """``"ValueError: bad width"``: the exception's type and the first line of its message.

    A wrapping exception (Hydra's ``InstantiationException`` says only "Error in call to target
    ...") is followed by its cause: ``"InstantiationException: ... <- ValueError: Precision ..."``.
    """
    msg = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {msg[0]}" if msg else type(exc).__name__
    cause = exc.__cause__
    if cause is not None and cause is not exc:
        line += f" <- {one_line_error(cause)}"
    return line


def write_job_metrics(output_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write ``record`` to ``<output_dir>/metrics.json`` atomically (a reader never sees half a file)."""
    path = Path(output_dir) / METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=_json_default, allow_nan=True) + "\n")
    os.replace(tmp, path)
    return path


def write_failed_job(
    output_dir: str | os.PathLike, exc: BaseException, overrides: list[str], status: str = "failed", **extra: Any
) -> Path:
    """Record a job that raised as ``{"status": status, "error": ..., "traceback": ...}``."""
    record = {
        "status": status,
        "error": one_line_error(exc),
        "traceback": "".join(traceback.format_exception(exc))[-4000:],
        "overrides": list(overrides),
        **extra,
    }
    return write_job_metrics(output_dir, record)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # tensors and numpy scalars
        return obj.item()
    return str(obj)


@dataclass
class JobResult:
    """One job of a sweep, as read from its output directory."""

    job_dir: Path
    num: int | None
    status: str
    overrides: list[str]
    best: float | None = None
    monitor: str | None = None
    mode: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    wall_time_s: float | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.best is not None and math.isfinite(self.best)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for a single value) of runs' or folds' values."""
    if not values:
        raise ValueError("mean_std of no values")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _read_hydra_job(job_dir: Path) -> tuple[int | None, list[str]]:
    """Job number and task overrides from ``<job_dir>/.hydra/`` (written by Hydra before the task runs)."""
    num, overrides = None, []
    hydra_yaml = job_dir / ".hydra" / "hydra.yaml"
    if hydra_yaml.exists():
        try:
            hcfg = OmegaConf.load(hydra_yaml).hydra
            num = OmegaConf.select(hcfg, "job.num")
            overrides = list(OmegaConf.select(hcfg, "overrides.task") or [])
        except Exception as exc:  # a half-written file must not break the summary
            log.warning("could not read %s: %s", hydra_yaml, exc)
    return num, overrides


def read_job(job_dir: str | os.PathLike) -> JobResult:
    """Read one job directory; a missing or unreadable ``metrics.json`` makes it a failed job."""
    job_dir = Path(job_dir)
    num, overrides = _read_hydra_job(job_dir)
    path = job_dir / METRICS_FILE
    if not path.exists():
        return JobResult(job_dir, num, "failed", overrides, error="no metrics.json (the job died before finishing)")
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return JobResult(job_dir, num, "failed", overrides, error=f"unreadable metrics.json: {exc}")
    best = rec.get("best")
    return JobResult(
        job_dir=job_dir,
        num=num,
        status=str(rec.get("status", "failed")),
        overrides=list(rec.get("overrides") or overrides),
        best=float(best) if isinstance(best, int | float) else None,
        monitor=rec.get("monitor"),
        mode=rec.get("mode"),
        metrics={k: v for k, v in (rec.get("metrics") or {}).items() if isinstance(v, int | float)},
        wall_time_s=rec.get("wall_time_s"),
        error=str(rec.get("error") or ""),
    )


def find_job_dirs(sweep_dir: str | os.PathLike) -> list[Path]:
    """Every job directory under ``sweep_dir``: those with a ``.hydra/hydra.yaml`` or a ``metrics.json``."""
    sweep_dir = Path(sweep_dir)
    dirs = {p.parent.parent for p in sweep_dir.rglob(".hydra/hydra.yaml")}
    dirs |= {p.parent for p in sweep_dir.rglob(METRICS_FILE)}
    dirs.discard(sweep_dir)  # the multirun's own .hydra (Hydra writes none today, but be safe)
    return sorted(dirs)
