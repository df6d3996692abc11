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

import contextlib
import importlib
from collections.abc import Iterator
from functools import cache

import torch

from ugmm.ops.reference import component_params_reference, dropout_mask_reference, mixture_loglik_reference

BACKENDS = ("auto", "reference", "cpu", "triton")
# the default of mixture_loglik's ``zero_inputs`` where the caller gives none; set only by zero_input_path()
_zero_inputs_default = True
# threads of the fused CPU kernels; None: torch's own count. Set only by kernel_threads()
_kernel_threads: int | None = None
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


@contextlib.contextmanager
def zero_input_path(enabled: bool) -> Iterator[None]:
    """Within the block, :func:`mixture_loglik` calls that give no ``zero_inputs`` use ``enabled``.

    ``with zero_input_path(False): net(x)`` measures or tests the dense CPU kernel alone, whatever the
    inputs (every uGMMLayer call inside the block). Restored on exit, also after an exception.
    """
    global _zero_inputs_default
    before = _zero_inputs_default
    _zero_inputs_default = bool(enabled)
    try:
        yield
    finally:
        _zero_inputs_default = before


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Within the block, torch's thread count is ``n`` (None: left as it is); on exit, what it was before."""
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextlib.contextmanager
def kernel_threads(n: int | None) -> Iterator[None]:
    """Within the block, the fused CPU kernels run on ``n`` threads, whatever ``torch.get_num_threads()`` says.

    ``with kernel_threads(2): torch.set_num_threads(1); train()`` runs torch's own ops on one thread and
    the uGMM kernels on two. On a small model every op that wakes the sleeping OpenMP threads pays tens of
    microseconds for it (``OMP_WAIT_POLICY=PASSIVE``), more than most ops gain; the kernels' parallel
    regions are long enough to earn it (docs/performance.md, "Threads"). ``None``: torch's count.
    Restored on exit, also after an exception.
    """
    global _kernel_threads
    if n is not None and n < 1:
        raise ValueError(f"kernel_threads needs n >= 1 (or None for torch's count), got {n}")
    before = _kernel_threads
    _kernel_threads = n
    try:
        yield
    finally:
        _kernel_threads = before


def mixture_loglik(
    x: torch.Tensor,
    means: torch.Tensor,
    stds: torch.Tensor,
    log_weights: torch.Tensor,
    backend: str = "auto",
    zero_inputs: bool | None = None,
) -> torch.Tensor:
    """Log-density of every uGMM neuron for every row.

    Shapes: x (B, n_in); means, stds, log_weights (n_out, n_in) -> (B, n_out). ``log_weights`` may
    hold ``-inf`` (dropped components); a row of all ``-inf`` gives ``-inf``, never NaN.

    ``zero_inputs`` (cpu backend): whether inputs that are exactly 0 (most MNIST pixels) may take the
    zero-input path (same result, fewer exponentials); None: True, or what :func:`zero_input_path` set.
    """
    name = _concrete_backend(backend, x.device.type)
    if name == "reference":
        return mixture_loglik_reference(x, means, stds, log_weights)
    if name == "cpu":
        from ugmm.ops import cpu  # imported by _concrete_backend; a plain import is what torch.compile traces

        zero_inputs = _zero_inputs_default if zero_inputs is None else bool(zero_inputs)
        return cpu.mixture_loglik(x, means, stds, log_weights, zero_inputs=zero_inputs)
    from ugmm.ops import triton

    return triton.mixture_loglik(x, means, stds, log_weights)


def component_params(
    raw_std: torch.Tensor,
    logits: torch.Tensor,
    drop: torch.Tensor | None,
    std_floor: float,
    std_param: str,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigma, log pi)`` of a layer's components from its raw parameters (see
    :func:`~ugmm.ops.reference.component_params_reference`): one fused op each way on the cpu backend,
    plain PyTorch on the others. Shapes (n_out, n_in); ``drop`` a boolean mask (True = dropped) or None."""
    if _concrete_backend(backend, raw_std.device.type) == "cpu":
        from ugmm.ops import cpu

        return cpu.component_params(raw_std, logits, drop, std_floor, std_param)
    return component_params_reference(raw_std, logits, drop, std_floor, std_param)


def dropout_mask(u: torch.Tensor, rescue: torch.Tensor, p: float, backend: str = "auto") -> torch.Tensor:
    """Component dropout's mask from its draws (see :func:`~ugmm.ops.reference.dropout_mask_reference`):
    one pass on the cpu backend, the same mask bit for bit; plain PyTorch on the others (``reference``
    never builds the extension)."""
    if u.dtype == torch.float32 and _concrete_backend(backend, u.device.type) == "cpu":
        from ugmm.ops import cpu

        return cpu.dropout_mask(u, rescue, p)
    return dropout_mask_reference(u, rescue, p)


def _assume_constant_result(fn):
    """``torch.compiler.assume_constant_result`` without its import of torch._dynamo (~3 s at startup).

    The public decorator imports dynamo and sets this attribute, which is all dynamo reads (torch 2.x);
    tests/test_compile.py checks that compiling still sees the function as constant (fullgraph=True).
    """
    fn._dynamo_marked_constant = True
    return fn


@_assume_constant_result
def _concrete_backend(backend: str, device_type: str) -> str:
    """The concrete backend for ``device_type``, checked available (its module imported, its kernel built).

    torch.compile runs this once while tracing and keeps the answer as a constant: the checks behind it
    (a compiler build, an import) are not traceable and need not be repeated per call.
    """
    name = resolve_backend(backend, device_type)
    if not backend_available(name, device_type):
        raise RuntimeError(
            f"uGMM backend {name!r} is not available on {device_type}; use backend='auto' or 'reference'"
        )
    return name


__all__ = [
    "BACKENDS",
    "available_backends",
    "backend_available",
    "kernel_threads",
    "mixture_loglik",
    "mixture_loglik_reference",
    "resolve_backend",
    "torch_threads",
    "zero_input_path",
]
