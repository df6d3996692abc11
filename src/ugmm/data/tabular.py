"""A DataModule for any CSV table with a label column; Iris ships inside the package."""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ugmm.data.base import (
    DataError,
    InMemoryDataModule,
    InMemoryDataset,
    shuffle_split,
    stratified_folds,
    stratified_split,
    trainer_device,
)

log = logging.getLogger(__name__)

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
# how feature columns that are not numbers are treated, and how missing cells are filled
CATEGORICAL = ("onehot", "reject")
IMPUTE = ("none", "mean", "median")
# cells that mean "missing" (compared case-insensitively, after stripping spaces)
NA_TOKENS = frozenset({"", "na", "n/a", "nan", "?", "null"})


@dataclass
class RawTable:
    """A CSV's cells, checked but not yet encoded (:func:`parse_table`).

    ``columns[j][r]``: feature column ``j``'s cell in data row ``r``, stripped, or None when missing;
    ``categorical[j]``: whether that column holds a value that is not a number.
    """

    path: Path
    features: list[str]
    columns: list[list[str | None]]
    categorical: list[bool]
    y: torch.Tensor
    classes: list[str]


@dataclass
class EncodedTable:
    """Features as numbers (:func:`encode_table`): ``x`` float32 ``(N, F)``, a name per column (``col=value``
    for one-hot columns), which columns are one-hot, and a one-line description of what was done."""

    x: torch.Tensor
    names: list[str]
    onehot: torch.Tensor
    summary: str


def parse_table(path: str | Path, target: str, categorical: str = "onehot", impute: str = "none") -> RawTable:
    """Read and check a CSV with a header row: every row's cells, the labels and the classes.

    A feature cell is missing when it is empty or one of :data:`NA_TOKENS` (``NA``, ``N/A``, ``nan``,
    ``?``, ``null``, any case). ``impute="none"``: a missing cell is a one-line :class:`DataError` (``nan``
    with the message it always had: the value is not finite); otherwise it is kept as None for
    :func:`encode_table` to fill. A cell that is not a number makes its column categorical;
    ``categorical="reject"`` stops on it instead. Numbers must be finite and within float32's range,
    in every column. The target may hold any value but a missing one; its values become class indices
    in sorted order (numerically when they are all numbers); there must be at least two classes.
    Blank lines are skipped. Problems raise :class:`DataError` naming the file, line and column.
    """
    path = Path(path)
    header = read_header(path)
    if target not in header:
        raise DataError(f"data.target={target} is not a column of {path}; columns: {', '.join(header)}")
    t = header.index(target)
    features = [name for i, name in enumerate(header) if i != t]
    if not features:
        raise DataError(f"{path} has no feature columns besides data.target={target}")
    columns: list[list[str | None]] = [[] for _ in features]
    first_text: list[tuple[int, str] | None] = [None] * len(features)  # (line, value) of a column's first word
    numbers = [0] * len(features)
    labels = []
    seen_header = False
    for line_no, row in _csv_rows(path):
        if not seen_header:
            seen_header = True
            continue
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{path}:{line_no} has {len(row)} fields, the header has {len(header)}")
        label = row[t].strip()
        cells = [cell for i, cell in enumerate(row) if i != t]
        for j, cell in enumerate(cells):
            text, is_number = _cell(path, line_no, features[j], cell, categorical, impute)
            columns[j].append(text)
            if text is None:
                continue
            if is_number:
                numbers[j] += 1
            elif first_text[j] is None:
                first_text[j] = (line_no, cell)
        if not label or label.lower() in NA_TOKENS:
            what = "empty" if not label else f"missing ({row[t]!r})"
            raise DataError(f"{path}:{line_no}: the label (column {target}) is {what}; every row needs a class")
        labels.append(label)
    if len(labels) < 2:
        raise DataError(f"{path} has {len(labels)} data rows; need at least 2")
    classes = sorted(set(labels), key=_class_sort_key)
    if len(classes) < 2:
        raise DataError(
            f"data.target={target} of {path} holds one class ({classes[0]!r}) in all {len(labels)} rows; "
            "classification needs at least 2 classes"
        )
    for j, first in enumerate(first_text):
        if first is not None and numbers[j] > sum(c is not None for c in columns[j]) // 2:
            log.warning(
                "%s:%d, column %s: %r makes the column categorical (one-hot) though %d of its values are numbers; "
                "fix the cell, or set data.categorical=reject to stop on such cells",
                path, first[0], features[j], first[1], numbers[j],
            )  # fmt: skip
    index = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([index[c] for c in labels], dtype=torch.int64)
    return RawTable(path, features, columns, [first is not None for first in first_text], y, classes)


def _cell(path: Path, line_no: int, column: str, cell: str, categorical: str, impute: str) -> tuple[str | None, bool]:
    """One feature cell: ``(stripped text, is a number)``, ``(None, True)`` when missing (and imputed),
    or a one-line :class:`DataError` naming row and column."""
    where = f"{path}:{line_no}, column {column}"
    fill = "set data.impute=mean|median to fill missing cells from the training rows"
    text = cell.strip()
    missing = text.lower() in NA_TOKENS
    if missing and impute != "none":
        return None, True
    if not text:
        raise DataError(f"{where}: the value is empty; fill or drop the row, or {fill}")
    try:
        value = float(text)
    except ValueError:
        if missing:
            message = f"{where}: the value {cell!r} marks a missing cell; fill or drop the row, or {fill}"
            raise DataError(message) from None
        if categorical == "reject":
            raise DataError(
                f"{where}: feature value {cell!r} is not a number "
                "(data.categorical=onehot encodes such a column as one 0/1 column per value)"
            ) from None
        return text, False
    if not math.isfinite(value):
        hint = f" ('nan' counts as missing: {fill})" if missing else ""
        raise DataError(f"{where}: feature value {cell!r} is not finite; features must be finite numbers{hint}")
    if abs(value) > FLOAT32_MAX:
        raise DataError(f"{where}: feature value {cell!r} is beyond float32's range (|x| <= 3.4e38)")
    return text, True


def encode_table(raw: RawTable, train_rows: torch.Tensor, impute: str = "none") -> EncodedTable:
    """The features of ``raw`` as numbers, with everything learnt from the rows ``train_rows`` alone.

    Numeric columns: missing cells become the mean or median (``impute``) of the column's training
    rows. Categorical columns: one 0/1 column per value seen in the training rows (sorted, named
    ``col=value``); a missing cell, or a value no training row has, gives an all-zero row.
    """
    n = len(raw.y)
    train = train_rows.tolist()
    blocks, names, onehot = [], [], []
    imputed: dict[str, int] = {}
    encoded: list[str] = []
    blank_categories = unseen = 0
    for name, cells, is_categorical in zip(raw.features, raw.columns, raw.categorical, strict=True):
        if is_categorical:
            categories = sorted({cells[r] for r in train if cells[r] is not None}, key=_class_sort_key)
            index = {c: k for k, c in enumerate(categories)}
            block = torch.zeros(n, len(categories), dtype=torch.float64)
            for r, c in enumerate(cells):
                if c is None:
                    blank_categories += 1
                elif c in index:
                    block[r, index[c]] = 1.0
                else:
                    unseen += 1
            blocks.append(block)
            names += [f"{name}={c}" for c in categories]
            onehot += [True] * len(categories)
            encoded.append(f"{name} ({len(categories)} categories)")
            continue
        values = torch.tensor([math.nan if c is None else float(c) for c in cells], dtype=torch.float64)
        missing = values.isnan()
        if missing.any():
            known = values[train_rows][~missing[train_rows]]
            if len(known) == 0:
                raise DataError(
                    f"{raw.path}: column {name} has no values in the training rows to impute from "
                    f"(data.impute={impute}); drop the column or fill it"
                )
            fill = float(known.mean()) if impute == "mean" else float(np.median(known.numpy()))
            values[missing] = fill
            imputed[name] = int(missing.sum())
        blocks.append(values[:, None])
        names.append(name)
        onehot.append(False)
    x = torch.cat(blocks, dim=1).float() if blocks else torch.zeros(n, 0)
    summary = []
    if imputed:
        count = sum(imputed.values())
        summary.append(f"imputed {_cells(count)} ({impute} of training rows) in columns {', '.join(imputed)}")
    if encoded:
        summary.append("one-hot: " + ", ".join(encoded))
    if blank_categories:
        summary.append(f"{_cells(blank_categories)} of categorical columns left all-zero")
    if unseen:
        summary.append(f"{_cells(unseen, '')} with a category no training row has left all-zero")
    return EncodedTable(x, names, torch.tensor(onehot, dtype=torch.bool), "; ".join(summary))


def _cells(n: int, what: str = "missing ") -> str:
    return f"{n} {what}cell{'' if n == 1 else 's'}"


def read_table(
    path: str | Path, target: str, categorical: str = "onehot", impute: str = "none"
) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    """Read a CSV with a header into ``(x float32 (N, F), y int64 (N,), feature_names, class_names)``.

    :func:`parse_table` then :func:`encode_table` with every row as a training row (categories and
    imputed values from the whole table; the data module learns them from its training rows only).
    """
    raw = parse_table(path, target, categorical, impute)
    table = encode_table(raw, torch.arange(len(raw.y)), impute)
    return table.x, raw.y, table.names, raw.classes


def _is_float(cell: str) -> bool:
    try:
        return math.isfinite(float(cell))
    except ValueError:
        return False


def _class_sort_key(label: str):
    return (0, float(label), "") if _is_float(label) else (1, 0.0, label)


# trainer.max_epochs=null: a table trains for about this many optimizer steps, and at least this many epochs
TABLE_STEPS = 2000
MIN_TABLE_EPOCHS = 20
# model.width=null: a table's networks are this wide (hidden sizes 256, 128): chosen by 5-fold cross-validation
# on the training rows of four tables (docs/results.md, "Tables")
TABLE_WIDTH = 256


def auto_batch_size(n_train: int) -> int:
    """``data.batch_size=auto`` for ``n_train`` training rows: the power of two nearest ``n_train / 40``,
    within [16, 256] (Iris, wine: 16; digits' 1,300 rows: 32; 10,000 rows or more: 256)."""
    target = max(1.0, n_train / 40)
    return int(min(256, max(16, 2 ** round(math.log2(target)))))


def _scaling(train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column mean and std of the training rows ``(N, F)``; a column constant over them keeps scale 1
    (as scikit-learn's StandardScaler): dividing by its ~0 std would turn any other value a val/test row
    holds there into ~1e8 (digits' corner pixels: test losses of 3e3 to 6e4 for the MLP and the linear model)."""
    mean = train.mean(dim=0)
    std = train.std(dim=0, unbiased=False)
    constant = std <= 1e-6 * mean.abs().clamp_min(1.0)
    return mean, std.masked_fill(constant, 1.0)


@dataclass
class PreparedTable:
    """What :class:`TabularDataModule` reads once: the encoded features, labels and the row split."""

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    names: list[str]
    onehot: torch.Tensor
    test: torch.Tensor
    val: torch.Tensor
    train: torch.Tensor
    summary: str


class TabularDataModule(InMemoryDataModule):
    """Classification data from a CSV: train/val/test split, standardised on train only.

    Args:
        path: the CSV file (header row, feature columns, one label column); None = packaged Iris.
        target: the label column's name.
        batch_size: training batch size (evaluation uses ``eval_batch_size``); ``"auto"``: from the
            training rows (:func:`auto_batch_size`: 16 for a few hundred rows, up to 256 for tens of thousands).
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
        standardize: scale the numeric features to zero mean, unit variance with the *training* rows'
            statistics; one-hot columns stay 0/1.
        categorical: feature columns with a value that is not a number. ``onehot``: one 0/1 column
            per value the training rows hold (sorted, named ``col=value``); a value only val/test rows
            hold gives an all-zero row. ``reject``: a one-line :class:`DataError` naming the cell.
        impute: missing feature cells (empty, ``NA``, ``N/A``, ``nan``, ``?``, ``null``). ``none``: a
            one-line :class:`DataError` naming row and column. ``mean`` | ``median``: a numeric
            column's missing cells become the mean/median of its *training* rows; in a categorical
            column a missing cell is an all-zero one-hot row. A missing label is always an error.
        cv_folds, cv_fold: k-fold cross-validation (``cv_folds=0``: off). The test rows are cut as
            without it; the other rows are dealt into ``cv_folds`` stratified folds (``split_seed``),
            fold ``cv_fold`` validates and the rest train. ``val_fraction`` is ignored then.
        name: a label for logs.

    The table is read once, when ``n_features`` (the width after one-hot encoding), ``classes`` or
    ``setup`` first needs it; ``preprocessing_summary`` then says in one line what was imputed and
    encoded. Batches: ``x`` float32 ``(B, F)``, ``y`` int64 ``(B,)``.
    """

    def __init__(
        self,
        path: str | None = None,
        target: str = "species",
        batch_size: int | str = "auto",
        eval_batch_size: int = 1024,
        test_fraction: float = 0.2,
        val_fraction: float = 0.1,
        split_seed: int = 42,
        split: str = "stratified",
        standardize: bool = True,
        categorical: str = "onehot",
        impute: str = "none",
        cv_folds: int = 0,
        cv_fold: int | None = None,
        name: str = "csv",
        device: str | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path) if path else IRIS_CSV
        self.target = target
        if batch_size != "auto" and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise DataError(f"data.batch_size={batch_size} must be a positive integer or auto")
        self._batch_size = batch_size
        self.eval_batch_size = int(eval_batch_size)
        self.test_fraction = float(test_fraction)
        self.val_fraction = float(val_fraction)
        self.split_seed = int(split_seed)
        for key, value, choices in (("split", split, SPLITS), ("categorical", categorical, CATEGORICAL)):
            if value not in choices:
                raise DataError(f"data.{key}={value} is not one of {', '.join(choices)}")
        if impute not in IMPUTE:
            raise DataError(f"data.impute={impute} is not one of {', '.join(IMPUTE)}")
        self.split, self.categorical, self.impute = split, categorical, impute
        self.cv_folds = int(cv_folds)
        self.cv_fold = None if cv_fold is None else int(cv_fold)
        if problem := cv_problem(self.cv_folds, self.cv_fold):
            raise DataError(problem)
        self.standardize = bool(standardize)
        self.name = name
        self.device = device
        header = read_header(self.path)
        if target not in header:
            raise DataError(f"data.target={target} is not a column of {self.path}; columns: {', '.join(header)}")
        self._prepared: PreparedTable | None = None
        self.splits: dict[str, InMemoryDataset] = {}
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        """The training batch: ``data.batch_size``, or with ``auto`` :func:`auto_batch_size` of the training rows."""
        if self._batch_size == "auto":
            return auto_batch_size(len(self.table.train))
        return int(self._batch_size)

    def validation_rows(self) -> int:
        return len(self.table.val)

    def suggested_max_epochs(self) -> int:
        """Epochs for about :data:`TABLE_STEPS` optimizer steps (at least :data:`MIN_TABLE_EPOCHS`): what a
        run trains with ``trainer.max_epochs=null``, so a 150-row table gets as many updates as a large one."""
        steps_per_epoch = math.ceil(len(self.table.train) / self.batch_size)
        return max(MIN_TABLE_EPOCHS, math.ceil(TABLE_STEPS / steps_per_epoch))

    def suggested_width(self) -> int:
        """:data:`TABLE_WIDTH`: what ``model.width=null`` gives a table's uGMM-NN and MLP."""
        return TABLE_WIDTH

    @property
    def n_features(self) -> int:
        """Feature columns after one-hot encoding (reads the table once)."""
        return self.table.x.shape[1]

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return (self.n_features,)

    @property
    def feature_names(self) -> list[str]:
        """A name per feature column: the header's, ``col=value`` for one-hot columns."""
        return self.table.names

    @property
    def classes(self) -> list[str]:
        """Class names in index order (reads and checks the table once)."""
        return self.table.classes

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def preprocessing_summary(self) -> str:
        """One line on what was imputed and one-hot encoded ("" when the table needed neither)."""
        return self.table.summary

    @property
    def table(self) -> PreparedTable:
        """The table read, checked, split and encoded, once: imputed values and categories come from
        the training rows alone."""
        if self._prepared is None:
            raw = parse_table(self.path, self.target, self.categorical, self.impute)
            self._check_split_sizes(raw.y)
            test, val, train = self.split_indices(raw.y)
            encoded = encode_table(raw, train, self.impute)
            self._prepared = PreparedTable(
                encoded.x, raw.y, raw.classes, encoded.names, encoded.onehot, test, val, train, encoded.summary
            )
        return self._prepared

    def _check_split_sizes(self, y: torch.Tensor) -> None:
        """A one-line :class:`DataError` when the test, validation or training part would be empty."""
        if self.cv_folds:
            test, rest = self._test_and_rest(y, check=False)
            if len(test) and len(rest) >= self.cv_folds:
                return
            raise DataError(
                f"{self.path} has {len(y)} data rows, too few for data.test_fraction={self.test_fraction:g} and "
                f"data.cv_folds={self.cv_folds}: {len(test)} test rows and {len(rest)} rows to deal into "
                f"{self.cv_folds} folds; every part needs a row"
            )
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
        table = self.table
        x = table.x
        if self.standardize:
            # statistics of the training rows only, so nothing leaks from val/test
            train = x[table.train]
            self.mean, self.std = _scaling(train)
            double = not (self.mean.isfinite().all() and self.std.isfinite().all())
            if double:  # huge (float32-finite) values overflow when squared: the same in float64
                self.mean, self.std = _scaling(train.double())
            # one-hot columns stay 0/1 (a missing or unseen category stays an all-zero row)
            self.mean = self.mean.masked_fill(table.onehot, 0.0)
            self.std = self.std.masked_fill(table.onehot, 1.0)
            if double:
                x = ((x.double() - self.mean) / self.std).float()
                self.mean, self.std = self.mean.float(), self.std.float()
            else:
                x = (x - self.mean) / self.std
        device = self.device or trainer_device(self)
        self.splits = {
            name: InMemoryDataset(x[idx], table.y[idx]).to(device)
            for name, idx in (("train", table.train), ("val", table.val), ("test", table.test))
        }

    def _test_and_rest(self, y: torch.Tensor, check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The test rows (by ``self.split``) and the rest, which validation and training share."""
        if self.split == "stratified":
            test, rest = stratified_split(y, [self.test_fraction], self.split_seed)
            return test, rest
        try:
            return shuffle_split(len(y), self.test_fraction, self.split_seed)
        except ValueError as err:
            if check:
                raise DataError(f"{self.path}: {err}") from None
            return torch.arange(len(y)), torch.zeros(0, dtype=torch.int64)

    def split_indices(self, y: torch.Tensor, check: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Row indices ``(test, val, train)`` of a table with labels ``y`` ``(N,)``, by ``self.split``
        (and the fold ``cv_fold`` of ``cv_folds``, when cross-validating).

        ``check``: raise :class:`DataError` when the split leaves no training rows (else return it as is).
        """
        if self.cv_folds:
            test, rest = self._test_and_rest(y, check)
            folds = stratified_folds(y, rest.sort().values, self.cv_folds, self.split_seed)
            train = torch.cat([f for i, f in enumerate(folds) if i != self.cv_fold]).sort().values
            return test, folds[self.cv_fold], train
        if self.split == "stratified":
            test, val, train = stratified_split(y, [self.test_fraction, self.val_fraction], self.split_seed)
            return test, val, train
        test, train = self._test_and_rest(y, check)
        if len(train) == 0:
            return test, train, train
        # validation rows come out of the reference's training part, so its test rows are untouched
        n_val = int(round(self.val_fraction * len(y)))
        if n_val >= len(train) and check:
            raise DataError(f"{self.path}: data.val_fraction={self.val_fraction} leaves no training rows")
        n_val = min(n_val, len(train))
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.split_seed))
        return test, train[order[:n_val]].sort().values, train[order[n_val:]].sort().values


def cv_problem(cv_folds: int, cv_fold: int | None) -> str | None:
    """What is wrong with ``data.cv_folds``/``data.cv_fold`` for one data module (None: nothing)."""
    if cv_folds == 0:
        return None if cv_fold is None else f"data.cv_fold={cv_fold} needs data.cv_folds >= 2 (cross-validation)"
    if cv_folds < 2:
        return f"data.cv_folds={cv_folds} must be 0 (no cross-validation) or at least 2"
    if cv_fold is None:
        return (
            f"data.cv_folds={cv_folds} needs data.cv_fold=<0..{cv_folds - 1}>, the fold that validates "
            "(train.py runs every fold itself when data.cv_fold=null)"
        )
    if not 0 <= cv_fold < cv_folds:
        return f"data.cv_fold={cv_fold} is out of range: must be in 0..{cv_folds - 1} for data.cv_folds={cv_folds}"
    return None
