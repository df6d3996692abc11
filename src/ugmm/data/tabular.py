"""A DataModule for any CSV table with a label column; Iris ships inside the package."""

from __future__ import annotations

import csv
import math
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


def _open_text(path: Path):
    """``path`` opened for the csv module: UTF-8 (a byte-order mark is skipped), newlines as csv wants."""
    return path.open(newline="", encoding="utf-8-sig")


def _csv_rows(path: Path):
    """``(line number, row)`` of every row of a CSV file, with one-line :class:`DataError` for files
    that are not UTF-8 text (binary files, other encodings) or that the csv module cannot parse."""
    line_no = 0
    try:
        with _open_text(path) as f:
            reader = csv.reader(f)
            for row in reader:
                line_no = reader.line_num
                yield line_no, row
    except UnicodeDecodeError as err:
        raise DataError(
            f"data.path={path} is not a UTF-8 text CSV: byte 0x{err.object[err.start]:02x} at offset {err.start} "
            "(binary file or another encoding; save it as UTF-8 CSV)"
        ) from None
    except csv.Error as err:
        raise DataError(f"data.path={path}:{line_no + 1} is not valid CSV: {err}") from None


def read_header(path: str | Path) -> list[str]:
    """The column names of a CSV file (its first row); :class:`DataError` when unreadable.

    Every column needs a name, and no name may appear twice.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.path={path} does not exist or is not a file")
    header = next((row for _, row in _csv_rows(path)), None)
    if not header or all(not name.strip() for name in header):
        raise DataError(f"data.path={path} is empty: expected a header row with column names")
    header = [name.strip() for name in header]
    for i, name in enumerate(header):
        if not name:
            raise DataError(f"data.path={path}:1: column {i + 1} has no name; every column needs a header")
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DataError(f"data.path={path}:1: column name {name!r} appears twice in the header; names must differ")
        seen.add(name)
    return header


# float32: what the features become; larger magnitudes turn into inf
FLOAT32_MAX = 3.4028234663852886e38


def read_table(path: str | Path, target: str) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    """Read a CSV with a header into ``(x float32 (N, F), y int64 (N,), feature_names, class_names)``.

    Every column but ``target`` must hold finite numbers (within float32's range) in every row; the
    target may hold any non-empty values, which become class indices in sorted order (numerically
    when they are all numbers). There must be at least two classes. Blank lines are skipped.
    Problems raise :class:`DataError` naming the file, line and column.
    """
    path = Path(path)
    header = read_header(path)
    if target not in header:
        raise DataError(f"data.target={target} is not a column of {path}; columns: {', '.join(header)}")
    t = header.index(target)
    features = [name for i, name in enumerate(header) if i != t]
    if not features:
        raise DataError(f"{path} has no feature columns besides data.target={target}")
    rows, labels = [], []
    seen_header = False
    for line_no, row in _csv_rows(path):
        if not seen_header:
            seen_header = True
            continue
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{path}:{line_no} has {len(row)} fields, the header has {len(header)}")
        values = []
        for i, cell in enumerate(row):
            if i == t:
                continue
            values.append(_feature(path, line_no, header[i], cell))
        label = row[t].strip()
        if not label:
            raise DataError(f"{path}:{line_no}: the label (column {target}) is empty; every row needs a class")
        rows.append(values)
        labels.append(label)
    if len(rows) < 2:
        raise DataError(f"{path} has {len(rows)} data rows; need at least 2")
    classes = sorted(set(labels), key=_class_sort_key)
    if len(classes) < 2:
        raise DataError(
            f"data.target={target} of {path} holds one class ({classes[0]!r}) in all {len(rows)} rows; "
            "classification needs at least 2 classes"
        )
    index = {c: i for i, c in enumerate(classes)}
    x = torch.tensor(rows, dtype=torch.float32)
    y = torch.tensor([index[c] for c in labels], dtype=torch.int64)
    return x, y, features, classes


def _feature(path: Path, line_no: int, column: str, cell: str) -> float:
    """One feature cell as a finite float, or a one-line :class:`DataError` naming row and column."""
    where = f"{path}:{line_no}, column {column}"
    text = cell.strip()
    if not text:
        raise DataError(f"{where}: the value is empty; features must be numbers (fill or drop the row)")
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: feature value {cell!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: feature value {cell!r} is not finite; features must be finite numbers")
    if abs(value) > FLOAT32_MAX:
        raise DataError(f"{where}: feature value {cell!r} is beyond float32's range (|x| <= 3.4e38)")
    return value


def _is_float(cell: str) -> bool:
    try:
        return math.isfinite(float(cell))
    except ValueError:
        return False


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
        self._loaded: tuple[torch.Tensor, torch.Tensor, list[str]] | None = None
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
        """Class names in index order (reads and checks the table once)."""
        return self._table()[2]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def _table(self) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """``(x, y, classes)`` read once; checks that every split of the table gets rows."""
        if self._loaded is None:
            x, y, _, classes = read_table(self.path, self.target)
            self._check_split_sizes(y)
            self._loaded = (x, y, classes)
        return self._loaded

    def _check_split_sizes(self, y: torch.Tensor) -> None:
        """A one-line :class:`DataError` when the test, validation or training part would be empty."""
        test, val, train = self.split_indices(y, check=False)
        empty = [name for name, idx in (("test", test), ("validation", val), ("training", train)) if len(idx) == 0]
        if self.val_fraction == 0.0:
            empty = [name for name in empty if name != "validation"]
        if not empty:
            return
        need = self._rows_needed(y)
        per_class = " per class" if self.split == "stratified" else ""
        hint = f"at least {need} rows{per_class}" if need else "a smaller data.test_fraction + data.val_fraction"
        raise DataError(
            f"{self.path} has {len(y)} data rows, too few for data.test_fraction={self.test_fraction:g} and "
            f"data.val_fraction={self.val_fraction:g}: the {' and '.join(empty)} part would be empty; "
            f"the {self.split} split needs {hint}"
        )

    def _rows_needed(self, y: torch.Tensor, limit: int = 100_000) -> int | None:
        """The fewest rows (per class when stratified) for which every requested part gets a row."""

        def ok(n: int) -> bool:
            if self.split == "stratified":
                n_test = int(round(self.test_fraction * n))
                n_val = int(round(self.val_fraction * n))
            else:
                n_test = math.ceil(self.test_fraction * n)
                n_val = int(round(self.val_fraction * n))
            return n_test >= 1 and (n_val >= 1 or self.val_fraction == 0.0) and n - n_test - n_val >= 1

        return next((n for n in range(2, limit) if ok(n)), None)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        x, y, _ = self._table()
        test_idx, val_idx, train_idx = self.split_indices(y)
        if self.standardize:
            # statistics of the training rows only, so nothing leaks from val/test
            train = x[train_idx]
            self.mean = train.mean(dim=0)
            self.std = train.std(dim=0, unbiased=False).clamp_min(1e-8)
            if not (self.mean.isfinite().all() and self.std.isfinite().all()):
                # huge (float32-finite) values overflow when squared: the same in float64
                train = train.double()
                self.mean = train.mean(dim=0)
                self.std = train.std(dim=0, unbiased=False).clamp_min(1e-8)
                x = ((x.double() - self.mean) / self.std).float()
                self.mean, self.std = self.mean.float(), self.std.float()
            else:
                x = (x - self.mean) / self.std
        device = self.device or trainer_device(self)
        self.splits = {
            name: InMemoryDataset(x[idx], y[idx]).to(device)
            for name, idx in (("train", train_idx), ("val", val_idx), ("test", test_idx))
        }

    def split_indices(self, y: torch.Tensor, check: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Row indices ``(test, val, train)`` of a table with labels ``y`` ``(N,)``, by ``self.split``.

        ``check``: raise :class:`DataError` when the split leaves no training rows (else return it as is).
        """
        if self.split == "stratified":
            test, val, train = stratified_split(y, [self.test_fraction, self.val_fraction], self.split_seed)
            return test, val, train
        try:
            test, train = shuffle_split(len(y), self.test_fraction, self.split_seed)
        except ValueError as err:
            if check:
                raise DataError(f"{self.path}: {err}") from None
            return torch.arange(len(y)), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
        # validation rows come out of the reference's training part, so its test rows are untouched
        n_val = int(round(self.val_fraction * len(y)))
        if n_val >= len(train) and check:
            raise DataError(f"{self.path}: data.val_fraction={self.val_fraction} leaves no training rows")
        n_val = min(n_val, len(train))
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.split_seed))
        return test, train[order[:n_val]].sort().values, train[order[n_val:]].sort().values
