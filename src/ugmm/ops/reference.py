"""Plain PyTorch uGMM log-likelihood: the ground truth every fused backend is tested against.

It materialises the (B, n_out, n_in) tensor of component log-densities, so it is slow and
memory-hungry, but it is the formula written out and autograd differentiates it exactly.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F  # noqa: N812 - the usual alias

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def mixture_loglik_reference(
    x: torch.Tensor, means: torch.Tensor, stds: torch.Tensor, log_weights: torch.Tensor
) -> torch.Tensor:
    """``y[b, j] = logsumexp_k(log_weights[j, k] + log N(x[b, k]; means[j, k], stds[j, k]))``.

    Shapes: x (B, n_in); means, stds, log_weights (n_out, n_in); returns (B, n_out).
    ``log_weights`` may hold ``-inf`` for dropped components; a row that is entirely ``-inf``
    yields ``-inf`` (never NaN) because the max shift is guarded.
    """
    # centred form: z = (x - mu) / sigma, never the expanded quadratic
    z = (x.unsqueeze(1) - means) / stds  # (B, n_out, n_in)
    q = log_weights - torch.log(stds) - LOG_SQRT_2PI - 0.5 * z * z
    return _safe_logsumexp(q, dim=-1)


def _safe_logsumexp(q: torch.Tensor, dim: int) -> torch.Tensor:
    m = q.amax(dim=dim, keepdim=True).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return (q - m).exp().sum(dim=dim).log() + m.squeeze(dim)


def component_params_reference(
    raw_std: torch.Tensor, logits: torch.Tensor, drop: torch.Tensor | None, std_floor: float, std_param: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigma, log pi)`` of a layer's components from its raw parameters, all shapes (n_out, n_in).

    sigma = std_floor + exp(raw_std) (``std_param="exp"``) or std_floor + softplus(raw_std) ("softplus");
    log pi = log_softmax over inputs of ``logits`` with the components in ``drop`` (a boolean mask, True =
    dropped, or None) at ``-inf``.
    """
    stds = std_floor + (raw_std.exp() if std_param == "exp" else F.softplus(raw_std))
    if drop is not None:
        logits = logits.masked_fill(drop, float("-inf"))
    return stds, torch.log_softmax(logits, dim=-1)


def dropout_mask_reference(u: torch.Tensor, rescue: torch.Tensor, p: float) -> torch.Tensor:
    """Component dropout's boolean mask (True = dropped) from its draws: ``u`` (n_out, n_in) uniform, ``rescue``
    (n_out, 1) a component index per neuron, kept when the neuron would lose every component."""
    drop = u < p
    dead = u.amax(dim=1, keepdim=True) < p  # = drop.all(dim=1): a float reduction, several times faster on CPU
    revived = drop.gather(1, rescue) & ~dead
    return drop.scatter(1, rescue, revived)
