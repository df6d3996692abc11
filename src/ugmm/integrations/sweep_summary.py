"""The multirun summary: at the end of ``-m``, every job's record in ``summary.csv``/``summary.md``.

:class:`SweepSummaryCallback` (a Hydra callback registered in ``train.yaml``) collects the records
(:mod:`ugmm.records`) from every job directory under the sweep dir, writes ``summary.csv`` and
``summary.md`` (sorted by the monitored metric, best first; failed jobs last, with their error) and
prints the table.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ugmm.records import METRICS_FILE, JobResult, find_job_dirs, read_job, write_failed_job

log = logging.getLogger(__name__)

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"


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

    - ``on_job_end``: ends the job's DDP processes (:func:`ugmm.integrations.ddp.release_ddp_environment`);
      a job that raised (so Hydra marks it FAILED) and left no ``metrics.json`` gets a
      failed record, so the summary shows its error whichever launcher ran it.
    - ``on_multirun_end``: reads every job under ``hydra.sweep.dir`` and writes/prints the summary.
    """

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        from ugmm.integrations.ddp import release_ddp_environment

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
