"""A pyplot-free Figure on the Agg canvas, so plotting works headless and leaves no global state."""

from __future__ import annotations

import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(n_panels: int = 1, ncols: int | None = None, panel_size=(4.0, 3.2)):
    """A Figure with ``n_panels`` axes in a grid; returns ``(fig, axes)`` with ``axes`` a flat list."""
    if n_panels < 1:
        raise ValueError(f"a figure needs at least one panel, got {n_panels}")
    ncols = min(n_panels, ncols or 4)
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(n_panels)]
    return fig, axes
