"""Generative use of a uGMM network: the joint log-density and MAP/MPE over one discrete variable.

A density model is a :class:`~ugmm.nn.uGMMNet` with one output node over the joint of the features
and a discrete variable (the class label, appended as its index in float). Classification is MAP
inference: evaluate ``log p(x, y=s)`` for every state s and take the argmax. Inference always uses
the full mixtures (no component dropout).
"""

from __future__ import annotations

import torch

from ugmm.nn.layer import uGMMLayer
from ugmm.nn.network import uGMMNet
from ugmm.ops import mixture_loglik
from ugmm.ops.reference import LOG_SQRT_2PI


def _check_density_net(net: uGMMNet) -> None:
    if not isinstance(net.layers[0], uGMMLayer) or net.layers[-1].n_nodes != 1:
        raise ValueError("a density model needs a uGMMNet whose last layer has exactly one output node")


def log_joint(net: uGMMNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``log p(x, y)``, shape (B,), for features ``x`` (B, n_inputs - 1) and labels ``y`` (B,)."""
    _check_density_net(net)
    return net(torch.cat([x.flatten(1), y.to(x.dtype).unsqueeze(1)], dim=1)).squeeze(1)


def log_joint_all(net: uGMMNet, x: torch.Tensor, var_index: int, states: torch.Tensor) -> torch.Tensor:
    """``log p(x with x[:, var_index] = s)`` for every state s, shape (S, B), in one batched call.

    ``x`` is (B, n_inputs) including the variable's column (its value is ignored). The first layer
    reduces the N-1 components that do not depend on the variable once; each candidate state then
    only adds its own component: ``y_s = logaddexp(partial, log pi_v + log N(s; mu_v, sigma_v))``.
    """
    _check_density_net(net)
    first, rest = net.layers[0], net.layers[1:]
    x = x.flatten(1)
    n_in = first.n_nodes_in
    if x.shape[1] != n_in:
        raise ValueError(f"expected x of shape (B, {n_in}), got {tuple(x.shape)}")
    if not -n_in <= var_index < n_in:
        raise ValueError(f"var_index {var_index} out of range for {n_in} inputs")
    var_index %= n_in
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.to(first.mean.dtype)
        states = states.to(device=x.device, dtype=x.dtype).reshape(-1)
        stds, log_w = first.component_stds(), first.component_log_weights()
        without_var = log_w.index_fill(1, torch.tensor([var_index], device=x.device), float("-inf"))
        partial = mixture_loglik(x, first.mean, stds, without_var, backend=first.backend)  # (B, n_out)
        mu_v, sd_v, lw_v = first.mean[:, var_index], stds[:, var_index], log_w[:, var_index]
        z = (states.unsqueeze(1) - mu_v) / sd_v  # (S, n_out)
        term = lw_v - sd_v.log() - LOG_SQRT_2PI - 0.5 * z * z
        h = torch.logaddexp(partial.unsqueeze(0), term.unsqueeze(1))  # (S, B, n_out)
        n_states, batch = h.shape[:2]
        h = h.reshape(n_states * batch, -1)
        for layer in rest:
            h = layer(h, drop=False)  # inference never drops components
        return h.reshape(n_states, batch)


def predict(net: uGMMNet, x: torch.Tensor, var_index: int, states: torch.Tensor) -> torch.Tensor:
    """MAP state of the variable for every row: ``states[argmax_s log p(x, s)]``, shape (B,)."""
    scores = log_joint_all(net, x, var_index, states)
    return states.to(scores.device)[scores.argmax(dim=0)]


def log_density_grid(
    net: uGMMNet,
    x: torch.Tensor,
    var_index: int,
    grid: torch.Tensor,
    marginalize: tuple[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``log p`` of every row with ``x[:, var_index]`` set to each grid value, shape (S, B).

    Args:
        net: a density model (a :class:`uGMMNet` with one output node).
        x: ``(B, n_inputs)``; the column's own value is ignored.
        var_index: the column that takes the grid's values.
        grid: ``(S,)`` values shared by every row (one batched :func:`log_joint_all`), or ``(S, B)``,
            a grid per row.
        marginalize: ``(index, states)`` of a discrete variable to sum out, ``log p(x) = logsumexp_s
            log p(x, s)`` (a density model's label when the row's class is unknown); None keeps
            ``x[:, index]`` as given.
    """

    def joint(rows: torch.Tensor) -> torch.Tensor:
        if grid.dim() == 2:
            return _log_joint_grid(net, rows, var_index, grid)
        return log_joint_all(net, rows, var_index, grid)

    if marginalize is None:
        return joint(x)
    index, states = marginalize
    column = torch.tensor([index % x.shape[1]], device=x.device)
    return torch.logsumexp(torch.stack([joint(x.index_fill(1, column, s)) for s in states.tolist()]), dim=0)


def _sorted_grid(candidates: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    candidates = candidates.to(device=x.device, dtype=torch.float32).reshape(-1).sort().values
    if len(candidates) < 2:
        raise ValueError("imputation needs at least 2 candidate values")
    return candidates


@torch.no_grad()
def impute_mpe(
    net: uGMMNet,
    x: torch.Tensor,
    var_index: int,
    candidates: torch.Tensor,
    marginalize: tuple[int, torch.Tensor] | None = None,
    refine: int = 2,
) -> torch.Tensor:
    """Most probable value of one missing variable per row: ``argmax_v log p(x with x[:, var_index] = v)``.

    A grid search over ``candidates`` (sorted, ``(S,)``), then ``refine`` passes of a finer grid of as
    many points spanning one step either side of the best value; each pass narrows the step by
    ``(S - 1) / 2``. A mode narrower than the coarse grid's step can be missed: give a grid as fine as
    the sharpest sigma the density has. Arguments as :func:`log_density_grid`; returns ``(B,)``.
    """
    candidates = _sorted_grid(candidates, x)
    best = candidates[log_density_grid(net, x, var_index, candidates, marginalize).argmax(dim=0)]  # (B,)
    step = (candidates[-1] - candidates[0]) / (len(candidates) - 1)
    offsets = torch.linspace(-1.0, 1.0, len(candidates), device=x.device)
    for _ in range(int(refine)):
        grid = best.unsqueeze(0) + step * offsets.unsqueeze(1)  # (S, B): each row its own grid
        scores = log_density_grid(net, x, var_index, grid, marginalize)
        best = grid.gather(0, scores.argmax(dim=0, keepdim=True)).squeeze(0)
        step = 2.0 * step / (len(candidates) - 1)
    return best


@torch.no_grad()
def impute_mean(
    net: uGMMNet,
    x: torch.Tensor,
    var_index: int,
    candidates: torch.Tensor,
    marginalize: tuple[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Conditional mean of one missing variable per row, ``E[v | the rest]`` under the model's density,
    by quadrature over an evenly spaced grid ``candidates`` ``(S,)`` (the density normalised on it).

    The squared-error-optimal guess where :func:`impute_mpe` gives the mode. Returns ``(B,)``.
    """
    candidates = _sorted_grid(candidates, x)
    weights = log_density_grid(net, x, var_index, candidates, marginalize).softmax(dim=0)  # (S, B)
    return (weights * candidates.unsqueeze(1)).sum(dim=0)


def _log_joint_grid(net: uGMMNet, x: torch.Tensor, var_index: int, grid: torch.Tensor) -> torch.Tensor:
    """``log p`` of each row b with ``x[b, var_index] = grid[s, b]``, shape (S, B): a per-row grid."""
    n_states, batch = grid.shape
    rows = x.flatten(1).repeat(n_states, 1)  # (S * B, n_inputs)
    rows[:, var_index] = grid.reshape(-1).to(rows.dtype)
    for layer in net.layers:
        rows = layer(rows, drop=False)  # inference never drops components
    return rows.reshape(n_states, batch)
