"""The learned mixture of a uGMM neuron: its weighted component curves and the mixture density."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ugmm.ops.reference import LOG_SQRT_2PI
from ugmm.plots._figure import new_figure


def mixture_params(layer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(means, stds, log_weights)`` of a uGMM layer, detached float64 CPU copies, each ``(n_nodes, n_nodes_in)``."""
    try:
        means, stds, log_w = layer.means, layer.stds, layer.log_weights
    except AttributeError as err:
        raise TypeError("expected a uGMMLayer (anything with means, stds and log_weights)") from err
    return means.detach().double().cpu(), stds.detach().double().cpu(), log_w.detach().double().cpu()


def neuron_density(layer, neuron: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted component densities and the mixture density of one neuron, evaluated at points ``x``.

    A neuron's component k lives on input k; drawing all of them over one shared axis shows the
    neuron's univariate mixture ``p(x) = sum_k pi_k N(x; mu_k, sigma_k)``, as in the paper.

    Args:
        layer: a :class:`~ugmm.nn.uGMMLayer` (read through ``means``, ``stds``, ``log_weights``).
        neuron: index j of the neuron.
        x: points, shape (P,).

    Returns:
        ``components`` (n_nodes_in, P): ``pi_k N(x; mu_k, sigma_k)``; ``mixture`` (P,): their sum.
    """
    means, stds, log_w = mixture_params(layer)
    if not -means.shape[0] <= neuron < means.shape[0]:
        raise ValueError(f"neuron {neuron} out of range for a layer of {means.shape[0]} neurons")
    mu, sd, lw = means[neuron, :, None], stds[neuron, :, None], log_w[neuron, :, None]
    z = (x.double().flatten()[None, :] - mu) / sd
    log_comp = lw - sd.log() - LOG_SQRT_2PI - 0.5 * z * z  # (K, P)
    return log_comp.exp(), torch.logsumexp(log_comp, dim=0).exp()


def plot_neuron_densities(
    layer,
    neurons: Sequence[int] = (0, 1, 2, 3),
    top_k: int = 8,
    x_range: tuple[float, float] | None = None,
    n_points: int = 600,
    log_scale: bool = False,
    title: str | None = None,
):
    """One panel per chosen neuron: its ``top_k`` heaviest weighted components and the full mixture.

    Args:
        layer: a :class:`~ugmm.nn.uGMMLayer`.
        neurons: neuron indices to draw.
        top_k: components drawn individually (largest mixing weight first); the mixture curve
            always sums all of them.
        x_range: shared x-axis limits; by default each panel spans mu +- 3.5 sigma of the
            components holding 99% of the neuron's weight.
        n_points: grid resolution.
        log_scale: log density axis (reveals light components next to a spike).
        title: figure title.

    Returns:
        the Figure.
    """
    neurons = [int(j) for j in neurons]
    if not neurons:
        raise ValueError("choose at least one neuron to plot")
    if int(top_k) < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    means, stds, log_w = mixture_params(layer)
    fig, axes = new_figure(len(neurons), ncols=min(4, len(neurons)))
    for ax, j in zip(axes, neurons):
        if not -means.shape[0] <= j < means.shape[0]:
            raise ValueError(f"neuron {j} out of range for a layer of {means.shape[0]} neurons")
        k = min(int(top_k), means.shape[1])
        top = torch.argsort(log_w[j], descending=True)[: max(k, 1)]
        if x_range is None:
            # span the components that carry 99% of the neuron's weight, each over mu +- 3.5 sigma
            order = torch.argsort(log_w[j], descending=True)
            mass = log_w[j, order].exp().cumsum(0)
            heavy = order[: int((mass < 0.99).sum().item()) + 1]
            lo = (means[j, heavy] - 3.5 * stds[j, heavy]).min().item()
            hi = (means[j, heavy] + 3.5 * stds[j, heavy]).max().item()
        else:
            lo, hi = x_range
        grid = torch.linspace(lo, hi, n_points, dtype=torch.float64)
        # add each drawn component's own centre so narrow spikes are not missed by the grid
        grid = torch.cat([grid, means[j, top].clamp(lo, hi)]).sort().values
        comps, mix = neuron_density(layer, j, grid)
        for c in top[:k].tolist():
            w = log_w[j, c].exp().item()
            ax.plot(grid, comps[c], lw=1, alpha=0.8, label=f"in {c}: pi={w:.3g}")
        ax.plot(grid, mix, color="black", lw=2, label="mixture")
        ax.set_title(f"neuron {j}")
        ax.set_xlabel("input value")
        ax.set_ylabel("density")
        if log_scale:
            ax.set_yscale("log")
            ax.set_ylim(bottom=max(mix.max().item() * 1e-6, 1e-300))
        ax.legend(fontsize="x-small", loc="upper right")
    if title:
        fig.suptitle(title)
    return fig
