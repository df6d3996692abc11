"""A DataModule for any CSV table with a label column; Iris ships inside the package."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from ugmm.data.base import (
    DataError,
    InMemoryDataModule,
    InMemoryDataset,
    shuffle_split,
    stratified_split,
    trainer_device,
)

IRIS_CSV = Path(__file__).with_name("iris.csv")
# how the test rows are chosen: per class (balanced) or scikit-learn's train_test_split permutation
SPLITS = ("stratified", "reference")


def read_header(path: str | Path) -> list[str]:
    """The column names of a CSV file (its first row); :class:`DataError` when unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.path={path} does not exist or is not a file")
    with path.open(newline="") as f:
        header = next(csv.reader(f), None)
    if not header:
        raise DataError(f"data.path={path} is empty: expected a header row with column names")
    return [name.strip() for name in header]


def read_table(path: str | Path, target: str) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    """Read a CSV with a header into ``(x float32 (N, F), y int64 (N,), feature_names, class_names)``.

    Every column but ``target`` must be numeric; the target may hold any values, which become
    class indices in sorted order (numerically when they are all numbers).
    """
    header = read_header(path)
    if target not in header:
        raise DataError(f"data.target={target} is not a column of {path}; columns: {', '.join(header)}")
    t = header.index(target)
    features = [name for i, name in enumerate(header) if i != t]
    if not features:
        raise DataError(f"{path} has no feature columns besides data.target={target}")
    rows, labels = [], []
    with Path(path).open(newline="") as f:
        reader = csv.reader(f)
        next(reader)
        for line_no, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(f"{path}:{line_no} has {len(row)} fields, the header has {len(header)}")
            try:
                rows.append([float(cell) for i, cell in enumerate(row) if i != t])
            except ValueError:
                bad = next(c for i, c in enumerate(row) if i != t and not _is_float(c))
                raise DataError(f"{path}:{line_no}: feature value {bad!r} is not a number") from None
            labels.append(row[t].strip())
    if len(rows) < 2:
        raise DataError(f"{path} has {len(rows)} data rows; need at least 2")
    classes = sorted(set(labels), key=_class_sort_key)
    index = {c: i for i, c in enumerate(classes)}
    x = torch.tensor(rows, dtype=torch.float32)
    y = torch.tensor([index[c] for c in labels], dtype=torch.int64)
    return x, y, features, classes


def _is_float(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _class_sort_key(label: str):
    return (0, float(label), "") if _is_float(label) else (1, 0.0, label)


class TabularDataModule(InMemoryDataModule):
    """Classification data from a CSV: train/val/test split, standardised on train only.

    Args:
        path: the CSV file (header row, numeric features, one label column); None = packaged Iris.
        target: the label column's name.
        batch_size: training batch size (evaluation uses ``eval_batch_size``).
        test_fraction, val_fraction: shares of the whole table held out for test and validation,
            with ``split_seed``. The test part is cut first, so it does not depend on ``val_fraction``.
        split: how the test rows are chosen.
            ``stratified``: per class, so every part keeps the class balance.
            ``reference``: scikit-learn's ``train_test_split(rows, test_size=test_fraction,
            random_state=split_seed)`` row for row (:func:`~ugmm.data.base.shuffle_split`; no
            stratification), the split published results use (the paper's Iris: seed 42, 20%). That
            split has no validation part: ``round(val_fraction * rows)`` of its *training* rows,
            drawn with ``split_seed``, become the validation set, so the test rows stay exactly
            the reference's.
        standardize: scale features to zero mean, unit variance with the *training* rows' statistics.
        name: a label for logs.

    Batches: ``x`` float32 ``(B, F)``, ``y`` int64 ``(B,)``.
    """

    def __init__(
        self,
        path: str | None = None,
        target: str = "species",
        batch_size: int = 32,
        eval_batch_size: int = 1024,
        test_fraction: float = 0.2,
        val_fraction: float = 0.1,
        split_seed: int = 42,
        split: str = "stratified",
        standardize: bool = True,
        name: str = "csv",
        device: str | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path) if path else IRIS_CSV
        self.target = target
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.test_fraction = float(test_fraction)
        self.val_fraction = float(val_fraction)
        self.split_seed = int(split_seed)
        if split not in SPLITS:
            raise DataError(f"data.split={split} is not one of {', '.join(SPLITS)}")
        self.split = split
        self.standardize = bool(standardize)
        self.name = name
        self.device = device
        header = read_header(self.path)
        if target not in header:
            raise DataError(f"data.target={target} is not a column of {self.path}; columns: {', '.join(header)}")
        self._n_features = len(header) - 1
        self._classes: list[str] | None = None
        self.splits: dict[str, InMemoryDataset] = {}
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None

    @property
    def n_features(self) -> int:
        return self._n_features

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return (self._n_features,)

    @property
    def classes(self) -> list[str]:
        """Class names in index order (reads the file once)."""
        if self._classes is None:
            self._classes = read_table(self.path, self.target)[3]
        return self._classes

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        x, y, _, classes = read_table(self.path, self.target)
        self._classes = classes
        test_idx, val_idx, train_idx = self.split_indices(y)
        if len(train_idx) == 0:
            raise DataError(f"{self.path}: no training rows left after the test and validation splits")
        if self.standardize:
            train = x[train_idx]
            # statistics of the training rows only, so nothing leaks from val/test
            self.mean = train.mean(dim=0)
            self.std = train.std(dim=0, unbiased=False).clamp_min(1e-8)
            x = (x - self.mean) / self.std
        device = self.device or trainer_device(self)
        self.splits = {
            name: InMemoryDataset(x[idx], y[idx]).to(device)
            for name, idx in (("train", train_idx), ("val", val_idx), ("test", test_idx))
        }

    def split_indices(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Row indices ``(test, val, train)`` of a table with labels ``y`` ``(N,)``, by ``self.split``."""
        if self.split == "stratified":
            test, val, train = stratified_split(y, [self.test_fraction, self.val_fraction], self.split_seed)
            return test, val, train
        try:
            test, train = shuffle_split(len(y), self.test_fraction, self.split_seed)
        except ValueError as err:
            raise DataError(f"{self.path}: {err}") from None
        # validation rows come out of the reference's training part, so its test rows are untouched
        n_val = int(round(self.val_fraction * len(y)))
        if n_val >= len(train):
            raise DataError(f"{self.path}: data.val_fraction={self.val_fraction} leaves no training rows")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.split_seed))
        return test, train[order[:n_val]].sort().values, train[order[n_val:]].sort().values
