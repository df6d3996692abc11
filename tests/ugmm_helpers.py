"""Helpers for the tests: composing configs in-process, writing tiny MNIST IDX files, importing scripts."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path
from types import ModuleType

import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def make_cfg(overrides: list[str], config_name: str = "train") -> DictConfig:
    """Compose ``ugmm.conf/<config_name>.yaml`` with ``overrides``, as the command line would."""
    with initialize_config_module("ugmm.conf", version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def write_idx(path: Path, data: torch.Tensor) -> None:
    """Write a uint8 tensor in the IDX format (magic 0x08 = unsigned byte, big-endian dims)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, data.dim()) + struct.pack(f">{data.dim()}I", *data.shape)
    path.write_bytes(header + data.to(torch.uint8).contiguous().numpy().tobytes())


def write_fake_mnist(root: Path, name: str = "MNIST", n_train: int = 240, n_test: int = 60, seed: int = 0) -> Path:
    """Small learnable IDX files in torchvision's layout ``root/<name>/raw``: class c brightens row band c."""
    gen = torch.Generator().manual_seed(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = torch.arange(n) % 10
        images = torch.randint(0, 60, (n, 28, 28), generator=gen)
        for i, c in enumerate(labels.tolist()):
            images[i, 2 * c + 4 : 2 * c + 7, 4:24] = 255
        image_file, label_file = MNIST_FILES[split]
        write_idx(root / name / "raw" / image_file, images)
        write_idx(root / name / "raw" / label_file, labels)
    return root


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` imported as a module (the scripts folder is not a package)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
