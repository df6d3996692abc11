"""The fused C++ CPU backend against the reference formula: outputs, all four gradients, edge cases."""

import functools
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from ugmm import ops
from ugmm.nn import uGMMLayer
from ugmm.ops import available_backends, mixture_loglik, mixture_loglik_reference, resolve_backend

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler: the cpu backend cannot be built"
)

cpu = pytest.importorskip("ugmm.ops.cpu")


@pytest.fixture(scope="module", autouse=True)
def _built():
    # a compiler is present (see pytestmark), so a failed build is a bug, not a reason to skip
    assert cpu.is_available("cpu"), "the fused CPU kernel did not build (see the warning)"


def make_case(batch, n_out, n_in, *, dtype=torch.float32, sigma=(0.05, 1.5), drop=0.0, zeros=0.0, seed=0):
    """Random inputs and parameters; sigma log-uniform in ``sigma``; ``drop``: dropped-component rate."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n_in, generator=gen, dtype=torch.float64) * 1.5
    if zeros:
        x[torch.rand(batch, n_in, generator=gen) < zeros] = 0.0
    means = torch.randn(n_out, n_in, generator=gen, dtype=torch.float64)
    lo, hi = torch.tensor(sigma, dtype=torch.float64).log()
    stds = (lo + (hi - lo) * torch.rand(n_out, n_in, generator=gen, dtype=torch.float64)).exp()
    logits = torch.rand(n_out, n_in, generator=gen, dtype=torch.float64)
    if drop:
        dropped = torch.rand(n_out, n_in, generator=gen) < drop
        dropped[:, 0] = False  # keep every neuron alive here; dead neurons have their own test
        logits = logits.masked_fill(dropped, float("-inf"))
    log_weights = torch.log_softmax(logits, dim=1)
    return [t.to(dtype) for t in (x, means, stds, log_weights)]


def run(fn, inputs, grad_out, needs=(True, True, True, True)):
    leaves = [t.clone().requires_grad_(n) for t, n in zip(inputs, needs)]
    y = fn(*leaves)
    wrt = [t for t in leaves if t.requires_grad]
    grads = torch.autograd.grad(y, wrt, grad_out) if wrt else ()
    return y.detach(), list(grads)


def assert_matches_reference(inputs, needs=(True, True, True, True), seed=1, zero_inputs=True):
    """Outputs within 1e-5 relative, gradients within 1e-4 relative (of each gradient's largest entry)."""
    batch, n_out = inputs[0].shape[0], inputs[1].shape[0]
    grad_out = torch.randn(batch, n_out, generator=torch.Generator().manual_seed(seed), dtype=inputs[0].dtype)
    y, grads = run(functools.partial(cpu.mixture_loglik, zero_inputs=zero_inputs), inputs, grad_out, needs)
    y_ref, grads_ref = run(mixture_loglik_reference, inputs, grad_out, needs)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    assert len(grads) == len(grads_ref) == sum(needs)
    for got, want in zip(grads, grads_ref):
        assert torch.isfinite(got).all()
        scale = want.abs().max().item() + 1e-30
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize(
    "batch,n_out,n_in",
    [(1, 1, 1), (1, 1, 3), (3, 1, 17), (1, 5, 17), (7, 3, 1), (9, 4, 3), (5, 2, 785), (33, 17, 70), (64, 24, 785)],
)
def test_matches_reference_awkward_sizes(batch, n_out, n_in):
    assert_matches_reference(make_case(batch, n_out, n_in, seed=batch * 1000 + n_in))


@pytest.mark.parametrize("n_in", [3, 17, 785])
def test_dropout_masks(n_in):
    assert_matches_reference(make_case(11, 6, n_in, drop=0.5, seed=n_in))


@pytest.mark.parametrize("n_in", [1, 17, 785])
def test_extreme_sigmas(n_in):
    assert_matches_reference(make_case(6, 5, n_in, sigma=(1e-4, 1e3), seed=n_in))


@pytest.mark.parametrize("zero_path", [True, False])
@pytest.mark.parametrize("zeros,n_in", [(0.8, 785), (1.0, 17), (0.6, 3)])
def test_many_exact_zero_inputs(zeros, n_in, zero_path):
    # MNIST-like: most inputs are exactly 0, the rest in (0, 1]; both the zero-input path and the dense one
    x, means, stds, log_weights = make_case(40, 16, n_in, zeros=zeros, drop=0.2, seed=7)
    x = torch.where(x == 0, x, x.abs().clamp(max=1.0))
    for needs in [(True, True, True, True), (False, True, True, True), (True, False, False, False)]:
        assert_matches_reference([x, means, stds, log_weights], needs=needs, zero_inputs=zero_path)


def test_zero_input_path_at_mnist_size_is_exact_and_thread_independent():
    # a full MNIST layer (several tasks per thread, 70 neurons: a partial 64-neuron block) on 1 and 2 threads
    x, means, stds, log_weights = make_case(256, 70, 784, zeros=0.8, drop=0.2, seed=9)
    x = torch.where(x == 0, x, x.abs().clamp(max=1.0))
    assert_matches_reference([x, means, stds, log_weights], needs=(True, True, True, True))
    grad_out = torch.randn(256, 70, generator=torch.Generator().manual_seed(2))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(run(cpu.mixture_loglik, [x, means, stds, log_weights], grad_out))
    finally:
        torch.set_num_threads(threads)
    (y1, g1), (y2, g2) = results
    assert torch.equal(y1, y2) and all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))


def test_zero_input_path_context_manager_and_argument():
    """``zero_input_path(False)`` and ``zero_inputs=False`` select the dense kernel; the result is the same."""
    from ugmm.ops import zero_input_path

    x, means, stds, log_weights = make_case(40, 16, 785, zeros=0.8, seed=7)
    x = torch.where(x == 0, x, x.abs().clamp(max=1.0))
    y_zero = mixture_loglik(x, means, stds, log_weights, backend="cpu")
    with zero_input_path(False):
        y_ctx = mixture_loglik(x, means, stds, log_weights, backend="cpu")
    y_arg = mixture_loglik(x, means, stds, log_weights, backend="cpu", zero_inputs=False)
    assert torch.equal(y_ctx, y_arg)  # the same (dense) kernel
    torch.testing.assert_close(y_zero, y_arg, rtol=1e-5, atol=1e-5)
    with pytest.raises(KeyError), zero_input_path(False):
        raise KeyError  # restored after an exception
    import ugmm.ops

    assert ugmm.ops._zero_inputs_default is True


def test_kernel_threads_sets_the_kernels_thread_count_only(monkeypatch):
    """Inside ``kernel_threads(2)`` every extension call runs with 2 torch threads and torch's own ops keep 1."""
    from ugmm.ops import kernel_threads

    ext, seen = cpu._extension(), []

    class Recorder:  # the extension, noting the thread count each kernel call sees
        def __getattr__(self, name):
            def call(*args):
                seen.append((name, torch.get_num_threads()))
                return getattr(ext, name)(*args)

            return call

    x, means, stds, log_weights = make_case(32, 8, 50, zeros=0.5, seed=4)
    raw_std, logits = stds.log().requires_grad_(), log_weights.clone().requires_grad_()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        expected = torch.autograd.grad(
            mixture_loglik(x, means, *ops.component_params(raw_std, logits, None, 0.0, "exp", "cpu"), backend="cpu")
            .sum(), (raw_std, logits),
        )  # fmt: skip
        monkeypatch.setattr(cpu, "_extension", lambda: Recorder())
        with kernel_threads(2):
            y = mixture_loglik(x, means, *ops.component_params(raw_std, logits, None, 0.0, "exp", "cpu"), backend="cpu")
            assert torch.get_num_threads() == 1  # torch's own ops between the kernels
            grads = torch.autograd.grad(y.sum(), (raw_std, logits))
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    names = {name for name, _ in seen}
    assert {"forward", "backward", "component_params", "component_params_backward"} <= names
    assert all(n == 2 for _, n in seen) and after == 1
    for a, b in zip(grads, expected, strict=True):  # the same gradients on more threads
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="kernel_threads needs n >= 1"), kernel_threads(0):
        pass
    assert ops._kernel_threads is None


@pytest.mark.parametrize("zeros,n_in", [(0.8, 785), (0.6, 3)])
def test_standardised_background_takes_the_zero_path(zeros, n_in):
    # standardised MNIST: the background is -mean/std, not 0; the kernel takes the minimum as its background
    x, means, stds, log_weights = make_case(40, 16, n_in, zeros=zeros, drop=0.2, seed=3)
    background = -0.1307 / 0.3081
    x = torch.where(x == 0, torch.full_like(x, background), x.abs().clamp(max=1.0) / 0.3081 + background)
    assert cpu._extension().background(x) == pytest.approx(background)
    assert_matches_reference([x, means, stds, log_weights])
    dense = cpu.mixture_loglik(x, means, stds, log_weights, zero_inputs=False)
    torch.testing.assert_close(cpu.mixture_loglik(x, means, stds, log_weights), dense, rtol=1e-5, atol=1e-5)


def test_background_is_zero_first_then_the_minimum():
    ext = cpu._extension()
    assert ext.background(torch.tensor([[0.0, 0.0, -1.0, 2.0]])) == 0.0  # half the inputs are 0
    assert ext.background(torch.tensor([[-1.0, -1.0, 0.0, 2.0]])) == -1.0
    assert ext.background(make_case(8, 3, 17, seed=4)[0]) is None  # no dominant value: the dense path
    assert ext.background(torch.full((2, 3), float("-inf"))) is None
    assert ext.background(torch.empty(0, 3)) is None


@pytest.mark.parametrize("n_bad", [1, 16])
def test_zero_inputs_where_the_shift_underflows(n_bad):
    """A neuron's shift max_k c[j,k] can sit far above every term (a narrow, heavy component far from all
    inputs): the zero-input path must recompute those rows exactly (a few: row by row; many: dense)."""
    x, means, stds, log_weights = make_case(24, 32, 50, zeros=0.8, seed=11)
    x = torch.where(x == 0, x, x.abs().clamp(max=1.0))
    bad = slice(0, n_bad)
    stds[bad] = 0.01
    means[bad] = 3.0 + torch.rand(n_bad, 50)  # every input lies > 200 sigma away: terms ~ exp(-2e4)
    stds[bad, 0] = 1e-4  # the shift: c = log pi + 9.2 - 0.92, its own term ~ exp(-5e8)
    means[bad, 0] = 50.0
    log_weights[bad] = torch.log_softmax(torch.cat([torch.full((n_bad, 1), 5.0), torch.zeros(n_bad, 49)], 1), 1)
    y = cpu.mixture_loglik(x, means, stds, log_weights)
    assert torch.isfinite(y).all() and (y[:, bad] < -1000).all()
    assert_matches_reference([x, means, stds, log_weights])


@pytest.mark.parametrize(
    "needs",
    [(True, False, False, False), (False, True, True, True), (False, False, True, False), (True, True, False, True)],
)
def test_any_subset_requires_grad(needs):
    assert_matches_reference(make_case(13, 7, 29, drop=0.3, seed=3), needs=needs)


def test_no_grad_and_non_contiguous_inputs():
    x, means, stds, log_weights = make_case(8, 5, 33, seed=4)
    x_t = x.t().contiguous().t()  # same values, column-major
    wide = torch.stack([means, means], dim=2)[:, :, 0]  # a strided view
    assert not x_t.is_contiguous() and not wide.is_contiguous()
    with torch.no_grad():
        y = cpu.mixture_loglik(x_t, wide, stds, log_weights)
    torch.testing.assert_close(y, mixture_loglik_reference(x, means, stds, log_weights), rtol=1e-5, atol=1e-5)
    assert_matches_reference([x_t, wide, stds, log_weights])


def test_dead_neurons_give_minus_inf_and_zero_gradients():
    x, means, stds, log_weights = make_case(10, 4, 17, zeros=0.5, seed=5)
    log_weights[1] = float("-inf")  # every component of neuron 1 dropped
    leaves = [t.clone().requires_grad_() for t in (x, means, stds, log_weights)]
    y = cpu.mixture_loglik(*leaves)
    assert torch.isneginf(y[:, 1]).all() and torch.isfinite(y[:, [0, 2, 3]]).all()
    (y[:, [0, 2, 3]].sum() + 0 * y[:, 1].sum()).backward()  # gradient 0 flows into the -inf column
    for leaf in leaves:
        assert not torch.isnan(leaf.grad).any()
    for leaf in leaves[1:]:
        assert (leaf.grad[1] == 0).all()
    # the living neurons match the reference on the sub-problem without the dead one
    alive = [0, 2, 3]
    assert_matches_reference([x, means[alive], stds[alive], log_weights[alive]])
    torch.testing.assert_close(
        y[:, alive].detach(), mixture_loglik_reference(x, means[alive], stds[alive], log_weights[alive])
    )


def test_float64_gradcheck():
    x, means, stds, log_weights = make_case(4, 3, 5, dtype=torch.float64, sigma=(0.3, 2.0), seed=6)
    leaves = [t.requires_grad_() for t in (x, means, stds, log_weights)]
    assert torch.autograd.gradcheck(cpu.mixture_loglik, leaves)
    # and with a wider row that exercises the vector loops and their remainders
    x, means, stds, log_weights = make_case(3, 2, 37, dtype=torch.float64, sigma=(0.3, 2.0), seed=8)
    leaves = [t.requires_grad_() for t in (x, means, stds, log_weights)]
    assert torch.autograd.gradcheck(cpu.mixture_loglik, leaves)


def test_float64_matches_reference_tightly():
    inputs = make_case(9, 4, 131, dtype=torch.float64, drop=0.3, zeros=0.6, seed=9)
    grad_out = torch.randn(9, 4, dtype=torch.float64)
    y, grads = run(cpu.mixture_loglik, inputs, grad_out)
    y_ref, grads_ref = run(mixture_loglik_reference, inputs, grad_out)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_bad_inputs_fail_with_one_line():
    x, means, stds, log_weights = make_case(2, 3, 4)
    with pytest.raises(ValueError, match="shape mismatch"):
        cpu.mixture_loglik(x[:, :3], means, stds, log_weights)
    with pytest.raises(TypeError, match="one dtype"):
        cpu.mixture_loglik(x.double(), means, stds, log_weights)
    with pytest.raises(TypeError, match="float32 or float64"):
        cpu.mixture_loglik(*(t.half() for t in (x, means, stds, log_weights)))


def test_auto_picks_cpu_and_layer_matches_reference():
    assert resolve_backend("auto", "cpu") == "cpu"
    assert available_backends("cpu")[0] == "cpu"
    fast = uGMMLayer(785, 9, dropout=0.3)
    slow = uGMMLayer(785, 9, dropout=0.3, backend="reference")
    slow.load_state_dict(fast.state_dict())
    x = torch.rand(17, 785) * (torch.rand(17, 785) < 0.3)  # sparse, like MNIST pixels
    drop = fast.sample_dropout_mask()
    y = fast(x, drop=drop)
    assert "MixtureLoglik" in y.grad_fn.name()  # the fused op (eager: its autograd.Function)
    y_ref = slow(x, drop=drop)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    y.sum().backward()
    y_ref.sum().backward()
    for p_fast, p_slow in zip(fast.parameters(), slow.parameters()):
        scale = p_slow.grad.abs().max().item()
        torch.testing.assert_close(p_fast.grad, p_slow.grad, rtol=1e-4, atol=1e-4 * scale)
    torch.testing.assert_close(
        mixture_loglik(x, fast.means, fast.stds, fast.log_weights, backend="cpu"), fast.eval()(x)
    )


def test_build_failure_warns_once_and_falls_back(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-ugmm")
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        cpu._build()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cpu._extension.__wrapped__() is None
    assert len(caught) == 1 and "no C++ compiler" in str(caught[0].message)
    assert "reference backend" in str(caught[0].message)


def test_fallback_in_a_fresh_process():
    """Without a compiler, backend='auto' warns exactly once and computes with the reference."""
    code = (
        "import warnings, torch\n"
        "from ugmm.nn import uGMMLayer\n"
        "from ugmm.ops import resolve_backend\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    layer = uGMMLayer(5, 3)\n"
        "    for _ in range(3): y = layer(torch.randn(4, 5))\n"
        "    assert resolve_backend('auto', 'cpu') == 'reference'\n"
        "msgs = [str(m.message) for m in w if 'fused CPU kernel' in str(m.message)]\n"
        "assert len(msgs) == 1, msgs\n"
        "assert torch.isfinite(y).all()\n"
        "print(msgs[0])\n"
    )
    env = {**os.environ, "CXX": "no-such-compiler-ugmm"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "no C++ compiler" in out.stdout and "reference backend" in out.stdout


def test_build_failure_cause_is_the_compiler_error_line():
    err = RuntimeError(
        "Error building extension 'ugmm_cpu_x': [1/2] c++ -MMD -O3 -march=native -c ugmm_cpu.cpp\n"
        "ugmm_cpu.cpp:3:1: error: expected ';' before '}' token\nninja: build stopped: subcommand failed."
    )
    assert cpu._cause(err) == "ugmm_cpu.cpp:3:1: error: expected ';' before '}' token"
    assert cpu._cause(RuntimeError("x" * 500)).endswith("...") and len(cpu._cause(RuntimeError("x" * 500))) == 240


@pytest.mark.parametrize("zeros", [0.0, 0.8])
def test_nan_inputs_propagate(zeros):
    """A NaN input must show in the output, as with the reference, never be silently dropped."""
    x, means, stds, log_weights = make_case(4, 3, 40, zeros=zeros, seed=12)
    x[1, 5] = float("nan")
    y = cpu.mixture_loglik(x, means, stds, log_weights)
    y_ref = mixture_loglik_reference(x, means, stds, log_weights)
    assert torch.isnan(y[1]).all() and torch.isnan(y_ref[1]).all()
    torch.testing.assert_close(y[[0, 2, 3]], y_ref[[0, 2, 3]], rtol=1e-5, atol=1e-5)


def test_empty_batch():
    x, means, stds, log_weights = make_case(0, 3, 5)
    leaves = [t.requires_grad_() for t in (x, means, stds, log_weights)]
    y = cpu.mixture_loglik(*leaves)
    assert y.shape == (0, 3)
    y.sum().backward()
    assert all((leaf.grad == 0).all() for leaf in leaves[1:])


@pytest.mark.parametrize(
    "zeros,drop,needs",
    [(0.0, 0.0, (True, True, True, True)), (0.8, 0.3, (True, True, True, True)), (0.0, 0.5, (False, True, True, True))],
)
def test_opcheck_registration(zeros, drop, needs):
    """torch.library.opcheck: schema, fake (meta) implementation, autograd registration, dispatch."""
    x, means, stds, log_weights = make_case(12, 5, 37, zeros=zeros, drop=drop, seed=21)
    if zeros:
        x = torch.where(x == 0, x, x.abs().clamp(max=1.0))
    args = [t.requires_grad_(n) for t, n in zip((x, means, stds, log_weights), needs)]
    for zero_inputs in (True, False):
        torch.library.opcheck(torch.ops.ugmm.cpu_mixture_loglik.default, (*args, zero_inputs))
    y = cpu.mixture_loglik(*(t.detach() for t in args))
    g = torch.randn_like(y)
    backward_args = (g, *(t.detach() for t in args), y, True, True, zeros > 0)
    torch.library.opcheck(torch.ops.ugmm.cpu_mixture_loglik_backward.default, backward_args)


def test_dense_kernel_is_deterministic():
    x, means, stds, log_weights = make_case(67, 33, 301, drop=0.2, seed=13)
    g = torch.randn(67, 33, generator=torch.Generator().manual_seed(0))
    first = run(functools.partial(cpu.mixture_loglik, zero_inputs=False), [x, means, stds, log_weights], g)
    for _ in range(3):
        again = run(functools.partial(cpu.mixture_loglik, zero_inputs=False), [x, means, stds, log_weights], g)
        assert torch.equal(first[0], again[0]) and all(torch.equal(a, b) for a, b in zip(first[1], again[1]))


@pytest.mark.parametrize("n_out", [1, 7, 32])
def test_dense_kernel_whole_dropped_rows_and_tails(n_out):
    """Odd neuron counts (the backward pads to pairs), ragged row tiles, whole -inf rows, extreme sigmas."""
    x, means, stds, log_weights = make_case(13, n_out, 45, sigma=(1e-3, 1e2), drop=0.6, seed=n_out)
    if n_out > 1:
        log_weights[n_out // 2] = float("-inf")
        y = cpu.mixture_loglik(x, means, stds, log_weights, zero_inputs=False)
        assert torch.isneginf(y[:, n_out // 2]).all()
        alive = [j for j in range(n_out) if j != n_out // 2]
        assert_matches_reference([x, means[alive], stds[alive], log_weights[alive]], zero_inputs=False)
    else:
        assert_matches_reference([x, means, stds, log_weights], zero_inputs=False)


def test_dense_kernel_against_float64_reference():
    """float32 kernel vs the float64 formula: outputs 1e-5 relative, gradients 1e-4 of their largest entry."""
    inputs = make_case(40, 24, 200, sigma=(0.05, 3.0), drop=0.3, seed=17)
    g = torch.randn(40, 24, generator=torch.Generator().manual_seed(2))
    y, grads = run(functools.partial(cpu.mixture_loglik, zero_inputs=False), inputs, g)
    y64, grads64 = run(mixture_loglik_reference, [t.double() for t in inputs], g.double())
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, grads64):
        scale = want.abs().max().item()
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("n_in", [5, 8, 45, 301])
def test_vectorised_dense_forward_matches_the_portable_one(n_in):
    """The SIMD dense forward (AVX-512 or AVX2, whichever this CPU built) against the portable loop, on the same
    tables: 1e-5 relative, -inf rows and the exact fallback for rows far below the neuron's bound included."""
    ext = cpu._extension()
    x, means, stds, log_weights = make_case(23, 9, n_in, sigma=(1e-3, 1e2), drop=0.5, seed=n_in)
    log_weights[4] = float("-inf")  # a dead neuron: -inf on every row
    x[3] += 1e3  # far from every mean: the shifted sum underflows, the row is recomputed exactly
    inv_sigma, c = cpu._derived(stds, log_weights)
    vectorised = ext.forward(x, means, inv_sigma, c, False)
    portable = ext.forward(x, means, inv_sigma, c, False, False)
    assert torch.isneginf(vectorised[:, 4]).all() and torch.isneginf(portable[:, 4]).all()
    alive = torch.arange(9) != 4
    assert torch.isfinite(vectorised[:, alive]).all()
    torch.testing.assert_close(vectorised[:, alive], portable[:, alive], rtol=1e-5, atol=1e-5)
    assert ext.has_avx512 or ext.has_avx2 or torch.equal(vectorised, portable)


@pytest.mark.parametrize("n_in,n_out,zeros", [(5, 9, 0.0), (45, 7, 0.0), (301, 9, 0.0), (45, 19, 0.7), (301, 33, 0.7)])
def test_vectorised_backward_matches_the_portable_one(n_in, n_out, zeros):
    """The SIMD backward (AVX-512 or AVX2) against the portable loops on the same tables, dense and zero-input
    paths: odd neuron counts (padded pairs), input tails, a dead neuron and a row far from every mean (its
    forward is recomputed exactly); every gradient within 1e-4 of its largest entry."""
    ext = cpu._extension()
    x, means, stds, log_weights = make_case(23, n_out, n_in, sigma=(1e-3, 1e2), drop=0.5, zeros=zeros, seed=n_in)
    log_weights[n_out // 2] = float("-inf")
    x[3] += 1e3
    inv_sigma, c = cpu._derived(stds, log_weights)
    g = torch.randn(23, n_out, generator=torch.Generator().manual_seed(n_out))
    for sparse in (False, True):
        y_vec = ext.forward(x, means, inv_sigma, c, sparse, True)
        y_port = ext.forward(x, means, inv_sigma, c, sparse, False)
        torch.testing.assert_close(y_vec, y_port, rtol=1e-5, atol=1e-5)
        for need_x, need_params in [(True, True), (True, False), (False, True)]:
            vec = ext.backward(g, x, means, inv_sigma, c, y_vec, need_x, need_params, sparse, True)
            port = ext.backward(g, x, means, inv_sigma, c, y_port, need_x, need_params, sparse, False)
            wanted = [need_x] + [need_params] * 3
            for got, want, needed in zip(vec, port, wanted):
                assert (got is not None and got.numel() > 0) == needed
                if needed:
                    assert torch.isfinite(got).all()
                    assert want.abs().max() > 0
                    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


# ---- the fused component parameters (sigma, log pi) -------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("std_param", ["exp", "softplus"])
@pytest.mark.parametrize("with_drop", [False, True])
def test_component_params_match_the_composite(dtype, std_param, with_drop):
    from ugmm.ops.reference import component_params_reference

    gen = torch.Generator().manual_seed(5)
    # raw spans both softplus branches (threshold 20) and sigmas far below and above the floor
    raw = (torch.randn(37, 53, generator=gen, dtype=dtype) * 8).requires_grad_()
    logits = (torch.randn(37, 53, generator=gen, dtype=dtype) * 3).requires_grad_()
    drop = torch.rand(37, 53, generator=gen) < 0.4 if with_drop else None
    fused = cpu.component_params(raw, logits, drop, 0.1, std_param)
    plain = component_params_reference(raw, logits, drop, 0.1, std_param)
    rtol = 2e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(fused[0], plain[0], rtol=rtol, atol=0)
    torch.testing.assert_close(fused[1], plain[1], rtol=rtol, atol=rtol)  # -inf where dropped, in both
    g_sig, g_lw = torch.randn(2, 37, 53, generator=gen, dtype=dtype)
    for outputs_used in ((0, 1), (0,), (1,)):  # an unused output has no gradient
        grads = []
        for out in (fused, plain):
            terms = [(out[0] * g_sig).sum(), (out[1].masked_fill(out[1].isinf(), 0) * g_lw).sum()]
            loss = sum(terms[i] for i in outputs_used)
            grads.append(torch.autograd.grad(loss, (raw, logits), retain_graph=True, materialize_grads=True))
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=rtol, atol=10 * rtol)


def test_component_params_opcheck_and_gradcheck():
    gen = torch.Generator().manual_seed(6)
    raw = torch.randn(6, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(6, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    drop = torch.rand(6, 9, generator=gen) < 0.3
    drop[:, 0] = False  # no neuron loses every component
    for mask in (None, drop):
        for softplus in (False, True):
            torch.library.opcheck(torch.ops.ugmm.cpu_component_params.default, (raw, logits, mask, 0.1, softplus))
            std_param = "softplus" if softplus else "exp"
            # gradients through both outputs; dropped components' log pi (-inf) are masked out of the sum
            fn = lambda r, lg, m=mask, p=std_param: [  # noqa: E731
                t.masked_fill(t.isinf(), 0) for t in cpu.component_params(r, lg, m, 0.1, p)
            ]
            assert torch.autograd.gradcheck(fn, (raw, logits))
    out = cpu.component_params(raw.detach(), logits.detach(), None, 0.1, "exp")
    backward_args = (*torch.randn(2, 6, 9, dtype=torch.float64), raw.detach(), out[1], drop, False)
    torch.library.opcheck(torch.ops.ugmm.cpu_component_params_backward.default, backward_args)


def test_layer_forward_takes_the_fused_parameters_on_cpu_only():
    """backend=cpu: one fused op for (sigma, log pi); backend=reference: the composite; same outputs, same grads."""
    from ugmm.nn import uGMMLayer

    torch.manual_seed(0)
    fused = uGMMLayer(20, 7, dropout=0.3, std_floor=0.1, backend="cpu")
    plain = uGMMLayer(20, 7, dropout=0.3, std_floor=0.1, backend="reference")
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(11, 20)
    drop = torch.rand(7, 20) < 0.3
    drop[:, 0] = False
    outs = [layer(x, drop=drop) for layer in (fused, plain)]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for out in outs:
        out.sum().backward()
    for a, b in zip(fused.parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)
    with torch.profiler.profile() as prof:
        fused(x, drop=drop)
    names = {e.name for e in prof.events()}
    assert "ugmm::cpu_component_params" in names and "aten::_log_softmax" not in names
    # training mode samples the mask: in one op on the cpu backend, by the composite on the reference one
    for layer, fused_ops in ((fused, True), (plain, False)):
        with torch.profiler.profile() as prof:
            layer.train()(x)
        names = {e.name for e in prof.events()}
        assert ("ugmm::cpu_dropout_mask" in names) == fused_ops
        assert ("ugmm::cpu_component_params" in names) == fused_ops


@pytest.mark.parametrize("n_in,p", [(784, 0.2), (4, 0.7), (3, 0.99)])
def test_dropout_mask_in_one_pass_is_the_composite_bit_for_bit(n_in, p):
    """The fused mask equals the composite's (same draws, same rescues of neurons that lost every component)."""
    from ugmm.ops.reference import dropout_mask_reference

    gen = torch.Generator().manual_seed(n_in)
    u = torch.rand(300, n_in, generator=gen)
    rescue = torch.randint(n_in, (300, 1), generator=gen)
    fused = cpu.dropout_mask(u, rescue, p)
    assert torch.equal(fused, dropout_mask_reference(u, rescue, p))
    assert not fused.all(dim=1).any()
    if p > 0.9:  # some neurons drew all-dropped and were rescued
        assert ((u < p).all(dim=1)).any()
    torch.library.opcheck(torch.ops.ugmm.cpu_dropout_mask.default, (u, rescue, p))


@pytest.mark.parametrize("zeros", [0.0, 0.7])
def test_eager_path_is_the_registered_op_bit_for_bit(zeros):
    """Eager calls run the op's implementation through an autograd.Function (torch.library's Python layer
    costs more than a small layer's kernels); the registered op (what torch.compile traces) gives the same
    outputs and gradients to the bit, and neither differentiates twice."""
    x, means, stds, log_weights = make_case(13, 6, 40, drop=0.3, zeros=zeros, seed=5)
    raw, logits = torch.randn(6, 40), torch.randn(6, 40)
    results = []
    for eager in (True, False):
        leaves = [t.clone().requires_grad_() for t in (x, means, raw, logits)]
        xl, ml, rl, ll = leaves
        if eager:
            stds_, lw = cpu.component_params(rl, ll, None, 0.05, "exp")
            y = cpu.mixture_loglik(xl, ml, stds_, lw)
        else:
            stds_, lw = torch.ops.ugmm.cpu_component_params(rl, ll, None, 0.05, False)
            y = torch.ops.ugmm.cpu_mixture_loglik(xl, ml, stds_, lw, True)
        (g,) = torch.autograd.grad(y.sum(), [xl], create_graph=True)
        with pytest.raises(RuntimeError):
            torch.autograd.grad(g.sum(), leaves)
        y.backward(torch.ones_like(y))
        results.append([y.detach(), *(t.grad for t in leaves)])
    for a, b in zip(*results):
        assert torch.equal(a, b)
