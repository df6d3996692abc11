"""The CPU's limit for the uGMM op: the fused kernel's own exp, an FMA loop, and torch.exp streaming memory.

A dense uGMM term costs one exponential plus a few vector instructions (AVX-512: forward 13 instructions per
16 terms, 10 of them the exp, backward 22; AVX2: forward 15 per 8 terms, 11 the exp, backward 23), so the
rate of the kernel's exp on registers is the ceiling of the forward, and the FMA rate times the lanes per
instruction count an estimate of what each direction can reach.
``torch.exp`` over as many floats as a 784 -> 128, B = 256 layer has terms (25.7 M) is the yardstick the
issue compares against: the rate at which PyTorch merely streams memory through an exponential.

    python scripts/limit.py                  # 1 and 2 threads, JSON to ./limit.json
    python scripts/limit.py --threads 1 --repeats 20 --out limit.json

Every figure is the best (min time) of ``--repeats``; on a shared machine compare ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

# vector instructions per vector of terms (forward, backward), the exponential included, by lanes per vector:
# the AVX-512 kernels (16) and the AVX2 ones (8); see csrc/ugmm_cpu.cpp
OPS_PER_VECTOR = {16: (13, 22), 8: (15, 23)}
TERMS = 256 * 128 * 784  # the 784 -> 128, B = 256 layer


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        return platform.processor() or "?"


def best(fn, repeats: int) -> tuple[float, float]:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def measure(threads: int, repeats: int) -> dict:
    import torch

    from ugmm.ops import cpu

    torch.set_num_threads(threads)
    ext = cpu._extension()
    out: dict = {"threads": threads}
    lanes = getattr(ext, "simd_lanes", 0) if ext is not None else 0
    if lanes in OPS_PER_VECTOR:
        out["simd_lanes"] = lanes
        fwd_ops, bwd_ops = OPS_PER_VECTOR[lanes]
        n = (1 << 28) // lanes  # vectors
        t, med = best(lambda: ext.bench_exp2(n), repeats)
        out["kernel_exp2_G_per_s"] = lanes * n / t / 1e9
        out["kernel_exp2_G_per_s_median"] = lanes * n / med / 1e9
        t, med = best(lambda: ext.bench_fma(n * 4), repeats)
        out["fma_G_lanes_per_s"] = lanes * 4 * n / t / 1e9  # one lane-FMA = 2 flops
        out["fma_G_lanes_per_s_median"] = lanes * 4 * n / med / 1e9
        vec_rate = out["fma_G_lanes_per_s"] / lanes  # vector instructions per second (FMA-bound)
        out["forward_limit_G_terms_per_s"] = lanes * vec_rate / fwd_ops
        out["backward_limit_G_terms_per_s"] = lanes * vec_rate / bwd_ops
    src = torch.rand(TERMS)
    dst = torch.empty_like(src)
    t, med = best(lambda: torch.exp(src, out=dst), repeats)
    out["torch_exp_G_per_s"] = TERMS / t / 1e9
    out["torch_exp_G_per_s_median"] = TERMS / med / 1e9
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="limit.json")
    args = parser.parse_args(argv)
    import torch

    report = {"cpu_model": cpu_model(), "torch": torch.__version__, "results": []}
    print(f"uGMM limit on {report['cpu_model']} (best of {args.repeats})")
    for threads in args.threads:
        r = measure(threads, args.repeats)
        report["results"].append(r)
        parts = [f"{k} {v:.3g}" for k, v in r.items() if k != "threads" and not k.endswith("median")]
        print(f"threads {threads}: " + ", ".join(parts))
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
