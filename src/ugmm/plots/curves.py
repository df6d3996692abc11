"""Figures from run logs: training curves (Lightning CSVLogger ``metrics.csv``) and sweep summaries."""

from __future__ import annotations

import csv
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from ugmm.plots._figure import new_figure

_STAGE = re.compile(r"^(train|val|valid|validation|test)[/_]")
_REDUCTION = re.compile(r"_(step|epoch)$")
_INDEX_COLUMNS = ("epoch", "step")


def load_csv_rows(source) -> list[dict]:
    """Rows of a CSV as dicts: ``source`` is a path, a pandas DataFrame, or already a list of dicts."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no such CSV file: {path}")
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    if hasattr(source, "to_dict"):  # pandas DataFrame, without importing pandas
        return source.to_dict("records")
    if isinstance(source, Iterable):
        return [dict(r) for r in source]
    raise TypeError(f"expected a CSV path, a DataFrame or a list of dicts, got {type(source).__name__}")


def _number(value) -> float | None:
    """A float, or None for blanks/NaN/non-numbers (CSVLogger leaves cells of other metrics empty)."""
    if value is None or value == "":
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def _metric_kind(name: str) -> str:
    """``val/acc`` and ``train/acc_epoch`` share a panel: stage prefix and step/epoch suffix removed."""
    return _REDUCTION.sub("", _STAGE.sub("", name))


def plot_training_curves(source, metrics: Sequence[str] | None = None, x: str = "step", title: str | None = None):
    """Training curves from a Lightning CSVLogger ``metrics.csv`` (or its rows).

    Metrics of the same kind (``train/loss`` and ``val/loss``) share a panel. Each metric is drawn at
    the rows where it was logged: per step or per epoch, never averaged.

    Args:
        source: path to ``metrics.csv``, a DataFrame, or a list of row dicts.
        metrics: column names to draw (default: every column but ``epoch``/``step``).
        x: ``"step"`` or ``"epoch"``.
        title: figure title.
    """
    rows = load_csv_rows(source)
    if not rows:
        raise ValueError("no rows to plot: the metrics file is empty")
    columns = list(rows[0].keys())
    if x not in columns:
        raise ValueError(f"x column {x!r} not in the metrics (columns: {', '.join(columns)})")
    if metrics is None:
        metrics = [c for c in columns if c not in _INDEX_COLUMNS]
    missing = [m for m in metrics if m not in columns]
    if missing:
        raise ValueError(f"metrics not in the file: {', '.join(missing)} (columns: {', '.join(columns)})")
    series = {}
    for m in metrics:
        pts = [(_number(r.get(x)), _number(r.get(m))) for r in rows]
        pts = [(a, b) for a, b in pts if a is not None and b is not None]
        if pts:
            series[m] = pts
    if not series:
        raise ValueError(f"none of the metrics {list(metrics)} has a logged value")
    panels: dict[str, list[str]] = defaultdict(list)
    for m in series:
        panels[_metric_kind(m)].append(m)
    fig, axes = new_figure(len(panels), ncols=min(3, len(panels)))
    for ax, (kind, names) in zip(axes, panels.items()):
        for m in names:
            xs, ys = zip(*series[m])
            ax.plot(xs, ys, marker="o" if len(xs) <= 60 else None, ms=3, lw=1.2, label=m)
        ax.set_title(kind)
        ax.set_xlabel(x)
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def _default_metric(columns: Sequence[str]) -> str:
    for name in ("best", "value", "objective", "metric"):
        if name in columns:
            return name
    best = [c for c in columns if c.startswith("best ")]  # summary.csv: "best val/acc"
    if best:
        return best[0]
    raise ValueError(f"say which column to plot (y=...); columns: {', '.join(columns)}")


def _expand_overrides(rows: list[dict]) -> list[dict]:
    """Give every ``key=value`` of a row's ``overrides`` cell a column of its own (``+``/``~`` dropped).

    The sweep summary CSV (:mod:`ugmm.integrations.sweep_summary`) keeps a job's overrides in one column; a
    column that already exists wins over an override of the same name.
    """
    out = []
    for row in rows:
        row = dict(row)
        cell = row.get("overrides")
        tokens = cell if isinstance(cell, list) else str(cell or "").split()
        for token in tokens:
            key, sep, value = str(token).partition("=")
            key = key.lstrip("+~")
            if sep and key not in row:
                row[key] = value
        out.append(row)
    return out


def plot_sweep_summary(
    source,
    x: str | Sequence[str],
    y: str | None = None,
    hue: str | None = None,
    title: str | None = None,
):
    """A sweep's metric against one or more hyperparameters (one panel per ``x`` column).

    Each run is a dot; a line joins the mean per value with +-1 std error bars (seeds or other
    hyperparameters averaged out). Numeric columns get a numeric axis, others (``loss``) a
    categorical one; ``hue`` splits runs into coloured groups (e.g. ``loss``).

    Args:
        source: path to the sweep's ``summary.csv``, a DataFrame, or a list of row dicts. Keys of an
            ``overrides`` column (``model.width=32 loss=nll``) count as columns; rows whose
            ``status`` is not ``ok`` are skipped.
        x: column name(s) of the hyperparameters, e.g. ``"model.width"`` or ``["model.width", "loss"]``.
        y: the metric column (default: ``best``/``value``, or the summary's ``best <monitor>``).
        hue: optional grouping column.
        title: figure title.
    """
    rows = _expand_overrides(load_csv_rows(source))
    if not rows:
        raise ValueError("no rows to plot: the sweep summary is empty")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    xs = [x] if isinstance(x, str) else list(x)
    y = y or _default_metric(columns)
    for col in [*xs, y, *([hue] if hue else [])]:
        if col not in columns:
            raise ValueError(f"column {col!r} not in the sweep summary (columns: {', '.join(columns)})")
    # failed runs have no metric (or say so in a status column)
    rows = [r for r in rows if _number(r.get(y)) is not None and r.get("status", "ok") == "ok"]
    if not rows:
        raise ValueError(f"no run has a numeric {y!r}")
    fig, axes = new_figure(len(xs), ncols=min(3, len(xs)))
    groups = sorted({str(r.get(hue, "")) for r in rows}) if hue else [None]
    for ax, col in zip(axes, xs):
        numeric = all(_number(r.get(col)) is not None for r in rows)
        levels = sorted({_number(r[col]) if numeric else str(r.get(col, "")) for r in rows})
        pos = {v: (v if numeric else i) for i, v in enumerate(levels)}
        for g in groups:
            sub = [r for r in rows if hue is None or str(r.get(hue, "")) == g]
            by_level: dict = defaultdict(list)
            for r in sub:
                by_level[_number(r[col]) if numeric else str(r.get(col, ""))].append(_number(r[y]))
            present = [v for v in levels if v in by_level]
            means = [sum(by_level[v]) / len(by_level[v]) for v in present]
            stds = [_std(by_level[v]) for v in present]
            label = f"{hue}={g}" if hue else "mean +- std"
            line = ax.errorbar([pos[v] for v in present], means, yerr=stds, marker="s", capsize=3, label=label)
            dots = [(pos[v], val) for v in present for val in by_level[v]]
            ax.scatter(*zip(*dots), s=12, alpha=0.5, color=line[0].get_color())
        if not numeric:
            ax.set_xticks(range(len(levels)), [str(v) for v in levels])
        ax.set_xlabel(col)
        ax.set_ylabel(y)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title or f"{y} over {len(rows)} runs")
    return fig


def _std(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
