"""Fused C++ CPU backend of the uGMM op: OpenMP over rows and neurons, vectorised over inputs.

The kernel (``csrc/ugmm_cpu.cpp``) is compiled on first use with :func:`torch.utils.cpp_extension.load`
and cached in torch's extension directory (``TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``) or in ``UGMM_EXTENSIONS_DIR`` when set. It is built with
``-march=native``, so the extension's name carries a hash of the source, the compiler flags, the CPU
model and its instruction-set flags: a cache shared between machines never serves code built for
another CPU. When no compiler is present or the build fails, :func:`is_available` warns once, naming
the cause, and returns False, and ``backend="auto"`` uses the reference backend.

Math (``x`` (B, n_in); ``means``, ``stds``, ``log_weights`` (n_out, n_in); output (B, n_out)):

    q[b,j,k] = log_weights[j,k] - log stds[j,k] - log sqrt(2 pi) - z^2 / 2,  z = (x[b,k] - means[j,k]) / stds[j,k]
    y[b,j]   = logsumexp_k q[b,j,k]

Backward, in closed form from the saved inputs and y, with r = exp(q - y) and G = grad_y[b,j] * r:
``dx = -sum_j G z / sigma``, ``dmeans = sum_b G z / sigma``, ``dstds = sum_b G (z^2 - 1) / sigma``,
``dlog_weights = sum_b G``. Nothing of shape (B, n_out, n_in) is ever stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import warnings
from functools import cache
from pathlib import Path

import torch

import ugmm.ops

_SOURCE = Path(__file__).with_name("csrc") / "ugmm_cpu.cpp"
# -fopenmp: at::parallel_for's OpenMP regions are compiled into this module; -march=native: the vector width
# of this CPU (a second, portable build is tried if the compiler rejects it)
_CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
_PORTABLE_CFLAGS = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
_LDFLAGS = ["-fopenmp"]


def _cpu_signature() -> str:
    """Model and instruction-set flags of this CPU: what ``-march=native`` compiles for."""
    fields = [platform.machine(), platform.processor()]
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "flags", "Features", "CPU part"):
                    fields.append(line.strip())
                if line.strip() == "":
                    break  # the first processor describes them all
    except OSError:
        pass
    return "\n".join(fields)


def extension_name(cflags: list[str] = _CFLAGS) -> str:
    """Name of the compiled module: a hash of source (text and path), flags, CPU and torch version.

    The path matters: torch writes the source's absolute path into the build directory's ninja file, so two
    checkouts of the same source sharing one name would rebuild it in turn, each waiting on the other's lock.
    """
    digest = hashlib.sha256()
    for part in (
        str(_SOURCE.resolve()).encode(),
        _SOURCE.read_bytes(),
        " ".join(cflags).encode(),
        _cpu_signature().encode(),
        torch.__version__.encode(),
    ):
        digest.update(part)
        digest.update(b"\0")
    return f"ugmm_cpu_{digest.hexdigest()[:16]}"


def _build():
    """Compile (or load the cached) extension; raises with the cause on failure."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler found ({compiler!r} is not on PATH)")
    # imported lazily (it pulls in setuptools); silence its "No CUDA runtime" notice, irrelevant here
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.setLevel(level)

    cpp_extension.verify_ninja_availability()  # raises "Ninja is required to load C++ extensions"
    errors = []
    for cflags in (_CFLAGS, _PORTABLE_CFLAGS):
        try:
            return _load(cpp_extension, cflags)
        except Exception as err:  # noqa: BLE001 - a compiler error: try the portable flags, then give up
            errors.append(err)
    raise errors[0]


def _load(cpp_extension, cflags: list[str]):
    kwargs = {}
    ext_dir = os.environ.get("UGMM_EXTENSIONS_DIR")
    name = extension_name(cflags)
    if ext_dir:
        build_dir = Path(ext_dir).expanduser() / name
        build_dir.mkdir(parents=True, exist_ok=True)
        kwargs["build_directory"] = str(build_dir)
    return cpp_extension.load(
        name=name,
        sources=[str(_SOURCE)],
        extra_cflags=cflags,
        extra_ldflags=_LDFLAGS,
        verbose=False,
        **kwargs,
    )


def _cause(err: Exception) -> str:
    """One line saying why the build failed: the compiler's first error line when there is one."""
    lines = [" ".join(line.split()) for line in str(err).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() and not line.startswith("Error building extension")]
    cause = (errors or lines or [type(err).__name__])[0]
    return cause if len(cause) <= 240 else cause[:237] + "..."


@cache
def _extension():
    """The compiled module, or None (after one warning) when it cannot be built here."""
    try:
        return _build()
    except Exception as err:  # noqa: BLE001 - any build failure means: use the reference backend
        warnings.warn(
            f"ugmm: the fused CPU kernel could not be built ({_cause(err)}); using the reference backend instead",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def is_available(device: torch.device | str = "cpu") -> bool:
    """True on CPU devices when the extension builds (the first call compiles it, ~1 min)."""
    return torch.device(device).type == "cpu" and _extension() is not None


def _derived(stds: torch.Tensor, log_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(j, k) constants the kernels read: 1 / sigma and c = log pi - log sigma - log sqrt(2 pi)."""
    return tuple(_extension().derived(stds, log_weights))


def _kernel_pool():
    """torch's thread count set to :func:`ugmm.ops.kernel_threads`' for the kernel call inside (at::parallel_for
    reads it), and back afterwards."""
    return ugmm.ops.torch_threads(ugmm.ops._kernel_threads)


def _check(x: torch.Tensor, means: torch.Tensor, stds: torch.Tensor, log_weights: torch.Tensor) -> None:
    if x.dim() != 2 or means.dim() != 2:
        raise ValueError(f"mixture_loglik expects x (B, n_in) and parameters (n_out, n_in), got {tuple(x.shape)}")
    if not (means.shape == stds.shape == log_weights.shape) or x.shape[1] != means.shape[1]:
        raise ValueError(
            f"mixture_loglik shape mismatch: x {tuple(x.shape)}, means {tuple(means.shape)}, "
            f"stds {tuple(stds.shape)}, log_weights {tuple(log_weights.shape)}"
        )
    dtypes = {t.dtype for t in (x, means, stds, log_weights)}
    if len(dtypes) != 1 or x.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"the cpu backend needs one dtype, float32 or float64, for all inputs; got {sorted(map(str, dtypes))}"
        )
    if any(t.device.type != "cpu" for t in (x, means, stds, log_weights)):
        raise ValueError("the cpu backend needs every tensor on the CPU")


# ---- the ops, registered with torch.library so that torch.compile and torch.export see one opaque node ----
# ``ugmm::cpu_mixture_loglik`` (forward) and ``ugmm::cpu_mixture_loglik_backward`` (all four gradients in
# one sweep); autograd connects them (register_autograd), and fake implementations give compile the shapes.
# Eager calls skip torch.library's Python layer (schema defaults, redispatch, its autograd shim: ~50 us a
# call, a dozen calls a training step, more than a small model's kernels take): they run the same
# implementations through a torch.autograd.Function (_Eager*), named in profiles by record_function.


def _named(name: str):
    """``record_function(name)`` while a profiler runs (it shows the op by its name); else nothing (it costs
    a dispatcher call of its own)."""
    if torch.autograd.profiler._is_profiler_enabled:
        return torch.profiler.record_function(name)
    return contextlib.nullcontext()


def _forward_kernel(x, means, inv_sigma, c, zero_inputs: bool) -> torch.Tensor:
    return _extension().forward(x.contiguous(), means.contiguous(), inv_sigma, c, zero_inputs)


def _backward_kernel(grad_y, x, means, inv_sigma, c, y, need_x: bool, need_params: bool, zero_inputs: bool):
    grads = _extension().backward(
        grad_y.contiguous(), x.contiguous(), means.contiguous(), inv_sigma, c, y.contiguous(),
        need_x, need_params, zero_inputs,
    )  # fmt: skip
    return tuple(x.new_empty(0) if g is None else g for g in grads)


def _forward_with_constants(x, means, stds, log_weights, zero_inputs: bool):
    """(y, inv_sigma, c): the output and the kernels' constants it was computed with."""
    with _kernel_pool():
        inv_sigma, c = _derived(stds, log_weights)
        return _forward_kernel(x, means, inv_sigma, c, zero_inputs), inv_sigma, c


def _forward_impl(x, means, stds, log_weights, zero_inputs: bool) -> torch.Tensor:
    return _forward_with_constants(x, means, stds, log_weights, zero_inputs)[0]


def _backward_impl(grad_y, x, means, stds, log_weights, y, need_x: bool, need_params: bool, zero_inputs: bool):
    with _kernel_pool():
        return _backward_kernel(grad_y, x, means, *_derived(stds, log_weights), y, need_x, need_params, zero_inputs)


@torch.library.custom_op("ugmm::cpu_mixture_loglik", mutates_args=(), device_types="cpu")
def _forward_op(
    x: torch.Tensor, means: torch.Tensor, stds: torch.Tensor, log_weights: torch.Tensor, zero_inputs: bool
) -> torch.Tensor:
    return _forward_impl(x, means, stds, log_weights, zero_inputs)


@_forward_op.register_fake
def _(x, means, stds, log_weights, zero_inputs):
    return x.new_empty(x.shape[0], means.shape[0])


@torch.library.custom_op("ugmm::cpu_mixture_loglik_backward", mutates_args=(), device_types="cpu")
def _backward_op(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    means: torch.Tensor,
    stds: torch.Tensor,
    log_weights: torch.Tensor,
    y: torch.Tensor,
    need_x: bool,
    need_params: bool,
    zero_inputs: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dmeans, dstds, dlog_weights); the ones not asked for are empty (0,) tensors."""
    return _backward_impl(grad_y, x, means, stds, log_weights, y, need_x, need_params, zero_inputs)


@_backward_op.register_fake
def _(grad_y, x, means, stds, log_weights, y, need_x, need_params, zero_inputs):
    dx = x.new_empty(x.shape) if need_x else x.new_empty(0)
    params = [means.new_empty(means.shape) if need_params else means.new_empty(0) for _ in range(3)]
    return (dx, *params)


def _setup_context(ctx, inputs, output):
    x, means, stds, log_weights, zero_inputs = inputs
    ctx.save_for_backward(x, means, stds, log_weights, output)
    ctx.zero_inputs = zero_inputs


def _grads(ctx, grad_y, backward):
    """The mixture's input gradients from ``backward``: the registered op on the saved (stds, log_weights), or
    in eager the kernel on the saved (inv_sigma, c)."""
    x, means, params_a, params_b, y = ctx.saved_tensors
    need_x = ctx.needs_input_grad[0]
    need_params = any(ctx.needs_input_grad[1:4])
    dx, dmu, dsig, dlw = backward(grad_y, x, means, params_a, params_b, y, need_x, need_params, ctx.zero_inputs)
    return (
        dx if need_x else None,
        dmu if ctx.needs_input_grad[1] else None,
        dsig if ctx.needs_input_grad[2] else None,
        dlw if ctx.needs_input_grad[3] else None,
        None,
    )


_forward_op.register_autograd(lambda ctx, grad_y: _grads(ctx, grad_y, _backward_op), setup_context=_setup_context)


class _EagerMixtureLoglik(torch.autograd.Function):
    """``ugmm::cpu_mixture_loglik`` without torch.library's Python layer (eager mode)."""

    @staticmethod
    def forward(ctx, x, means, stds, log_weights, zero_inputs):
        # (ctx in forward, not a separate setup_context: that form binds the arguments by inspect, per call)
        with _named("ugmm::cpu_mixture_loglik"):
            y, inv_sigma, c = _forward_with_constants(x, means, stds, log_weights, zero_inputs)
        # the kernels' constants, not (stds, log_weights): the backward need not derive them again
        _setup_context(ctx, (x, means, inv_sigma, c, zero_inputs), y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable  # first order only, as the registered op
    def backward(ctx, grad_y):
        with _named("ugmm::cpu_mixture_loglik_backward"), _kernel_pool():
            return _grads(ctx, grad_y, _backward_kernel)


def mixture_loglik(
    x: torch.Tensor,
    means: torch.Tensor,
    stds: torch.Tensor,
    log_weights: torch.Tensor,
    zero_inputs: bool = True,
) -> torch.Tensor:
    """``y[b, j] = logsumexp_k(log_weights[j, k] + log N(x[b, k]; means[j, k], stds[j, k]))`` fused on CPU.

    Shapes: x (B, n_in); means, stds, log_weights (n_out, n_in); returns (B, n_out). float32 or
    float64; differentiable in any subset of the inputs (first order). ``stds`` is sigma after any
    floor and ``log_weights`` is log pi with ``-inf`` for dropped components; a neuron whose
    ``log_weights`` are all ``-inf`` gives ``-inf`` and zero gradients, never NaN.

    ``zero_inputs``: take the zero-input path when at least half of the inputs are exactly 0 (MNIST
    pixels: ~80%): their terms are per-(neuron, input) constants, summed by a matmul; only nonzero
    inputs need exponentials. Exact either way; False measures or tests the dense kernel alone.
    """
    _check(x, means, stds, log_weights)
    if torch.compiler.is_compiling():
        return _forward_op(x, means, stds, log_weights, bool(zero_inputs))
    if not is_available(x.device):
        raise RuntimeError("the fused CPU kernel is not available here (see the earlier warning); use 'reference'")
    return _EagerMixtureLoglik.apply(x, means, stds, log_weights, bool(zero_inputs))


# ---- the components' parameters: (sigma, log pi) from a layer's raw parameters in one pass each way ----------
# What ``ugmm.ops.reference.component_params_reference`` computes in a dozen elementwise ops (forward and
# backward), each waking the thread pool: on MNIST's first layer those cost a training step as much as the
# kernels. ``ugmm::cpu_component_params`` and its backward are one pass over the (n_out, n_in) parameters each.


def _params_impl(raw_std, logits, drop, std_floor: float, softplus: bool):
    with _kernel_pool():
        stds, log_weights = _extension().component_params(raw_std, logits, drop, std_floor, softplus)
    return stds, log_weights


def _params_backward_impl(grad_stds, grad_log_weights, raw_std, log_weights, drop, softplus: bool):
    with _kernel_pool():
        draw, dlogits = _extension().component_params_backward(
            grad_stds, grad_log_weights, raw_std, log_weights, drop, softplus
        )
    return draw, dlogits


@torch.library.custom_op("ugmm::cpu_component_params", mutates_args=(), device_types="cpu")
def _params_op(
    raw_std: torch.Tensor, logits: torch.Tensor, drop: torch.Tensor | None, std_floor: float, softplus: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    return _params_impl(raw_std, logits, drop, std_floor, softplus)


@_params_op.register_fake
def _(raw_std, logits, drop, std_floor, softplus):
    return raw_std.new_empty(raw_std.shape), raw_std.new_empty(raw_std.shape)


@torch.library.custom_op("ugmm::cpu_component_params_backward", mutates_args=(), device_types="cpu")
def _params_backward_op(
    grad_stds: torch.Tensor,
    grad_log_weights: torch.Tensor,
    raw_std: torch.Tensor,
    log_weights: torch.Tensor,
    drop: torch.Tensor | None,
    softplus: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _params_backward_impl(grad_stds, grad_log_weights, raw_std, log_weights, drop, softplus)


@_params_backward_op.register_fake
def _(grad_stds, grad_log_weights, raw_std, log_weights, drop, softplus):
    return raw_std.new_empty(raw_std.shape), raw_std.new_empty(raw_std.shape)


def _params_setup_context(ctx, inputs, output):
    raw_std, logits, drop, std_floor, softplus = inputs
    ctx.save_for_backward(raw_std, output[1], drop)
    ctx.softplus = softplus


def _params_grads(ctx, grad_stds, grad_log_weights, backward):
    raw_std, log_weights, drop = ctx.saved_tensors
    # an output nobody used has no gradient: zeros of its shape (its part of the chain rule is zero)
    grad_stds = torch.zeros_like(raw_std) if grad_stds is None else grad_stds
    grad_log_weights = torch.zeros_like(raw_std) if grad_log_weights is None else grad_log_weights
    draw, dlogits = backward(grad_stds, grad_log_weights, raw_std, log_weights, drop, ctx.softplus)
    return draw, dlogits, None, None, None


_params_op.register_autograd(
    lambda ctx, g_std, g_lw: _params_grads(ctx, g_std, g_lw, _params_backward_op), setup_context=_params_setup_context
)


class _EagerComponentParams(torch.autograd.Function):
    """``ugmm::cpu_component_params`` without torch.library's Python layer (eager mode)."""

    @staticmethod
    def forward(ctx, raw_std, logits, drop, std_floor, softplus):
        with _named("ugmm::cpu_component_params"):
            out = _params_impl(raw_std, logits, drop, std_floor, softplus)
        _params_setup_context(ctx, (raw_std, logits, drop, std_floor, softplus), out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_stds, grad_log_weights):
        with _named("ugmm::cpu_component_params_backward"):
            return _params_grads(ctx, grad_stds, grad_log_weights, _params_backward_impl)


def component_params(
    raw_std: torch.Tensor, logits: torch.Tensor, drop: torch.Tensor | None, std_floor: float, std_param: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`ugmm.ops.reference.component_params_reference` fused on CPU (same arguments, same results
    within float rounding, ~2e-7 relative); differentiable in ``raw_std`` and ``logits``."""
    if raw_std.shape != logits.shape or raw_std.dim() != 2:
        raise ValueError(f"component_params: raw_std {tuple(raw_std.shape)} and logits {tuple(logits.shape)}")
    if drop is not None and (drop.shape != raw_std.shape or drop.dtype != torch.bool):
        raise ValueError(f"component_params: drop must be a bool mask of shape {tuple(raw_std.shape)}")
    args = (raw_std, logits, drop, float(std_floor), std_param == "softplus")
    return _params_op(*args) if torch.compiler.is_compiling() else _EagerComponentParams.apply(*args)


def _dropout_mask_impl(u: torch.Tensor, rescue: torch.Tensor, p: float) -> torch.Tensor:
    return _extension().dropout_mask(u, rescue.reshape(-1), p)


@torch.library.custom_op("ugmm::cpu_dropout_mask", mutates_args=(), device_types="cpu")
def _dropout_mask_op(u: torch.Tensor, rescue: torch.Tensor, p: float) -> torch.Tensor:
    return _dropout_mask_impl(u, rescue, p)


def dropout_mask(u: torch.Tensor, rescue: torch.Tensor, p: float) -> torch.Tensor:
    """:func:`ugmm.ops.reference.dropout_mask_reference` in one pass (float32 ``u``)."""
    if torch.compiler.is_compiling():
        return _dropout_mask_op(u, rescue, p)
    with _named("ugmm::cpu_dropout_mask"):
        return _dropout_mask_impl(u, rescue, p)


@_dropout_mask_op.register_fake
def _(u, rescue, p):
    return u.new_empty(u.shape, dtype=torch.bool)
