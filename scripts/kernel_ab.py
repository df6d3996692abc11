"""Interleaved A/B of the CPU kernel's entry points: another build (before) against this one (after).

Calls ``forward`` / ``backward`` of the compiled extensions directly on a 784 -> 128 layer at B = 256,
real MNIST batches (the zero-input path) and dense uniform inputs, alternating before and after in one
process for ``--repeats`` rounds, and prints the minimum (and median) of each: on a machine shared with
other work, both see the same load.

    python scripts/kernel_ab.py --threads 1 --baseline-so /tmp/ugmm_benchmark_baseline_ext/*/ugmm_cpu_*.so
    OMP_WAIT_POLICY=PASSIVE python scripts/kernel_ab.py --threads 2        # this build alone

The baseline ``.so`` is any earlier build of ``csrc/ugmm_cpu.cpp`` (``scripts/benchmark.py --baseline-src``
leaves main's in ``$TMPDIR/ugmm_benchmark_baseline_ext``), with or without the ``use_simd`` argument.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ugmm.ops import cpu
from ugmm.ops.cpu import _derived


def load_so(path: str):
    name = Path(path).name.split(".")[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _takes_use_simd(module) -> bool:
    """Builds since the AVX2 kernels take a trailing ``use_simd`` argument; earlier ones do not."""
    return "use_simd" in (module.forward.__doc__ or "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=12)
    default_so = glob.glob(str(Path(tempfile.gettempdir()) / "ugmm_benchmark_baseline_ext" / "*" / "*.so"))
    parser.add_argument("--baseline-so", default=default_so[0] if default_so else None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    after = cpu._extension()
    before = load_so(args.baseline_so) if args.baseline_so else None
    data = Path(os.environ.get("UGMM_DATA_DIR", "../shared/data")) / "MNIST" / "raw" / "train-images-idx3-ubyte"
    torch.manual_seed(0)
    inputs = {"dense": torch.rand(256, 784)}
    if data.exists():
        pixels = np.fromfile(data, dtype=np.uint8, count=256 * 784, offset=16)
        inputs["mnist"] = torch.from_numpy(pixels.astype(np.float32).reshape(256, 784) / 255.0)
    mu, sigma = torch.randn(128, 784), torch.rand(128, 784) + 0.05
    inv, c = _derived(sigma, torch.log_softmax(torch.rand(128, 784), 1))
    g = torch.randn(256, 128)
    cases = {}
    simd = (True,) if before is not None and _takes_use_simd(before) else ()
    for name, x in inputs.items():
        y = after.forward(x, mu, inv, c, True, True)
        need_x = name == "dense"  # a hidden layer needs dx; MNIST's first layer only the parameters
        cases[f"{name} forward"] = (
            (lambda x=x: before.forward(x, mu, inv, c, True, *simd)) if before else None,
            lambda x=x: after.forward(x, mu, inv, c, True, True),
        )
        cases[f"{name} backward"] = (
            (lambda x=x, y=y, n=need_x: before.backward(g, x, mu, inv, c, y, n, True, True, *simd)) if before else None,
            lambda x=x, y=y, n=need_x: after.backward(g, x, mu, inv, c, y, n, True, True, True),
        )
    times = {k: ([], []) for k in cases}
    for _ in range(args.repeats):
        for key, fns in cases.items():
            for i, fn in enumerate(fns):
                if fn is None:
                    continue
                t0 = time.perf_counter()
                fn()
                times[key][i].append(time.perf_counter() - t0)
    terms = 256 * 128 * 784
    print(f"threads {args.threads}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, min (median) ms")
    for key, (b, a) in times.items():
        rate = terms / min(a) / 1e9
        line = f"{key:16s} after {1e3 * min(a):7.2f} ({1e3 * statistics.median(a):7.2f}) = {rate:.2f} G terms/s"
        if b:
            line += f"   before {1e3 * min(b):7.2f} ({1e3 * statistics.median(b):7.2f})   {min(b) / min(a):.2f}x"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
