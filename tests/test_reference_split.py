"""data.split=reference: scikit-learn's train_test_split permutation, row for row, without scikit-learn."""

from __future__ import annotations

import pytest
import torch

from ugmm.config import ConfigError, validate_train_config
from ugmm.data import IRIS_CSV, DataError, TabularDataModule
from ugmm.data.base import shuffle_split
from ugmm.data.tabular import read_table
from ugmm_helpers import make_cfg

# train_test_split(range(150), test_size=0.2, random_state=42)[1]: the paper's 30 Iris test rows, in order
IRIS_TEST_ROWS_SEED_42 = [
    73, 18, 118, 78, 76, 31, 64, 141, 68, 82, 110, 12, 36, 9, 19,
    56, 104, 69, 55, 132, 29, 127, 26, 128, 131, 145, 108, 143, 45, 30,
]  # fmt: skip


def test_shuffle_split_is_the_reference_permutation():
    test, train = shuffle_split(150, 0.2, seed=42)
    assert test.tolist() == IRIS_TEST_ROWS_SEED_42
    assert len(train) == 120 and set(train.tolist()).isdisjoint(test.tolist())
    assert sorted(test.tolist() + train.tolist()) == list(range(150))
    # ceil(test_fraction * n) test rows, as ShuffleSplit
    assert len(shuffle_split(10, 0.25, seed=0)[0]) == 3
    assert torch.equal(shuffle_split(150, 0.2, seed=42)[1], train)
    assert not torch.equal(shuffle_split(150, 0.2, seed=43)[0], test)


def test_shuffle_split_equals_scikit_learn():
    sklearn = pytest.importorskip("sklearn.model_selection")
    for n, frac, seed in [(150, 0.2, 42), (37, 0.3, 0), (1000, 0.05, 7)]:
        train, test = sklearn.train_test_split(list(range(n)), test_size=frac, random_state=seed)
        ours_test, ours_train = shuffle_split(n, frac, seed)
        assert ours_test.tolist() == test and ours_train.tolist() == train


def test_packaged_iris_is_scikit_learns_load_iris():
    # the same rows in the same order, so the same indices select the same flowers
    datasets = pytest.importorskip("sklearn.datasets")
    features, labels = datasets.load_iris(return_X_y=True)
    x, y, _, _ = read_table(IRIS_CSV, "species")
    torch.testing.assert_close(x, torch.as_tensor(features, dtype=torch.float32))
    assert y.tolist() == labels.tolist()


def test_iris_reference_split_parts():
    dm = TabularDataModule(split="reference", val_fraction=0.1, split_seed=42)
    dm.setup()
    x, y, _, _ = read_table(IRIS_CSV, "species")
    # the test rows are the reference's, in its order
    torch.testing.assert_close(dm.splits["test"].x * dm.std + dm.mean, x[IRIS_TEST_ROWS_SEED_42])
    assert dm.splits["test"].y.tolist() == y[IRIS_TEST_ROWS_SEED_42].tolist()
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [105, 15, 30]
    # validation comes out of the reference's training rows; standardisation from the rest alone
    train_rows = set(range(150)) - set(IRIS_TEST_ROWS_SEED_42)
    test_idx, val_idx, train_idx = dm.split_indices(y)
    assert set(val_idx.tolist()) | set(train_idx.tolist()) == train_rows
    assert set(val_idx.tolist()).isdisjoint(train_idx.tolist())
    torch.testing.assert_close(dm.mean, x[train_idx].mean(0))
    # deterministic: the same seed gives the same parts
    again = TabularDataModule(split="reference", val_fraction=0.1, split_seed=42)
    again.setup()
    for part in ("train", "val", "test"):
        assert torch.equal(again.splits[part].x, dm.splits[part].x)


def test_reference_split_without_validation_rows():
    dm = TabularDataModule(split="reference", val_fraction=0.0)
    dm.setup()
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [120, 0, 30]
    assert dm.splits["test"].y.tolist() == read_table(IRIS_CSV, "species")[1][IRIS_TEST_ROWS_SEED_42].tolist()


def test_bad_split_values_are_one_line_errors():
    with pytest.raises(DataError, match=r"^data.split=random is not one of stratified, reference$"):
        TabularDataModule(split="random")
    with pytest.raises(ConfigError, match=r"^data.split=random is not allowed; choose one of: stratified, reference$"):
        validate_train_config(make_cfg(["data=iris", "data.split=random"]))
    # no validation rows and a validation monitor: refused before training, not mid-run
    with pytest.raises(ConfigError, match="data.val_fraction=0 leaves no validation rows") as info:
        validate_train_config(make_cfg(["data=iris", "data.val_fraction=0", "monitor.metric=val/acc"]))
    assert "\n" not in str(info.value)
    validate_train_config(
        make_cfg(["data=iris", "data.val_fraction=0", "monitor.metric=train/nll", "monitor.mode=min", "loss=nll"])
    )
