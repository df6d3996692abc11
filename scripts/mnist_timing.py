"""Time the paper's MNIST training loop in plain PyTorch with the data resident on the device.

784-128-64-10 uGMMNet, batch 256, Adam lr 1e-2, MultiStepLR milestones [20, 45] (gamma 0.1),
cross-entropy on the output log-densities, 50 epochs. No Lightning, no DataLoader: the whole training
set is one float tensor on the device, shuffled by an on-device permutation each epoch, so the time is
the layer's (and the optimiser's), not the input pipeline's.

The first steps compile (and, for Triton, autotune) the kernels; they are run on a throwaway copy of
the model at every batch shape the loop will meet, and reported separately (``warmup_s``), so
``train_s`` is the steady-state time of the full loop. Results go to ``--out`` (default
``$OUT/mnist_timing.json`` when ``OUT`` is set) and to stdout as JSON.

    python scripts/mnist_timing.py                                  # GPU: the 50-epoch timing
    python scripts/mnist_timing.py --device cpu --epochs 1 --limit 2048 --backend reference   # smoke
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import torch
from torch.nn import functional

from ugmm.nn import uGMMNet
from ugmm.ops import resolve_backend

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("UGMM_DATA_DIR", REPO.parent / "shared" / "data"))


def load_mnist(root: Path, train: bool, device: torch.device, limit: int | None):
    """MNIST as ``(N, 784)`` float32 in [0, 1] and ``(N,)`` int64 labels, on ``device``."""
    from torchvision.datasets import MNIST

    ds = MNIST(root=str(root), train=train, download=False)
    x, y = ds.data, ds.targets
    if limit is not None:
        x, y = x[:limit], y[:limit]
    x = x.reshape(len(x), -1).to(device=device, dtype=torch.float32).div_(255.0)
    return x, y.to(device=device, dtype=torch.long)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_model(args, device):
    model = uGMMNet(784, 10, hidden=[128, 64], dropout=args.dropout, backend=args.backend).to(device)
    fused = device.type == "cuda"  # one kernel for the whole Adam update on the GPU
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, fused=fused)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=args.milestones, gamma=0.1)
    return model, opt, sched


def train_step(model, opt, xb, yb):
    loss = functional.cross_entropy(model(xb), yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


@torch.no_grad()
def accuracy(model, x, y, batch: int = 1000) -> float:
    model.eval()
    correct = sum((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum() for i in range(0, len(x), batch))
    model.train()
    return float(correct) / len(x)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backend", default="auto", help="uGMM op backend (auto, reference, cpu, triton)")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--milestones", type=int, nargs="*", default=[20, 45])
    p.add_argument("--dropout", type=float, default=0.5, help="component dropout of the first layer")
    p.add_argument("--limit", type=int, default=None, help="use only the first N train and test images")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON result file (default $OUT/mnist_timing.json)")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    torch.manual_seed(args.seed)
    x_train, y_train = load_mnist(args.data_root, True, device, args.limit)
    x_test, y_test = load_mnist(args.data_root, False, device, args.limit)
    n, bs = len(x_train), args.batch_size

    model, opt, sched = make_model(args, device)
    resolved = resolve_backend(args.backend, device)

    # warm-up on a throwaway copy: compile/autotune for the full batch and the ragged last batch
    t0 = time.perf_counter()
    w_model = copy.deepcopy(model)
    w_opt = torch.optim.Adam(w_model.parameters(), lr=args.lr, fused=device.type == "cuda")
    for size in sorted({min(bs, n), n % bs or min(bs, n)}):
        for _ in range(2):
            train_step(w_model, w_opt, x_train[:size], y_train[:size])
    accuracy(w_model, x_test, y_test)
    sync(device)
    warmup_s = time.perf_counter() - t0
    del w_model, w_opt

    epoch_s, losses = [], []
    sync(device)
    t_train = time.perf_counter()
    for _ in range(args.epochs):
        t_epoch = time.perf_counter()
        perm = torch.randperm(n, device=device)
        total = torch.zeros((), device=device)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            total += train_step(model, opt, x_train[idx], y_train[idx]).detach() * len(idx)
        sched.step()
        sync(device)
        epoch_s.append(time.perf_counter() - t_epoch)
        losses.append(float(total) / n)  # one host sync per epoch, after the timing
        print(f"epoch {len(epoch_s)}: {epoch_s[-1]:.3f} s, train loss {losses[-1]:.4f}", flush=True)
    train_s = time.perf_counter() - t_train

    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "device_type": device.type,
        "backend": resolved,
        "torch": torch.__version__,
        "epochs": args.epochs,
        "train_images": n,
        "batch_size": bs,
        "steps": args.epochs * -(-n // bs),
        "dropout": args.dropout,
        "warmup_s": round(warmup_s, 3),
        "train_s": round(train_s, 3),
        "mean_epoch_s": round(sum(epoch_s) / len(epoch_s), 4) if epoch_s else None,
        "ms_per_step": round(1e3 * train_s / max(1, args.epochs * -(-n // bs)), 4),
        "final_train_loss": losses[-1] if losses else None,
        "test_accuracy": accuracy(model, x_test, y_test),
        "test_images": len(x_test),
        "epoch_s": [round(t, 4) for t in epoch_s],
    }
    text = json.dumps(result, indent=2)
    print(text)
    out = args.out or (Path(os.environ["OUT"]) / "mnist_timing.json" if os.environ.get("OUT") else None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
