"""DataModules: the MNIST family on IDX files the test writes (and the real MNIST when present), CSV/Iris."""

from __future__ import annotations

import pytest
import torch

from conftest import SHARED_DATA, requires_mnist
from ugmm.data import IRIS_CSV, DataError, InMemoryDataset, MNISTDataModule, TabularDataModule
from ugmm.data.base import batch_loader, stratified_split
from ugmm.data.tabular import read_table
from ugmm_helpers import write_fake_mnist


@pytest.mark.parametrize("name", ["MNIST", "FashionMNIST", "KMNIST"])
def test_mnist_family_from_idx_files(tmp_path, name):
    write_fake_mnist(tmp_path, name=name, n_train=240, n_test=60)
    dm = MNISTDataModule(name=name, data_dir=str(tmp_path), download=False, val_size=40, batch_size=32)
    dm.setup()
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [200, 40, 60]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert (dm.n_features, dm.n_classes, dm.feature_shape) == (784, 10, (1, 28, 28))
    # scaled once at setup, so a batch is a plain gather
    assert dm.splits["train"].x.dtype == torch.float32 and dm.splits["train"].transform is None


def test_mnist_normalisation_and_seeded_split(tmp_path):
    write_fake_mnist(tmp_path)
    raw = MNISTDataModule(data_dir=str(tmp_path), download=False, val_size=40, normalize=False, split_seed=3)
    raw.setup()
    x, _ = raw.splits["test"].__getitems__(list(range(60)))
    assert float(x.min()) >= 0.0 and float(x.max()) == 1.0
    norm = MNISTDataModule(data_dir=str(tmp_path), download=False, val_size=40, normalize=True, split_seed=3)
    norm.setup()
    xn, _ = norm.splits["test"].__getitems__(list(range(60)))
    torch.testing.assert_close(xn, (x - 0.1307) / 0.3081)
    # the same split seed holds out the same images; another seed, others
    assert torch.equal(raw.splits["val"].y, norm.splits["val"].y)
    torch.testing.assert_close(norm.splits["val"].x, (raw.splits["val"].x - 0.1307) / 0.3081)
    other = MNISTDataModule(data_dir=str(tmp_path), download=False, val_size=40, split_seed=4)
    other.setup()
    assert not torch.equal(other.splits["val"].x, raw.splits["val"].x)


def test_mnist_missing_files_one_line(tmp_path):
    dm = MNISTDataModule(data_dir=str(tmp_path), download=False)
    with pytest.raises(DataError) as info:
        dm.prepare_data()
    text = str(info.value)
    assert "\n" not in text and str(tmp_path / "MNIST" / "raw") in text and "train-images-idx3-ubyte" in text


@requires_mnist
def test_real_mnist():
    dm = MNISTDataModule(data_dir=str(SHARED_DATA), download=False, val_size=5000)
    dm.setup()
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [55000, 5000, 10000]
    x, y = dm.splits["train"].__getitems__(list(range(5000)))
    # normalised with MNIST's statistics: about zero mean, unit std
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1.0) < 0.05
    assert set(y.tolist()) == set(range(10))


def test_in_memory_dataset_batches_with_one_index():
    ds = InMemoryDataset(torch.arange(20.0).view(10, 2), torch.arange(10), transform=lambda x: x * 2)
    batches = list(batch_loader(ds, batch_size=4, shuffle=False))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    torch.testing.assert_close(batches[0][0], torch.arange(8.0).view(4, 2) * 2)
    x, y = ds[3]
    assert y == 3 and torch.equal(x, torch.tensor([12.0, 14.0]))


def test_stratified_split_keeps_class_balance():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    test, val, train = stratified_split(y, [0.2, 0.1], seed=42)
    assert len(set(test.tolist()) | set(val.tolist()) | set(train.tolist())) == 100
    assert torch.bincount(y[test]).tolist() == [10, 6, 4]
    assert torch.bincount(y[val]).tolist() == [5, 3, 2]
    assert torch.equal(test, stratified_split(y, [0.2, 0.1], seed=42)[0])


def test_iris_ships_in_the_package():
    x, y, features, classes = read_table(IRIS_CSV, "species")
    assert x.shape == (150, 4) and torch.bincount(y).tolist() == [50, 50, 50]
    assert classes == ["setosa", "versicolor", "virginica"] and len(features) == 4
    dm = TabularDataModule(split_seed=42)
    dm.setup()
    counts = {s: torch.bincount(dm.splits[s].y, minlength=3).tolist() for s in ("train", "val", "test")}
    assert counts == {"train": [35, 35, 35], "val": [5, 5, 5], "test": [10, 10, 10]}


def test_standardisation_fitted_on_train_only():
    dm = TabularDataModule(split_seed=42)
    dm.setup()
    train, test = dm.splits["train"].x, dm.splits["test"].x
    torch.testing.assert_close(train.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(train.std(0, unbiased=False), torch.ones(4), atol=1e-5, rtol=0)
    # the statistics came from the training rows alone: the raw table's train rows give them back
    x, y, _, _ = read_table(IRIS_CSV, "species")
    test_idx, val_idx, train_idx = stratified_split(y, [0.2, 0.1], 42)
    torch.testing.assert_close(dm.mean, x[train_idx].mean(0))
    torch.testing.assert_close(test, (x[test_idx] - dm.mean) / dm.std)
    assert not torch.allclose(dm.mean, x.mean(0))


def test_any_csv_with_a_label_column(tmp_path):
    csv = tmp_path / "t.csv"
    rows = ["f1,label,f2"] + [f"{i},{'ab'[i % 2]},{i * 0.5}" for i in range(40)]
    csv.write_text("\n".join(rows) + "\n")
    dm = TabularDataModule(path=str(csv), target="label", test_fraction=0.25, val_fraction=0.25, batch_size=8)
    dm.setup()
    assert (dm.n_features, dm.n_classes, dm.classes) == (2, 2, ["a", "b"])
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [20, 10, 10]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 2) and y.dtype == torch.int64


def test_csv_errors_are_one_line(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("a,b\n1,x\n2,y\n")
    with pytest.raises(DataError, match="data.target=c is not a column of .*columns: a, b"):
        TabularDataModule(path=str(csv), target="c")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,label\n1,2,x\n3,oops,y\n")
    with pytest.raises(DataError, match=r"bad.csv:3, column b: feature value 'oops' is not a number"):
        TabularDataModule(path=str(bad), target="label", categorical="reject").setup()
