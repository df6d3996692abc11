"""Benchmark the uGMM op's backends against each other and against the same-topology MLP.

For every backend available on the device (``reference``, ``cpu`` on CPU; ``reference``, ``triton`` on
CUDA) and for the MLP, at the paper's MNIST size (784-128-64-10, batch 256) and a larger one
(784-512-256-10, batch 256), it measures

- ``forward``: inference, ``net(x)`` in eval mode under ``torch.no_grad()``;
- ``fwd_bwd``: training mode, zero_grad + cross-entropy forward + backward;
- ``step``: one full training step: zero_grad + forward + backward + ``Adam.step()``, the optimizer built as
  ``train.py`` builds it (fused Adam);
- ``cpu_median_ms`` (JSON): the same medians in CPU time of the process (all threads), a check on the
  wall-clock numbers when other work competes for the cores;
- ``peak_mb``: peak memory of the training step. CPU: the growth of the process's peak resident set
  (``getrusage(RUSAGE_SELF).ru_maxrss``) over its resident set just before the first step, in a
  fresh process that has only built the model and loaded the batches, so the high-water mark is the
  step's. CUDA: ``torch.cuda.max_memory_allocated`` over the allocation before the first step.

plus ``fwd_bwd`` of one ``uGMMLayer`` 784 -> 128 at batch 256 (the layer alone, per backend). The
networks use the paper's component dropout 0.2 on the first layer (dropout 0.2 on the MLP's inputs).
Times are medians over ``--repeats`` after warm-up, wall clock (``time.perf_counter``, CUDA
synchronised). Every case runs in its own subprocess (``--case``), one after the other, so that one
case's memory high-water mark and allocator caches never leak into another's; the ratios (speedup over
the reference, multiple of the MLP, memory over the reference) come from one run of this script.

Inputs are real MNIST batches (the first ``batch x 8`` training images, scaled to [0, 1]) when
torchvision finds MNIST under ``$UGMM_DATA_DIR`` or ``../shared/data``; otherwise MNIST-like sparse
inputs (81% exact zeros, the rest uniform in (0, 1]). The JSON says which.

    python scripts/benchmark.py                        # full run on cuda if present, else cpu
    python scripts/benchmark.py --device cpu --out benchmark_cpu.json
    python scripts/benchmark.py --device cpu --threads 1     # one torch thread per case
    python scripts/benchmark.py --device cpu --threads 1 --kernel-threads 2   # torch's ops on 1, the kernels on 2
    python scripts/benchmark.py --device cpu --backends cpu --sizes mnist --no-zero-inputs   # dense kernel
    python scripts/benchmark.py --quick                # tiny sizes, seconds (used by the tests)
    python scripts/benchmark.py --device cpu --sizes mnist mnist-dense --backends cpu --rounds 3 \
        --limit --baseline-src ../main/src            # before (main) and after, interleaved, with the limit
    python scripts/benchmark.py --device cpu --sizes mnist --backends cpu --epochs   # + train.py epoch ratio

Terms: a uGMM layer computes B x n_out x n_in terms per direction; the layer cases report G terms/s of the
forward (``forward``) and of the backward (``fwd_bwd`` minus ``forward``), and with ``--limit`` the
machine's yardsticks from ``scripts/limit.py`` (the kernel's exp2 on registers, torch.exp streaming as many
floats): the issue's targets are forward >= 2x and forward+backward >= 1x torch.exp's elements/s.
``layer 784->128 dense`` feeds uniform [0, 1) inputs (no exact zeros: the dense kernel), ``mnist-dense`` the
network at MNIST size on such inputs; ``mnist`` real MNIST batches (the zero-input path).

Threads wait passively (``OMP_WAIT_POLICY=PASSIVE`` in every case's process, unless ``--omp-wait-policy``
says otherwise): on a machine shared with other work, spinning OpenMP workers steal the cores the working
threads need (measured on a loaded 2-core machine: a dense layer's backward 38 ms spinning, 5.8 ms passive).
``--interleaved N`` adds, per size, one process that alternates N training steps of the uGMM-NN with N of the
MLP on the same batches (``step_vs_mlp`` from the two medians): the fairest ratio on a machine whose load drifts
between the separate processes. ``--rounds N`` runs the whole list of cases N times, one after the other, and
keeps each case's best round (its lowest median): cases measured in the same minutes see the same load.
``--baseline-src`` adds every case again on another source tree (e.g. ``main``'s ``src``), interleaved, as
``<backend>@baseline``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MNIST_ZERO_FRACTION = 0.81  # share of exactly-0 pixels in MNIST training images

# name -> (n_inputs, hidden, n_outputs, batch); sizes ending in "-dense" feed uniform [0, 1) inputs
SIZES = {
    "mnist": (784, [128, 64], 10, 256),
    "mnist-dense": (784, [128, 64], 10, 256),
    "large": (784, [512, 256], 10, 256),
}
QUICK_SIZES = {"quick": (784, [16, 8], 10, 32)}
LAYER = (784, 128, 256)  # the single-layer baseline: n_in, n_out, batch
QUICK_LAYER = (784, 16, 32)
DROPOUT = 0.2
# targets of issue 13 (ratios on the CPU, fused backend): steps against the MLP
TARGETS = {"mnist_step_vs_mlp_max": 2.0, "dense_step_vs_mlp_max": 6.0}


# ---------------------------------------------------------------------------------------------
# one case, in its own process
# ---------------------------------------------------------------------------------------------
def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _data_dir() -> Path:
    return Path(os.environ.get("UGMM_DATA_DIR", REPO.parent / "shared" / "data"))


def load_batches(n_inputs: int, batch: int, n_batches: int, n_classes: int, device, dense: bool = False):
    """``n_batches`` (x, y) batches: real MNIST when available (and 784 inputs), else MNIST-like;
    ``dense``: uniform [0, 1) inputs (no exact zeros)."""
    import numpy as np
    import torch

    source = "synthetic MNIST-like sparse inputs (81% exact zeros)"
    n = batch * n_batches
    raw = _data_dir() / "MNIST" / "raw"
    if dense:
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(n, n_inputs, generator=gen)
        y = torch.randint(n_classes, (n,), generator=gen)
        source = "dense uniform [0, 1) inputs"
    elif n_inputs == 784 and (raw / "train-images-idx3-ubyte").exists():
        # read only the bytes needed (idx format: 16-byte header, then 28x28 uint8 per image), so that
        # loading leaves no memory high-water mark above the process's resident set
        images = np.fromfile(raw / "train-images-idx3-ubyte", dtype=np.uint8, count=n * 784, offset=16)
        labels = np.fromfile(raw / "train-labels-idx1-ubyte", dtype=np.uint8, count=n, offset=8)
        x = torch.from_numpy(images.astype(np.float32).reshape(-1, 784) / 255.0)
        y = torch.from_numpy(labels.astype(np.int64)) % n_classes
        source = f"real MNIST training images from {raw}"
        if len(x) < n:  # fewer images than asked: cycle them
            reps = -(-n // len(x))
            x, y = x.repeat(reps, 1)[:n], y.repeat(reps)[:n]
    else:
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(n, n_inputs, generator=gen)
        x[torch.rand(n, n_inputs, generator=gen) < MNIST_ZERO_FRACTION] = 0.0
        y = torch.randint(n_classes, (n,), generator=gen)
    xs = [t.to(device) for t in x.split(batch)]
    ys = [t.to(device) for t in y.split(batch)]
    return list(zip(xs, ys)), source


def training_optimizer(params):
    """Adam 1e-2 as ``train.py`` builds it (``build_optimizer``: fused where torch has it)."""
    import torch

    try:
        from ugmm.modules.base import build_optimizer
    except ImportError:  # an older source tree (--baseline-src) without it: what it trained with then
        return torch.optim.Adam(params, lr=1e-2)
    return build_optimizer(params, {"_target_": "torch.optim.Adam", "lr": 1e-2})


def interleaved_steps(spec: dict, device) -> dict:
    """The uGMM-NN's (``spec["backend"]``) and the MLP's training steps alternated in one process.

    Both models train on the same batches, one step each in turn, ``spec["repeats"]`` pairs after warm-up:
    whatever load the machine carries at a moment falls on both alike, where separate processes minutes
    apart see different loads. Reports each model's median step, the ratio of the medians and the median
    of the per-pair ratios."""
    import torch
    from torch.nn import functional

    from ugmm.nn import MLP, uGMMNet

    n_in, hidden, n_out, batch = spec["n_inputs"], spec["hidden"], spec["n_outputs"], spec["batch"]
    batches, source = load_batches(n_in, batch, 8, n_out, device, dense=spec["size"].endswith("-dense"))
    torch.manual_seed(0)
    models = {
        "ugmm": uGMMNet(n_in, n_out, hidden=hidden, dropout=DROPOUT, backend=spec["backend"]).to(device),
        "mlp": MLP(n_in, n_out, hidden=hidden, dropout=DROPOUT).to(device),
    }
    opts = {name: training_optimizer(m.parameters()) for name, m in models.items()}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(name: str, i: int) -> float:
        x, y = batches[i % len(batches)]
        t0 = time.perf_counter()
        opts[name].zero_grad(set_to_none=True)
        functional.cross_entropy(models[name](x), y).backward()
        opts[name].step()
        sync()
        return time.perf_counter() - t0

    for i in range(spec["warmup"]):
        for name in models:
            step(name, i)
    times: dict = {name: [] for name in models}
    for i in range(spec["repeats"]):
        for name in models:
            times[name].append(step(name, i))
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {
        "steps_ms": {name: {"median": 1e3 * m, "min": 1e3 * min(times[name])} for name, m in medians.items()},
        "step_vs_mlp": medians["ugmm"] / medians["mlp"],
        "step_vs_mlp_pairwise_median": statistics.median(u / m for u, m in zip(times["ugmm"], times["mlp"])),
        "data": source,
        "threads": torch.get_num_threads(),
    }


def run_case(spec: dict) -> dict:
    """Time one (model, backend, size) case and measure the peak memory of its training step."""
    import torch
    from torch.nn import functional

    from ugmm.nn import MLP, uGMMLayer, uGMMNet

    device = torch.device(spec["device"])
    # the case's context managers, entered for the rest of this function (a bare ``cm.__enter__()`` is undone
    # as soon as the garbage collector finalises the unreferenced generator)
    switches = contextlib.ExitStack()
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    if spec.get("kernel_threads"):
        from ugmm.ops import kernel_threads

        switches.enter_context(kernel_threads(spec["kernel_threads"]))
    if spec.get("kind") == "limit":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from limit import measure

        return {**spec, "limit": measure(spec["threads"] or torch.get_num_threads(), spec["repeats"])}
    if spec.get("kind") == "interleaved":
        return {**spec, **interleaved_steps(spec, device)}
    if not spec.get("zero_input_path", True):
        try:
            from ugmm.ops import zero_input_path

            switches.enter_context(zero_input_path(False))
        except ImportError:  # an older source tree (--baseline-src): its module-level switch
            import ugmm.ops.cpu

            ugmm.ops.cpu.ZERO_INPUT_PATH = False
    torch.manual_seed(0)
    n_in, hidden, n_out, batch = spec["n_inputs"], spec["hidden"], spec["n_outputs"], spec["batch"]
    dense = spec["size"].endswith("dense")
    batches, source = load_batches(n_in, batch, 8, max(n_out, 2), device, dense=dense)
    if spec["kind"] == "layer":
        model = uGMMLayer(n_in, n_out, dropout=DROPOUT, backend=spec["backend"]).to(device)

        def loss_fn(x, y):
            return model(x).mean()
    else:
        if spec["backend"] == "mlp":
            model = MLP(n_in, n_out, hidden=hidden, dropout=DROPOUT).to(device)
        else:
            model = uGMMNet(n_in, n_out, hidden=hidden, dropout=DROPOUT, backend=spec["backend"]).to(device)

        def loss_fn(x, y):
            return functional.cross_entropy(model(x), y)

    opt = training_optimizer(model.parameters())
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    counter = {"i": 0}

    def next_batch():
        counter["i"] += 1
        return batches[counter["i"] % len(batches)]

    def step():
        x, y = next_batch()
        opt.zero_grad(set_to_none=True)
        loss_fn(x, y).backward()
        opt.step()

    def fwd_bwd():
        x, y = next_batch()
        model.zero_grad(set_to_none=True)
        loss_fn(x, y).backward()

    def forward():
        x, _ = next_batch()
        with torch.no_grad():
            model(x)

    def timed(fn, train: bool) -> dict:
        model.train(train)
        for _ in range(spec["warmup"]):
            fn()
        sync()
        times, cpu_times = [], []
        for _ in range(spec["repeats"]):
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
        return {
            "median_ms": 1e3 * statistics.median(times),
            "min_ms": 1e3 * min(times),
            "cpu_median_ms": 1e3 * statistics.median(cpu_times),  # CPU time of all threads of the process
            "n": len(times),
        }

    # memory first, while the process's high-water mark is still the setup's
    if device.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        rss0, maxrss0 = _rss_mb(), _maxrss_mb()
    load0 = os.getloadavg()[0]
    result = {"step": timed(step, True)}
    if device.type == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        memory = {"peak_mb": peak_mb, "method": "torch.cuda.max_memory_allocated growth"}
    else:
        maxrss1 = _maxrss_mb()
        memory = {
            "peak_mb": maxrss1 - rss0,
            "method": "ru_maxrss growth over the RSS before the first step (fresh process)",
            # the step never exceeded the setup's own high-water mark: then peak_mb is an upper bound
            "upper_bound": maxrss1 <= maxrss0,
        }
    if spec["kind"] != "layer":
        result["fwd_bwd"] = timed(fwd_bwd, True)
        result["forward"] = timed(forward, False)
    else:
        result = {"fwd_bwd": timed(fwd_bwd, True), "forward": timed(forward, False), "step": result["step"]}
        terms = batch * n_out * n_in
        fwd_s = result["forward"]["median_ms"] / 1e3
        both_s = result["fwd_bwd"]["median_ms"] / 1e3
        result["G_terms_per_s"] = {
            "forward": terms / fwd_s / 1e9,
            "fwd_bwd": terms / both_s / 1e9,  # the measure: a layer's terms over forward + backward
            "backward": terms / max(both_s - fwd_s, 1e-9) / 1e9,
            "terms": terms,
        }
    return {
        **spec,
        "times": result,
        "memory": memory,
        "data": source,
        "optimizer": f"{type(opt).__name__}(fused={bool(opt.defaults.get('fused'))})",
        "threads": torch.get_num_threads(),
        "loadavg_1min": [load0, os.getloadavg()[0]],
    }


# ---------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------
def hardware(device: str) -> dict:
    import torch

    info = {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        info["cpu_model"] = next(
            (line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?"
        )
    except (OSError, subprocess.SubprocessError):
        info["cpu_model"] = platform.processor() or "?"
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def backends_for(device: str) -> list[str]:
    from ugmm.ops import available_backends

    names = list(reversed(available_backends(device)))  # reference first, then the fused ones
    return names if "reference" in names else ["reference", *names]


def plan(args) -> list[dict]:
    sizes = QUICK_SIZES if args.quick else {k: SIZES[k] for k in args.sizes}
    common = {
        "device": args.device,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "threads": args.threads,
        "kernel_threads": args.kernel_threads,
        "zero_input_path": not args.no_zero_inputs,
        "omp_wait_policy": args.omp_wait_policy,
    }
    cases = []
    if args.limit:
        cases.append({"kind": "limit", "size": "limit", "backend": "-", **common})
    layer = QUICK_LAYER if args.quick else LAYER
    for backend in args.backends:
        if backend != "mlp":
            n_in, n_out, batch = layer
            for suffix in ("", " dense"):
                name = f"layer {n_in}->{n_out}{suffix}"
                cases.append({"kind": "layer", "size": name, "backend": backend, "n_inputs": n_in, "hidden": [],
                              "n_outputs": n_out, "batch": batch, **common})  # fmt: skip
    for size, (n_in, hidden, n_out, batch) in sizes.items():
        for backend in [*args.backends, "mlp"]:
            cases.append({"kind": "network", "size": size, "backend": backend, "n_inputs": n_in, "hidden": hidden,
                          "n_outputs": n_out, "batch": batch, **common})  # fmt: skip
    if args.interleaved:  # the uGMM-NN's and the MLP's steps alternated in one process, per size
        for size, (n_in, hidden, n_out, batch) in sizes.items():
            for backend in (b for b in args.backends if b not in ("mlp", "reference")):
                cases.append({**common, "kind": "interleaved", "size": size, "backend": backend,
                              "n_inputs": n_in, "hidden": hidden, "n_outputs": n_out, "batch": batch,
                              "repeats": args.interleaved})  # fmt: skip
    if args.baseline_src:  # every case again on the other tree, right after its twin (same load)
        src = str(Path(args.baseline_src).resolve())
        cases = [c for case in cases for c in ([case] if case["kind"] == "limit" else [case, {**case, "src": src}])]
    for case in cases:
        if case["backend"] == "reference" and not args.quick:
            case["repeats"] = min(case["repeats"], args.reference_repeats)
            case["warmup"] = min(case["warmup"], 1)
    return cases


def run_in_subprocess(case: dict, timeout: float) -> dict:
    src = case.get("src") or str(REPO / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    if case.get("omp_wait_policy"):
        env["OMP_WAIT_POLICY"] = case["omp_wait_policy"]
    if case.get("src") and "UGMM_EXTENSIONS_DIR" not in os.environ:
        # the baseline tree's kernel in a directory of its own: a shared one may be rebuilt by other checkouts
        env["UGMM_EXTENSIONS_DIR"] = str(Path(tempfile.gettempdir()) / "ugmm_benchmark_baseline_ext")
    proc = subprocess.run(
        [sys.executable, __file__, "--case", json.dumps(case)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"case {case['size']}/{case['backend']} failed:\n{proc.stderr[-2000:]}")
    result = json.loads(lines[-1])
    if case.get("src"):
        result["backend"] = f"{case['backend']}@baseline"
    return result


def keep_best(old: dict | None, new: dict) -> dict:
    """Of two rounds of one case, the one with the lower median (step for networks, fwd_bwd for layers)."""
    if old is None or "step_vs_mlp" in new:  # interleaved: the less loaded round (lower sum of the two medians)
        load = lambda r: sum(t["median"] for t in r["steps_ms"].values())  # noqa: E731
        return new if old is None or load(new) < load(old) else old
    if "times" not in new:
        return new if "limit" in new else old
    what = "step" if new["kind"] == "network" else "fwd_bwd"
    return new if new["times"][what]["median_ms"] < old["times"][what]["median_ms"] else old


def train_epochs(
    epochs: int, overrides: list[str], timeout: float, repeats: int = 2, baseline_src: str | None = None
) -> dict:
    """Epoch time of ``python train.py trainer.max_epochs=N``, uGMM and the MLP, from the run itself.

    Per epoch: the median of the run's own epoch times (``metrics.json``'s ``epoch_times_s``: training and
    validation of one epoch) after the first; fixed cost of a run: its process's wall time less the sum of
    its epochs (start-up, data, the extension's load, the test). A difference of whole-run wall times
    (N epochs minus 1) put every start-up's scatter into the epoch. Each kind runs ``repeats`` times,
    interleaved; the fastest per-epoch run is kept. ``baseline_src``: the same runs of that tree's
    ``train.py`` too, each right after its twin, as ``ugmm@baseline`` and ``mlp@baseline``.
    """
    out: dict = {"command": f"python train.py trainer.max_epochs={epochs} {' '.join(overrides)}", "epochs": epochs}
    trees = [("", REPO)]
    if baseline_src:
        trees.append(("@baseline", Path(baseline_src).resolve().parent))
    for _ in range(repeats):
        for model in ("ugmm", "mlp"):
            for suffix, root in trees:
                key = model + suffix
                times, wall = _timed_train_run(root, model, epochs, overrides, timeout)
                per_epoch = statistics.median(times[1:] or times)
                if key not in out or per_epoch < out[key]["per_epoch_s"]:
                    out[key] = {"epoch_times_s": times, "wall_s": wall, "per_epoch_s": per_epoch,
                                "fixed_s": wall - sum(times)}  # fmt: skip
    for suffix, _ in trees:
        out["epoch_vs_mlp" + suffix] = out["ugmm" + suffix]["per_epoch_s"] / out["mlp" + suffix]["per_epoch_s"]
        out["fixed_minus_mlp_s" + suffix] = out["ugmm" + suffix]["fixed_s"] - out["mlp" + suffix]["fixed_s"]
    return out


def _timed_train_run(root: Path, model: str, epochs: int, overrides: list[str], timeout: float):
    """(epoch times, process wall time) of one ``train.py`` run of the tree at ``root``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")])}
    extra = ["model=mlp"] if model == "mlp" else []
    with tempfile.TemporaryDirectory(prefix="ugmm_benchmark_train_") as logs:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, str(root / "train.py"), f"trainer.max_epochs={epochs}", f"paths.log_dir={logs}",
             *extra, *overrides],
            capture_output=True, text=True, timeout=timeout, env=env, cwd=root,
        )  # fmt: skip
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{root}/train.py ({model}, {epochs} epochs) failed:\n{proc.stderr[-2000:]}")
        record = json.loads(next(Path(logs).rglob("metrics.json")).read_text())
    if "epoch_times_s" not in record:
        raise RuntimeError(f"{root}/train.py records no epoch_times_s in metrics.json (a tree before EpochTimes)")
    return record["epoch_times_s"], wall


def ratios(results: list[dict]) -> dict:
    """Per size and backend: speedup over the reference, multiple of the MLP, memory over the reference."""
    out: dict = {}
    by_size: dict = {}
    for r in results:
        if r["kind"] in ("limit", "interleaved"):
            continue
        by_size.setdefault(r["size"], {})[r["backend"]] = r
    for size, rows in by_size.items():
        ref, mlp = rows.get("reference"), rows.get("mlp")
        for backend, r in rows.items():
            if backend in ("reference", "mlp", "mlp@baseline"):
                continue
            if backend.endswith("@baseline"):
                ref, mlp = rows.get("reference@baseline", ref), rows.get("mlp@baseline", mlp)
            entry = {}
            for what in ("forward", "fwd_bwd", "step"):
                t = r["times"][what]["median_ms"]
                if ref:
                    entry[f"{what}_speedup_vs_reference"] = ref["times"][what]["median_ms"] / t
                if mlp:
                    entry[f"{what}_vs_mlp"] = t / mlp["times"][what]["median_ms"]
            if ref and ref["memory"]["peak_mb"] > 0:
                entry["memory_vs_reference"] = r["memory"]["peak_mb"] / ref["memory"]["peak_mb"]
            out.setdefault(size, {})[backend] = entry
    return out


def check_targets(ratio: dict, device: str, results: list[dict] | None = None) -> dict:
    """The issue's targets for the fused CPU backend: steps against the MLP, the dense layer against torch.exp."""
    if device != "cpu":
        return {}
    out = {}
    for size, limit in (("mnist", TARGETS["mnist_step_vs_mlp_max"]), ("mnist-dense", TARGETS["dense_step_vs_mlp_max"])):
        entry = ratio.get(size, {}).get("cpu")
        if entry and "step_vs_mlp" in entry:
            out[f"cpu@{size}"] = {f"step_vs_mlp <= {limit:g}": entry["step_vs_mlp"] <= limit}
        inter = next((r for r in results or [] if r["kind"] == "interleaved" and r["size"] == size
                      and r["backend"] == "cpu" and not r.get("src")), None)  # fmt: skip
        if inter:
            out.setdefault(f"cpu@{size}", {})[f"interleaved step_vs_mlp {inter['step_vs_mlp']:.2f}x <= {limit:g}"] = (
                inter["step_vs_mlp"] <= limit
            )
    exp_rate = next((r["limit"]["torch_exp_G_per_s"] for r in results or [] if r["kind"] == "limit"), None)
    layer = next((r for r in results or [] if r["kind"] == "layer" and r["size"].endswith("dense")
                  and r["backend"] == "cpu"), None)  # fmt: skip
    if exp_rate and layer:
        rates = layer["times"]["G_terms_per_s"]
        out["cpu@layer dense"] = {
            f"forward {rates['forward'] / exp_rate:.2f}x torch.exp >= 2x": rates["forward"] >= 2 * exp_rate,
            f"forward+backward {rates['fwd_bwd'] / exp_rate:.2f}x torch.exp >= 1x": rates["fwd_bwd"] >= exp_rate,
        }
    return out


def print_report(results, ratio, targets, console) -> None:
    from rich.table import Table

    table = Table(title="uGMM benchmark (median ms; peak MB of a training step; G terms/s of a layer)")
    for col in ("size", "model", "forward", "fwd+bwd", "step", "peak MB", "G terms/s fwd / bwd / both"):
        table.add_column(col, justify="right" if col not in ("size", "model") else "left")
    for r in results:
        if r["kind"] in ("limit", "interleaved"):
            continue
        t = r["times"]
        model = "MLP" if r["backend"].startswith("mlp") else f"uGMM {r['backend']}"
        bound = "<=" if r["memory"].get("upper_bound") else ""
        rates = t.get("G_terms_per_s")
        table.add_row(
            r["size"] if r["kind"] == "network" else f"{r['size']} B={r['batch']}",
            model,
            f"{t['forward']['median_ms']:.2f}",
            f"{t['fwd_bwd']['median_ms']:.2f}",
            f"{t['step']['median_ms']:.2f}",
            f"{bound}{r['memory']['peak_mb']:.1f}",
            f"{rates['forward']:.2f} / {rates['backward']:.2f} / {rates['fwd_bwd']:.2f}" if rates else "",
        )
    console.print(table)
    for r in results:
        if r["kind"] == "limit":
            parts = ", ".join(f"{k} {v:.3g}" for k, v in r["limit"].items() if not k.endswith("median"))
            console.print(f"[bold]limit[/bold] ({r['limit']['threads']} threads): {parts}")
        elif r["kind"] == "interleaved":
            ms, tree = r["steps_ms"], "@baseline" if r.get("src") else ""
            console.print(
                f"[bold]{r['size']} interleaved{tree}[/bold] ({r['repeats']} steps each):"
                f" uGMM {r['backend']} {ms['ugmm']['median']:.2f} ms, MLP {ms['mlp']['median']:.2f} ms (medians):"
                f" {r['step_vs_mlp']:.2f}x (median of per-step ratios {r['step_vs_mlp_pairwise_median']:.2f}x)"
            )
    for size, rows in ratio.items():
        for backend, entry in rows.items():
            parts = ", ".join(f"{k} {v:.3g}" for k, v in entry.items())
            console.print(f"[bold]{size} {backend}[/bold]: {parts}")
    for name, checks in targets.items():
        for what, ok in checks.items():
            console.print(f"target {name}: {what}: {'[green]met[/green]' if ok else '[red]missed[/red]'}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (seconds)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--backends", nargs="+", default=None, help="uGMM backends (default: all available)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement")
    parser.add_argument("--reference-repeats", type=int, default=5, help="repeats for the slow reference")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument(
        "--no-zero-inputs", action="store_true", help="cpu backend: dense kernel only (what the zero-input path buys)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads per case (default: torch's)")
    parser.add_argument("--kernel-threads", type=int, default=None,
                        help="threads of the fused uGMM kernels alone (ugmm.ops.kernel_threads)")  # fmt: skip
    parser.add_argument("--limit", action="store_true", help="measure the limit (scripts/limit.py) as a case")
    parser.add_argument("--interleaved", type=int, default=None, metavar="N",
                        help="also N uGMM-NN and N MLP training steps alternated in one process, per size")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=1, help="run the case list N times, keep each case's best")
    parser.add_argument("--baseline-src", default=None, help="another src tree (e.g. ../main/src): every case again")
    parser.add_argument("--omp-wait-policy", default="PASSIVE", help="OMP_WAIT_POLICY of the cases ('' = inherit)")
    parser.add_argument("--epochs", nargs="?", type=int, const=4, default=None,
                        help="also time python train.py, N (4) epochs, uGMM and model=mlp")  # fmt: skip
    parser.add_argument("--train-args", nargs="*", default=[], help="extra overrides for the train.py runs")
    parser.add_argument("--epoch-repeats", type=int, default=2, help="train.py runs of each kind (fastest kept)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per case")
    parser.add_argument("--out", default=None, help="JSON path (default $OUT/benchmark.json or ./benchmark.json)")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: run one case
    args = parser.parse_args(argv)

    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return 0

    import torch
    from rich.console import Console

    console = Console()
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.repeats = args.repeats or (3 if args.quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.backends = args.backends or backends_for(args.device)
    out = Path(args.out or (Path(os.environ["OUT"]) / "benchmark.json" if os.environ.get("OUT") else "benchmark.json"))

    cases = plan(args)
    info = hardware(args.device)
    console.print(
        f"[bold]uGMM benchmark[/bold] on {args.device} ({info.get('gpu', info['cpu_model'])}, {info['cpus']} CPUs), "
        f"backends {', '.join(args.backends)}, {len(cases)} cases"
    )
    best: list = [None] * len(cases)
    for i, case in (ic for _ in range(args.rounds) for ic in enumerate(cases)):
        t0 = time.perf_counter()
        with console.status(f"[{i + 1}/{len(cases)}] {case['size']} {case['backend']}"):
            r = run_in_subprocess(case, args.timeout)
        best[i] = keep_best(best[i], r)
        if r["kind"] == "limit":
            console.print(f"limit: {r['limit']}")
            continue
        if r["kind"] == "interleaved":
            console.print(
                f"[{i + 1}/{len(cases)}] {case['size']:>14} interleaved: uGMM {r['backend']} vs MLP"
                f" {r['step_vs_mlp']:.2f}x ({time.perf_counter() - t0:.0f} s)"
            )
            continue
        if max(r["loadavg_1min"]) > (info["cpus"] or 1) + 0.5:
            console.print(
                f"[yellow]load average {max(r['loadavg_1min']):.1f} on {info['cpus']} CPUs:"
                " other work competes[/yellow]"
            )
        console.print(
            f"[{i + 1}/{len(cases)}] {case['size']:>14} {r['backend']:>9}:"
            f" step {r['times']['step']['median_ms']:9.2f} ms, peak {r['memory']['peak_mb']:8.1f} MB"
            f" ({time.perf_counter() - t0:.0f} s)"
        )
    results = best
    ratio = ratios(results)
    targets = check_targets(ratio, args.device, results)
    print_report(results, ratio, targets, console)
    train = None
    if args.epochs:
        with console.status(f"train.py {args.epochs} epochs, uGMM and MLP"):
            train = train_epochs(args.epochs, args.train_args, args.timeout, args.epoch_repeats, args.baseline_src)
        for suffix in ("", "@baseline") if args.baseline_src else ("",):
            ugmm, mlp = train["ugmm" + suffix], train["mlp" + suffix]
            console.print(
                f"[bold]train.py{suffix}[/bold] per epoch: uGMM {ugmm['per_epoch_s']:.2f} s, MLP"
                f" {mlp['per_epoch_s']:.2f} s: {train['epoch_vs_mlp' + suffix]:.2f}x; fixed cost"
                f" of a run: uGMM {ugmm['fixed_s']:.1f} s, MLP {mlp['fixed_s']:.1f} s"
            )
    report = {
        "threads": next((r["threads"] for r in results if "threads" in r), None),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if argv is None else " ".join(argv),
        "device": args.device,
        "hardware": info,
        "data": next((r["data"] for r in results if r["kind"] == "network"), None),
        "quick": args.quick,
        "results": results,
        "ratios": ratio,
        "targets": targets,
        "train": train,
        "rounds": args.rounds,
        "omp_wait_policy": args.omp_wait_policy,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
