"""Fused Triton backend of the uGMM op: online logsumexp forward, recomputing backward.

``mixture_loglik(x, means, stds, log_weights)`` equals :func:`ugmm.ops.reference.mixture_loglik_reference`
but never materialises the (B, n_out, n_in) tensor, in the forward or the backward pass. Autograd saves
x, mu, the per-component tensors 1/sigma and c = log pi - log sigma - log sqrt(2 pi) (parameter-sized)
and the (B, n_out) output; the backward recomputes the responsibilities r = exp(q - y) tile by tile and
gives the closed-form gradients of x, mu, sigma and log pi (see :mod:`ugmm.ops._triton_kernels`).

Where it runs:
- CUDA tensors: compiled, autotuned Triton kernels.
- CPU tensors, when Triton's interpreter is active: the same kernels interpreted with numpy (slow; for
  tests at small sizes). Triton builds ``triton.language`` for its interpreter only if
  ``TRITON_INTERPRET=1`` is in the environment when ``triton`` is first imported, so set it before
  anything imports triton (``TRITON_INTERPRET=1 python ...``); setting it later has no effect, and
  ``is_available("cpu")`` then stays False.

float32 and float64 are supported (accumulation in the input dtype); other dtypes raise.
"""

from __future__ import annotations

import contextlib
import os
from functools import cache

import torch

from ugmm.ops.reference import LOG_SQRT_2PI

try:  # absolute import: this module's own name does not shadow the triton package
    import triton
except ImportError:  # pragma: no cover - depends on the environment
    triton = None

_DTYPES = (torch.float32, torch.float64)
# fixed tiles for the interpreter: small enough to be quick, small enough that tests at n_in = 17, 70
# and B = 37 cover several tiles with ragged edges
INTERPRET_BLOCKS = {"BLOCK_B": 16, "BLOCK_J": 16, "BLOCK_K": 16}


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


@cache
def _interpreter_active() -> bool:
    """Whether triton was imported with TRITON_INTERPRET=1, i.e. its language library is interpreted.

    ``tl.sum``, ``tl.max``, ``tl.zeros``... are themselves ``@triton.jit`` functions, built when
    ``triton.language`` is imported: compiled ones cannot be called from an interpreted kernel.
    """
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(triton.language.standard.sum, InterpretedFunction)


def is_available(device: torch.device | str) -> bool:
    """True for CUDA devices when Triton is importable; for CPU when ``TRITON_INTERPRET=1`` is set
    (and was set when triton was imported, see the module docstring)."""
    if triton is None:
        return False
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available()
    return device.type == "cpu" and _interpret_requested() and _interpreter_active()


def _kernel_functions():
    from ugmm.ops import _triton_kernels as k

    return (k.mixture_fwd_kernel, k.mixture_bwd_x_kernel, k.mixture_bwd_params_kernel)


@cache
def _interpreted_kernels():
    """The kernels under Triton's interpreter (runs on host copies of the tensors, numpy semantics)."""
    from triton.runtime.interpreter import InterpretedFunction

    return tuple(InterpretedFunction(fn) for fn in _kernel_functions())


@cache
def _compiled_kernels():
    """The kernels jit-compiled for the GPU, autotuned per problem size (B, J, K)."""
    # 3-D register tiles of BLOCK_B * BLOCK_J * BLOCK_K values; small tiles keep enough programs for an
    # H100 at MNIST sizes (B 256, J 128, K 784 gives 16 x 8 programs at 16 x 16). 8192-value tiles get
    # 8 warps: with 4, ptxas needs ~240 registers a thread (sm_90, checked offline) and occupancy drops.
    tiles = [(16, 16, 16, 4), (16, 16, 16, 8), (32, 16, 16, 8), (16, 32, 16, 8), (32, 32, 8, 8)]
    configs = [triton.Config({"BLOCK_B": b, "BLOCK_J": j, "BLOCK_K": k}, num_warps=w) for b, j, k, w in tiles]
    return tuple(triton.autotune(configs=configs, key=["B", "J", "K"])(triton.jit(fn)) for fn in _kernel_functions())


def compile_for(target_arch: int = 90, dtype: str = "fp32", blocks=(16, 16, 16), num_warps: int = 4) -> dict:
    """Compile the three kernels ahead of time for a CUDA architecture (no GPU needed): {name: PTX}.

    Triton's interpreter accepts code the compiler rejects; this catches that on machines without a GPU.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    constexprs = dict(zip(("BLOCK_B", "BLOCK_J", "BLOCK_K"), blocks))
    ptx = {}
    for fn in _kernel_functions():
        names = fn.__code__.co_varnames[: fn.__code__.co_argcount]
        sig = {n: "constexpr" if n in constexprs else "*" + dtype if n.endswith("_ptr") else "i32" for n in names}
        src = ASTSource(triton.jit(fn), sig, constexprs=constexprs)
        kernel = triton.compile(src, target=GPUTarget("cuda", target_arch, 32), options={"num_warps": num_warps})
        ptx[fn.__name__] = kernel.asm["ptx"]
    return ptx


def _launcher(device: torch.device):
    """(fwd, bwd_x, bwd_params, extra kwargs): interpreted when the interpreter is active, else compiled."""
    if _interpreter_active():
        return (*_interpreted_kernels(), INTERPRET_BLOCKS)
    if device.type != "cuda":
        raise RuntimeError(
            "uGMM triton backend: CPU tensors need Triton's interpreter (TRITON_INTERPRET=1 set before triton "
            "is imported)"
        )
    return (*_compiled_kernels(), {})


def _on(device: torch.device):
    """Launch on the tensors' GPU, not whichever is current (Triton launches on the current device)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _grid(rows: int, cols: int, row_block: str, col_block: str):
    return lambda meta: (triton.cdiv(rows, meta[row_block]), triton.cdiv(cols, meta[col_block]))


def _check(x, means, stds, log_weights) -> None:
    if x.dim() != 2:
        raise ValueError(f"uGMM triton backend: x must be (B, n_in), got shape {tuple(x.shape)}")
    shape = (means.shape[0] if means.dim() == 2 else -1, x.shape[1])
    for name, t in (("means", means), ("stds", stds), ("log_weights", log_weights)):
        if t.dim() != 2 or tuple(t.shape) != shape:
            raise ValueError(f"uGMM triton backend: {name} must be (n_out, {x.shape[1]}), got {tuple(t.shape)}")
    for name, t in (("x", x), ("means", means), ("stds", stds), ("log_weights", log_weights)):
        if t.dtype != x.dtype or t.dtype not in _DTYPES:
            raise TypeError(f"uGMM triton backend: all inputs must share float32 or float64, {name} is {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"uGMM triton backend: {name} is on {t.device}, x on {x.device}")
    B, K, J = x.shape[0], x.shape[1], means.shape[0]
    if max(B * K, B * J, J * K) >= 2**31:  # the kernels index with int32
        raise ValueError(f"uGMM triton backend: x {tuple(x.shape)} with {J} neurons is too large; split the batch")


class TritonMixtureLoglik(torch.autograd.Function):
    """The uGMM op with Triton forward and closed-form Triton backward (first derivatives only)."""

    @staticmethod
    def forward(ctx, x, means, stds, log_weights):
        x, means = x.contiguous(), means.contiguous()
        inv = stds.reciprocal().contiguous()  # (n_out, n_in)
        c = (log_weights - stds.log() - LOG_SQRT_2PI).contiguous()  # (n_out, n_in), -inf where dropped
        B, K = x.shape
        J = means.shape[0]
        y = torch.empty(B, J, device=x.device, dtype=x.dtype)
        if B and J:
            fwd, _, _, blocks = _launcher(x.device)
            with _on(x.device):
                fwd[_grid(B, J, "BLOCK_B", "BLOCK_J")](x, means, inv, c, y, B, J, K, **blocks)
        ctx.save_for_backward(x, means, inv, c, y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        x, means, inv, c, y = ctx.saved_tensors
        need_x, need_mu, need_sigma, need_logpi = ctx.needs_input_grad
        g = g.contiguous()
        B, K = x.shape
        J = means.shape[0]
        _, bwd_x, bwd_params, blocks = _launcher(x.device)
        # the kernels write every entry; only an empty problem (B or n_out = 0) needs explicit zeros
        alloc = torch.empty_like if B and J else torch.zeros_like
        dx = dmu = dsigma = dlogpi = None
        if need_x:
            dx = alloc(x)
            if B and J:
                with _on(x.device):
                    bwd_x[_grid(B, K, "BLOCK_B", "BLOCK_K")](x, means, inv, c, y, g, dx, B, J, K, **blocks)
        if need_mu or need_sigma or need_logpi:
            dmu, dsigma, dlogpi = (alloc(means) for _ in range(3))
            if B and J:
                with _on(x.device):
                    bwd_params[_grid(J, K, "BLOCK_J", "BLOCK_K")](
                        x, means, inv, c, y, g, dmu, dsigma, dlogpi, B, J, K, **blocks
                    )
        return dx, dmu if need_mu else None, dsigma if need_sigma else None, dlogpi if need_logpi else None


def mixture_loglik(x: torch.Tensor, means: torch.Tensor, stds: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """``y[b, j] = logsumexp_k(log_weights[j, k] + log N(x[b, k]; means[j, k], stds[j, k]))``, fused.

    Shapes: x (B, n_in); means, stds, log_weights (n_out, n_in); returns (B, n_out). Differentiable in
    all four inputs. ``log_weights`` may hold ``-inf`` (dropped components); an all ``-inf`` row gives
    ``-inf`` with zero gradients, never NaN. Needs ``is_available(x.device)``.
    """
    if triton is None:
        raise RuntimeError("uGMM triton backend: the triton package is not installed")
    _check(x, means, stds, log_weights)
    return TritonMixtureLoglik.apply(x, means, stds, log_weights)


__all__ = ["INTERPRET_BLOCKS", "TritonMixtureLoglik", "compile_for", "is_available", "mixture_loglik"]
