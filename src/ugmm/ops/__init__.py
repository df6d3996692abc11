"""The uGMM log-likelihood op behind :class:`ugmm.nn.uGMMLayer`, with interchangeable backends.

``mixture_loglik(x, means, stds, log_weights, backend=...)`` computes, for every row b and neuron j,

    y[b, j] = logsumexp_k( log_weights[j, k] + log N(x[b, k]; means[j, k], stds[j, k]) )

Backends:
- ``"reference"``: plain PyTorch, materialising (B, n_out, n_in); the ground truth.
- ``"cpu"``: fused C++ kernel (OpenMP, online logsumexp), built on first use (:mod:`ugmm.ops.cpu`).
- ``"triton"``: fused Triton kernels for CUDA (:mod:`ugmm.ops.triton`).
- ``"auto"``: the fastest correct backend available for the input's device.

Every concrete backend module exposes ``is_available(device) -> bool`` and
``mixture_loglik(x, means, stds, log_weights) -> Tensor`` (differentiable in all four inputs).
"""

from __future__ import annotations

import importlib
from functools import cache

import torch

from ugmm.ops.reference import mixture_loglik_reference

BACKENDS = ("auto", "reference", "cpu", "triton")
# fastest first, per device type
_PREFERENCE = {"cpu": ("cpu", "reference"), "cuda": ("triton", "reference")}


@cache
def _backend_module(name: str):
    if name == "reference":
        return None
    try:
        return importlib.import_module(f"ugmm.ops.{name}")
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("ugmm.ops"):
            return None  # backend not part of this build
        raise


def backend_available(name: str, device: torch.device | str = "cpu") -> bool:
    """Whether backend ``name`` can run on ``device`` here (compiler, Triton, GPU present...)."""
    if name == "reference":
        return True
    module = _backend_module(name)
    return module is not None and module.is_available(torch.device(device))


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Names of the concrete backends that can run on ``device``, fastest first."""
    device = torch.device(device)
    order = _PREFERENCE.get(device.type, ("reference",))
    return [name for name in order if backend_available(name, device)]


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """Map ``"auto"`` to a concrete backend for ``device``; reject unknown names with one line."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown uGMM backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return available_backends(device)[0]
    return backend


def mixture_loglik(
    x: torch.Tensor,
    means: torch.Tensor,
    stds: torch.Tensor,
    log_weights: torch.Tensor,
    backend: str = "auto",
) -> torch.Tensor:
    """Log-density of every uGMM neuron for every row.

    Shapes: x (B, n_in); means, stds, log_weights (n_out, n_in) -> (B, n_out). ``log_weights`` may
    hold ``-inf`` (dropped components); a row of all ``-inf`` gives ``-inf``, never NaN.
    """
    name = resolve_backend(backend, x.device)
    if name == "reference":
        return mixture_loglik_reference(x, means, stds, log_weights)
    if not backend_available(name, x.device):
        raise RuntimeError(f"uGMM backend {name!r} is not available on {x.device}; use backend='auto' or 'reference'")
    return _backend_module(name).mixture_loglik(x, means, stds, log_weights)


__all__ = [
    "BACKENDS",
    "available_backends",
    "backend_available",
    "mixture_loglik",
    "mixture_loglik_reference",
    "resolve_backend",
]
