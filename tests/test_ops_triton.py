"""The Triton backend against the reference op: outputs, all four gradients, dropout, extreme sigmas.

Triton builds its language library for the interpreter only when ``TRITON_INTERPRET=1`` is set before
triton is first imported, so the CPU checks run this file again in a subprocess with that variable
(``test_kernels_under_interpreter``); other tests in this process are unaffected. In that subprocess
(or under ``TRITON_INTERPRET=1 pytest tests/test_ops_triton.py``) the kernel tests run on CPU tensors;
where CUDA is present they also run here, compiled, on the GPU. Sizes are small and awkward (n_in not
a multiple of the 16-wide interpreter tile, n_out = 1, B = 1) to exercise the masked edges.

Targets (float32): outputs within 1e-5 relative of the reference, gradients within 1e-4.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="triton is not importable here")

from ugmm.nn import component_dropout_mask, uGMMLayer  # noqa: E402
from ugmm.ops import backend_available, mixture_loglik, mixture_loglik_reference  # noqa: E402
from ugmm.ops import triton as triton_backend  # noqa: E402

# the interpreter evaluates masked-off tile rows too (log(0) there is harmless and masked at the store)
pytestmark = pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")

INTERPRETER = triton_backend.is_available("cpu")  # TRITON_INTERPRET=1 was set before triton was imported
DEVICES = ["cpu"] if INTERPRETER else (["cuda"] if torch.cuda.is_available() else [])

# (B, n_out, n_in): B = 1, n_out = 1, n_in = 1; n_in below, across and beyond one 16-wide tile
SIZES = [(1, 1, 1), (1, 1, 3), (3, 1, 17), (1, 5, 70), (37, 20, 70), (4, 17, 33)]


@pytest.fixture(params=DEVICES or ["none"])
def device(request):
    if request.param == "none":
        pytest.skip("no GPU here: the kernel tests run on CPU in the subprocess of test_kernels_under_interpreter")
    return torch.device(request.param)


@pytest.mark.skipif(INTERPRETER, reason="already inside the interpreter run")
def test_kernels_under_interpreter():
    """Run this file on CPU under Triton's interpreter, in a fresh process with TRITON_INTERPRET=1."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-W", "error::RuntimeWarning"]
    proc = subprocess.run(cmd, env=env, cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=600)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"interpreter run failed:\n{tail}"
    assert " passed" in tail and " failed" not in tail, tail


def make_inputs(B, J, K, device, dtype=torch.float32, log_sigma=(-1.5, 0.5), drop_p=0.0, seed=0):
    """Fresh random (x, mu, sigma, log pi); log pi renormalised over the components that survive dropout."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, K, generator=gen, dtype=torch.float64) * 1.5
    mu = torch.randn(J, K, generator=gen, dtype=torch.float64)
    lo, hi = log_sigma
    sigma = (lo + (hi - lo) * torch.rand(J, K, generator=gen, dtype=torch.float64)).exp()
    logits = torch.rand(J, K, generator=gen, dtype=torch.float64)
    if drop_p > 0:
        logits = logits.masked_fill(component_dropout_mask(J, K, drop_p, generator=gen), float("-inf"))
    log_pi = torch.log_softmax(logits, dim=1)
    return [t.to(device=device, dtype=dtype) for t in (x, mu, sigma, log_pi)]


def outputs_and_grads(fn, inputs, g):
    """y = fn(*inputs) and the gradients of sum(g * y) with respect to all four inputs."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    y = fn(*leaves)
    grads = torch.autograd.grad(y, leaves, g.to(y.dtype))
    return y.detach(), grads


def assert_grads_close(got, want, rtol):
    """Each gradient within ``rtol`` of the float64 reference, relative to that gradient's scale."""
    for name, a, b in zip(("x", "mu", "sigma", "log_pi"), got, want):
        scale = b.abs().max().item() or 1.0
        torch.testing.assert_close(
            a.double(), b.double(), rtol=rtol, atol=rtol * scale, msg=lambda m, n=name: f"d{n}: {m}"
        )


def check_against_reference(inputs, g, out_rtol=1e-5, grad_rtol=1e-4):
    y, grads = outputs_and_grads(triton_backend.mixture_loglik, inputs, g)
    # ground truth in float64, from the same (float32-rounded) inputs
    y_ref, grads_ref = outputs_and_grads(mixture_loglik_reference, [t.double() for t in inputs], g.double())
    assert y.dtype == inputs[0].dtype and y.shape == y_ref.shape
    assert not torch.isnan(y).any() and all(not torch.isnan(d).any() for d in grads)
    torch.testing.assert_close(y.double(), y_ref, rtol=out_rtol, atol=out_rtol)
    assert_grads_close(grads, grads_ref, grad_rtol)
    # and against the float32 reference the users would otherwise run
    y32 = mixture_loglik_reference(*inputs)
    torch.testing.assert_close(y, y32, rtol=out_rtol, atol=out_rtol)


@pytest.mark.parametrize("B,J,K", SIZES)
def test_matches_reference(device, B, J, K):
    inputs = make_inputs(B, J, K, device, seed=B * 1000 + J * 100 + K)
    g = torch.randn(B, J, device=device)
    check_against_reference(inputs, g)


@pytest.mark.parametrize("B,J,K", [(37, 20, 70), (2, 9, 5), (5, 3, 17)])
def test_dropout_masks(device, B, J, K):
    # heavy component dropout (-inf log weights), every neuron keeps at least one component
    inputs = make_inputs(B, J, K, device, drop_p=0.8, seed=K)
    assert torch.isinf(inputs[3]).any()
    check_against_reference(inputs, torch.randn(B, J, device=device))


@pytest.mark.parametrize("B,J,K", [(37, 20, 70), (1, 1, 17)])
def test_extreme_sigmas(device, B, J, K):
    # sigma from 1e-3 (the layer's default floor) to 1e3: component log-densities from about +6 to -1e6
    inputs = make_inputs(B, J, K, device, log_sigma=(math.log(1e-3), math.log(1e3)), drop_p=0.3, seed=7)
    check_against_reference(inputs, torch.randn(B, J, device=device))


def test_all_dropped_rows_give_minus_inf_and_zero_gradients(device):
    B, J, K = 6, 5, 19
    x, mu, sigma, log_pi = make_inputs(B, J, K, device, seed=3)
    log_pi[1] = float("-inf")  # neuron 1 lost every component
    log_pi[4, : K - 1] = float("-inf")  # neuron 4 keeps one
    g = torch.randn(B, J, device=device)
    y, (dx, dmu, dsigma, dlogpi) = outputs_and_grads(triton_backend.mixture_loglik, [x, mu, sigma, log_pi], g)
    assert torch.isneginf(y[:, 1]).all() and torch.isfinite(y[:, [0, 2, 3, 4]]).all()
    for d in (dx, dmu, dsigma, dlogpi):
        assert torch.isfinite(d).all()
    for d in (dmu, dsigma, dlogpi):
        assert (d[1] == 0).all()
    # every other neuron exactly as the reference (its all -inf row would give NaN gradients there)
    live = [0, 2, 3, 4]
    keep = [t[live] for t in (mu, sigma, log_pi)]
    y_ref, grads_ref = outputs_and_grads(
        mixture_loglik_reference, [t.double() for t in (x, *keep)], g[:, live].double()
    )
    torch.testing.assert_close(y[:, live].double(), y_ref, rtol=1e-5, atol=1e-5)
    assert_grads_close((dx, dmu[live], dsigma[live], dlogpi[live]), grads_ref, 1e-4)


def test_zero_upstream_gradient_rows(device):
    # rows/neurons the loss ignores (g = 0) contribute nothing, even where y is far out in the tail
    B, J, K = 9, 4, 21
    inputs = make_inputs(B, J, K, device, log_sigma=(math.log(1e-3), 0.0), seed=11)
    g = torch.randn(B, J, device=device)
    g[::2] = 0.0
    g[:, 1] = 0.0
    check_against_reference(inputs, g)


def test_empty_batch(device):
    x, mu, sigma, log_pi = make_inputs(0, 3, 5, device)
    y, grads = outputs_and_grads(
        triton_backend.mixture_loglik, [x, mu, sigma, log_pi], torch.zeros(0, 3, device=device)
    )
    assert y.shape == (0, 3) and grads[0].shape == (0, 5)
    assert all((d == 0).all() for d in grads[1:])


def test_float64_gradcheck(device):
    # closed-form backward against finite differences of the kernel itself
    x, mu, sigma, log_pi = make_inputs(3, 2, 5, device, dtype=torch.float64, drop_p=0.3, seed=5)
    leaves = [t.requires_grad_() for t in (x, mu, sigma, log_pi)]
    assert torch.autograd.gradcheck(triton_backend.mixture_loglik, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_float64_matches_reference_tightly(device):
    inputs = make_inputs(37, 20, 70, device, dtype=torch.float64, drop_p=0.5, seed=13)
    check_against_reference(inputs, torch.randn(37, 20, device=device), out_rtol=1e-12, grad_rtol=1e-10)


def test_partial_gradients(device):
    # first layer: x is data (no grad); only the parameters' gradients are computed, and vice versa
    x, mu, sigma, log_pi = make_inputs(8, 6, 23, device, seed=17)
    g = torch.randn(8, 6, device=device)
    _, want = outputs_and_grads(mixture_loglik_reference, [t.double() for t in (x, mu, sigma, log_pi)], g.double())
    params = [t.clone().requires_grad_() for t in (mu, sigma, log_pi)]
    got = torch.autograd.grad(triton_backend.mixture_loglik(x, *params), params, g)
    assert_grads_close((want[0], *got), want, 1e-4)
    x_leaf = x.clone().requires_grad_()
    (dx,) = torch.autograd.grad(triton_backend.mixture_loglik(x_leaf, mu, sigma, log_pi), [x_leaf], g)
    torch.testing.assert_close(dx.double(), want[0], rtol=1e-4, atol=1e-4 * want[0].abs().max().item())


def test_layer_dropout_and_floor_identical_to_reference(device):
    # dropout and the sigma floor live in the layer (torch), so every backend sees the same inputs
    torch.manual_seed(0)
    fused = uGMMLayer(70, 20, dropout=0.5, std_floor=1e-2, backend="triton").to(device)
    ref = uGMMLayer(70, 20, dropout=0.5, std_floor=1e-2, backend="reference").to(device)
    ref.load_state_dict(fused.state_dict())
    with torch.no_grad():
        fused.raw_std[:3] = -40.0  # sigma exactly at the floor
    ref.load_state_dict(fused.state_dict())
    drop = component_dropout_mask(20, 70, 0.5).to(device)
    x = torch.randn(37, 70, device=device)
    y_fused, y_ref = fused(x, drop=drop), ref(x, drop=drop)
    torch.testing.assert_close(y_fused, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y_ref)
    for a, b in zip(
        torch.autograd.grad(y_fused, list(fused.parameters()), g), torch.autograd.grad(y_ref, list(ref.parameters()), g)
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


@pytest.mark.skipif(INTERPRETER, reason="compiles real GPU code; the interpreter replaces triton.jit")
@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_kernels_compile_for_hopper(dtype):
    # the interpreter accepts code the GPU compiler rejects: compile to PTX and cubin for sm_90, no GPU needed
    ptx = triton_backend.compile_for(90, dtype)
    assert set(ptx) == {"mixture_fwd_kernel", "mixture_bwd_x_kernel", "mixture_bwd_params_kernel"}
    assert all(".entry" in code for code in ptx.values())


def test_dispatch_and_availability(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not triton_backend.is_available("cpu") and not backend_available("triton", "cpu")
    assert triton_backend.is_available("cuda") == torch.cuda.is_available()
    # the variable only counts when it was set before triton was imported (as in the subprocess run)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_backend.is_available("cpu") == backend_available("triton", "cpu") == INTERPRETER
    x, mu, sigma, log_pi = make_inputs(2, 3, 4, "cpu")
    if INTERPRETER:
        y = mixture_loglik(x, mu, sigma, log_pi, backend="triton")
        torch.testing.assert_close(y, mixture_loglik_reference(x, mu, sigma, log_pi))
    else:
        with pytest.raises(RuntimeError, match="not available on cpu"):
            mixture_loglik(x, mu, sigma, log_pi, backend="triton")
        with pytest.raises(RuntimeError, match="interpreter"):
            triton_backend.mixture_loglik(x, mu, sigma, log_pi)


def test_bad_inputs_fail_with_one_line():
    x, mu, sigma, log_pi = make_inputs(2, 3, 4, "cpu")
    with pytest.raises(TypeError, match="float32 or float64"):
        triton_backend.mixture_loglik(x.half(), mu.half(), sigma.half(), log_pi.half())
    with pytest.raises(TypeError, match="share"):
        triton_backend.mixture_loglik(x, mu.double(), sigma, log_pi)
    with pytest.raises(ValueError, match=r"means must be \(n_out, 4\)"):
        triton_backend.mixture_loglik(x, mu[:, :3], sigma, log_pi)
    with pytest.raises(ValueError, match="x must be"):
        triton_backend.mixture_loglik(x[0], mu, sigma, log_pi)
    huge = x[:1].expand(2**29, 4)  # a view: 2**31 elements, nothing allocated
    with pytest.raises(ValueError, match="split the batch"):
        triton_backend.mixture_loglik(huge, mu, sigma, log_pi)
