import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("UGMM_DATA_DIR", REPO.parent / "shared" / "data"))


def mnist_available() -> bool:
    return (SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()


requires_mnist = pytest.mark.skipif(
    not mnist_available(), reason=f"real MNIST not found under {SHARED_DATA} (set UGMM_DATA_DIR to its parent)"
)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
