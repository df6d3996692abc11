"""Sweep results: one record per job (its ``metrics.json``), aggregated into a summary table.

Every train job writes ``<job output dir>/metrics.json`` (see :func:`write_job_metrics`)::

    {"status": "ok" | "failed" | "diverged" | "interrupted", "monitor": "val/acc", "mode": "max" | "min", "best": 0.93,
     "metrics": {...final metrics...}, "overrides": ["model.width=32", ...], "wall_time_s": 4.2,
     "best_ckpt": "<path or null>", "error": "<one line, failed jobs only>"}

At the end of a multirun, :class:`SweepSummaryCallback` (a Hydra callback registered in ``train.yaml``)
collects these records from every job directory under the sweep dir, writes ``summary.csv`` and
``summary.md`` (sorted by the monitored metric, best first; failed jobs last, with their error) and
prints the table. A job directory without ``metrics.json`` (a job killed before it could write one) is
listed as failed too.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"


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


def write_failed_job(output_dir: str | os.PathLike, exc: BaseException, overrides: list[str], **extra: Any) -> Path:
    """Record a crashed job as ``{"status": "failed", "error": ..., "traceback": ...}``."""
    record = {
        "status": "failed",
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


class SweepSummary:
    """The table of a sweep's jobs, sorted by the monitored metric (best first), failed jobs last.

    Args:
        jobs: the sweep's jobs.
    """

    def __init__(self, jobs: list[JobResult]):
        ok = [j for j in jobs if j.ok]
        failed = [j for j in jobs if not j.ok]
        self.monitor = next((j.monitor for j in ok if j.monitor), None) or next(
            (j.monitor for j in jobs if j.monitor), None
        )
        self.mode = next((j.mode for j in ok if j.mode), "max")
        if self.mode not in ("max", "min"):
            raise ValueError(f"metrics.json mode must be 'max' or 'min', got {self.mode!r}")
        ok.sort(key=lambda j: (-j.best if self.mode == "max" else j.best, j.num or 0))
        failed.sort(key=lambda j: (j.num if j.num is not None else 1 << 30, str(j.job_dir)))
        for j in failed:  # a job that reported "ok" but a NaN/inf objective counts as failed
            if j.status == "ok":
                j.status, j.error = "failed", j.error or f"monitored metric is {j.best}"
        self.jobs = ok + failed
        self.metric_names = sorted({k for j in ok for k in j.metrics})

    @classmethod
    def from_sweep_dir(cls, sweep_dir: str | os.PathLike) -> SweepSummary:
        return cls([read_job(d) for d in find_job_dirs(sweep_dir)])

    @property
    def best(self) -> JobResult | None:
        return self.jobs[0] if self.jobs and self.jobs[0].ok else None

    def swept_keys(self) -> list[str]:
        """Override keys whose value differs between jobs (the sweep's axes), in command-line order."""
        values: dict[str, set[str]] = {}
        counts: dict[str, int] = {}
        for j in self.jobs:
            for key, value in _split(j.overrides).items():
                values.setdefault(key, set()).add(value)
                counts[key] = counts.get(key, 0) + 1
        return [k for k in values if len(values[k]) > 1 or counts[k] < len(self.jobs)]

    def common_overrides(self) -> list[str]:
        """Overrides every job shares (shown once above the table)."""
        swept = set(self.swept_keys())
        first = _split(self.jobs[0].overrides) if self.jobs else {}
        return [f"{k}={v}" for k, v in first.items() if k not in swept]

    def _title(self) -> str:
        n_ok = sum(j.ok for j in self.jobs)
        n_diverged = sum(j.status == "diverged" for j in self.jobs)  # robust (issue 12): NaN loss, stopped
        title = f"Sweep summary: {len(self.jobs)} jobs, {n_ok} ok, {len(self.jobs) - n_ok - n_diverged} failed"
        if n_diverged:
            title += f", {n_diverged} diverged"
        if self.monitor:
            title += f"; sorted by {self.monitor} ({self.mode})"
        return title

    def table(
        self, full: bool, metrics: bool = True, sweep_dir: Path | None = None
    ) -> tuple[list[str], list[list[str]]]:
        """Columns and rows. ``full`` (the CSV): all overrides in one column plus the job dir;
        otherwise one column per swept key. ``metrics``: one column per final metric."""
        swept = self.swept_keys()
        cols = ["rank", "job", "status", f"best {self.monitor}" if self.monitor else "best"]
        cols += ["overrides"] if full else swept
        cols += self.metric_names if metrics else []
        cols += ["wall_time_s"] + (["dir"] if full else []) + ["error"]
        rows = []
        for rank, j in enumerate(self.jobs, 1):
            row = [str(rank) if j.ok else "-", "" if j.num is None else str(j.num), j.status]
            row.append(_fmt(j.best) if j.ok else "")
            if full:
                row.append(" ".join(j.overrides))
            else:
                kv = _split(j.overrides)
                row += [kv.get(k, "") for k in swept]
            row += [_fmt(j.metrics.get(k)) for k in self.metric_names] if metrics else []
            row.append(_fmt(j.wall_time_s, 1))
            if full:
                rel = j.job_dir
                if sweep_dir is not None and j.job_dir.is_relative_to(sweep_dir):
                    rel = j.job_dir.relative_to(sweep_dir)
                row.append(str(rel))
            row.append(j.error)
            rows.append(row)
        return cols, rows

    def to_csv(self, sweep_dir: Path | None = None) -> str:
        """One row per job: all overrides, every final metric, the job dir and the error."""
        cols, rows = self.table(full=True, sweep_dir=sweep_dir)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(cols)
        writer.writerows(rows)
        return buf.getvalue()

    def to_markdown(self) -> str:
        """A Markdown table: one column per swept key, the shared overrides listed once above it."""
        cols, rows = self.table(full=False)
        lines = [f"# {self._title()}", ""]
        common = self.common_overrides()
        if common:
            lines += ["Common overrides: `" + " ".join(common) + "`", ""]
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for row in rows:
            lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in row) + " |")
        return "\n".join(lines) + "\n"

    def write(self, sweep_dir: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``summary.csv`` and ``summary.md`` into ``sweep_dir``; returns their paths."""
        sweep_dir = Path(sweep_dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        csv_path, md_path = sweep_dir / SUMMARY_CSV, sweep_dir / SUMMARY_MD
        csv_path.write_text(self.to_csv(sweep_dir))
        md_path.write_text(self.to_markdown())
        return csv_path, md_path

    def print(self) -> None:
        """Print the table (swept keys, best value, status, error) to the terminal with rich."""
        from rich.console import Console
        from rich.table import Table

        cols, rows = self.table(full=False, metrics=False)
        common = self.common_overrides()
        table = Table(title=self._title(), caption=("common: " + " ".join(common)) if common else None)
        for c in cols:
            table.add_column(c, overflow="fold")
        for row in rows:
            table.add_row(*row, style=None if row[2] == "ok" else "red")
        console = Console()
        if not console.is_terminal:  # a log file or a pipe: no reason to wrap at 80 columns
            console = Console(width=200)
        console.print(table)


def _split(overrides: list[str]) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}`` (keys keep their ``+``/``~`` prefixes)."""
    out = {}
    for o in overrides:
        key, _, value = o.partition("=")
        out[key] = value
    return out


def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None:
        return ""
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


class SweepSummaryCallback(Callback):
    """Hydra callback: records crashed jobs and writes the sweep summary when a multirun ends.

    - ``on_job_end``: ends the job's DDP processes (:func:`ugmm.sweeps.ddp.release_ddp_environment`);
      a job that raised (so Hydra marks it FAILED) and left no ``metrics.json`` gets a
      failed record, so the summary shows its error whichever launcher ran it.
    - ``on_multirun_end``: reads every job under ``hydra.sweep.dir`` and writes/prints the summary.
    """

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        from ugmm.sweeps.ddp import release_ddp_environment

        release_ddp_environment()  # the next job of this process must start its own DDP ranks
        if job_return is None or job_return.status != JobStatus.FAILED:
            return
        if os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0":
            return  # DDP child ranks share rank 0's output dir; only rank 0 writes
        out = OmegaConf.select(config, "hydra.runtime.output_dir")
        if out and not (Path(out) / METRICS_FILE).exists():
            overrides = list(OmegaConf.select(config, "hydra.overrides.task") or [])
            write_failed_job(out, job_return._return_value, overrides)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(OmegaConf.select(config, "hydra.sweep.dir"))
        if not sweep_dir.exists():
            log.warning("sweep dir %s does not exist: no summary", sweep_dir)
            return
        summary = SweepSummary.from_sweep_dir(sweep_dir)
        csv_path, md_path = summary.write(sweep_dir)
        summary.print()
        log.info("sweep summary written to %s and %s", csv_path, md_path)
