"""Lightning DataModules: the MNIST family (in-memory tensors) and any CSV table (Iris packaged).

Every DataModule exposes ``n_features`` (flattened input size), ``n_classes`` and
``feature_shape`` before ``setup`` so the model can be built first, and yields batches
``(x, y)`` with ``x`` float32 ``(B, *feature_shape)`` and ``y`` int64 ``(B,)``.
"""

from ugmm.data.base import DataError, InMemoryDataset
from ugmm.data.mnist import MNIST_FAMILY, MNISTDataModule
from ugmm.data.tabular import IRIS_CSV, TabularDataModule

__all__ = [
    "IRIS_CSV",
    "MNIST_FAMILY",
    "DataError",
    "InMemoryDataset",
    "MNISTDataModule",
    "TabularDataModule",
]
