"""Real-world tables: categorical columns, missing cells, k-fold cross-validation (data=csv)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ugmm.cli import train
from ugmm.config import ConfigError, validate_train_config
from ugmm.data import DataError, TabularDataModule
from ugmm.data.base import stratified_split
from ugmm_helpers import make_cfg

QUIET = ["callbacks.rich_progress_bar=null", "callbacks.model_summary=null", "trainer.enable_progress_bar=false"]


def _labels(n: int) -> list[str]:
    return ["ab"[i % 2] for i in range(n)]


def _write(tmp_path: Path, header: str, rows: list[str]) -> Path:
    path = tmp_path / "t.csv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def _parts(n: int, test: float = 0.2, val: float = 0.1, seed: int = 42) -> tuple[list[int], list[int], list[int]]:
    """The default stratified (test, val, train) rows of a table whose labels alternate a, b."""
    y = torch.tensor([i % 2 for i in range(n)])
    return tuple(part.tolist() for part in stratified_split(y, [test, val], seed))


# --- categorical columns ------------------------------------------------------------------------
def test_onehot_columns_from_the_training_rows(tmp_path):
    test, _, train = _parts(40)
    colors = ["red", "blue", "green"]
    cells = [colors[i % 3] for i in range(40)]
    cells[test[0]] = "purple"  # only a test row has it: an all-zero row, no column
    rows = [f"{i * 0.5},{cells[i]},{y}" for i, y in enumerate(_labels(40))]
    dm = TabularDataModule(path=str(_write(tmp_path, "x,color,y", rows)), target="y")
    # the width after encoding, before setup (the model is built from it)
    assert dm.n_features == 4
    assert dm.feature_names == ["x", "color=blue", "color=green", "color=red"]
    assert "one-hot: color (3 categories)" in dm.preprocessing_summary
    assert "1 cell with a category no training row has left all-zero" in dm.preprocessing_summary
    x = dm.table.x
    for r in train:
        assert x[r, 1:].tolist() == [float(cells[r] == c) for c in ("blue", "green", "red")]
    assert x[test[0], 1:].tolist() == [0.0, 0.0, 0.0]
    dm.setup()
    # standardisation leaves the one-hot columns 0/1 and scales the numeric one
    onehot = dm.splits["train"].x[:, 1:]
    assert set(onehot.unique().tolist()) == {0.0, 1.0} and torch.equal(onehot.sum(1), torch.ones(len(train)))
    assert dm.splits["train"].x[:, 0].mean().abs() < 1e-5


def test_categorical_reject_names_the_cell(tmp_path):
    path = _write(tmp_path, "a,b,y", ["1,2,x", "3,oops,z", "4,5,x"])
    with pytest.raises(DataError) as info:
        TabularDataModule(path=str(path), target="y", categorical="reject").setup()
    message = str(info.value)
    assert message.startswith(f"{path}:3, column b: feature value 'oops' is not a number")
    assert "data.categorical=onehot" in message and "\n" not in message


def test_a_word_in_a_column_of_numbers_is_one_hot_with_a_warning(tmp_path, caplog):
    rows = [f"{i},{i * 2 if i != 4 else 'oops'},{y}" for i, y in enumerate(_labels(20))]
    dm = TabularDataModule(path=str(_write(tmp_path, "a,b,y", rows)), target="y")
    with caplog.at_level("WARNING", logger="ugmm.data.tabular"):
        assert dm.n_features > 2
    assert "t.csv:6, column b: 'oops' makes the column categorical (one-hot) though 19 of its values" in caplog.text


def test_categorical_and_impute_choices_are_checked():
    with pytest.raises(DataError, match="^data.categorical=ordinal is not one of onehot, reject$"):
        TabularDataModule(categorical="ordinal")
    with pytest.raises(DataError, match="^data.impute=zero is not one of none, mean, median$"):
        TabularDataModule(impute="zero")
    for override, message in [
        ("data.categorical=ordinal", "data.categorical=ordinal is not allowed; choose one of: onehot, reject"),
        ("data.impute=zero", "data.impute=zero is not allowed; choose one of: none, mean, median"),
        ("data.cv_folds=1", "data.cv_folds=1 must be 0 (no cross-validation) or at least 2"),
        ("data.cv_folds=-2", "data.cv_folds=-2 is out of range: must be >= 0"),
        ("data.cv_fold=1", "data.cv_fold=1 needs data.cv_folds >= 2"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            validate_train_config(make_cfg(["data=iris", override]))
    with pytest.raises(ConfigError, match="must be in 0..2 for data.cv_folds=3"):
        validate_train_config(make_cfg(["data=iris", "data.cv_folds=3", "data.cv_fold=3"]))
    with pytest.raises(ConfigError, match="cross-validation is for tables"):
        validate_train_config(make_cfg(["data=mnist", "+data.cv_folds=5"]))
    # with folds, val_fraction is not used: no complaint about it
    validate_train_config(make_cfg(["data=iris", "data.cv_folds=5", "data.val_fraction=0.9"]))


# --- missing cells ------------------------------------------------------------------------------
@pytest.mark.parametrize("impute", ["mean", "median"])
def test_impute_from_the_training_rows_only(tmp_path, impute):
    test, val, train = _parts(40)
    values = [float(i) for i in range(40)]
    for r in test:
        values[r] = 1000.0 + r  # the test rows would pull any whole-table statistic far up
    hole = train[3]
    cells = [str(v) for v in values]
    cells[hole] = ""
    rows = [f"{c},{i},{y}" for i, (c, y) in enumerate(zip(cells, _labels(40), strict=True))]
    dm = TabularDataModule(path=str(_write(tmp_path, "a,b,y", rows)), target="y", impute=impute)
    known = torch.tensor([values[r] for r in train if r != hole], dtype=torch.float64)
    expected = known.mean() if impute == "mean" else known.median()
    if impute == "median" and len(known) % 2 == 0:
        expected = known.sort().values[len(known) // 2 - 1 : len(known) // 2 + 1].mean()
    assert dm.table.x[hole, 0].item() == pytest.approx(expected.item())
    everything = torch.tensor([v for r, v in enumerate(values) if r != hole])
    assert dm.table.x[hole, 0].item() != pytest.approx(everything.mean().item())
    assert dm.preprocessing_summary == f"imputed 1 missing cell ({impute} of training rows) in columns a"


@pytest.mark.parametrize("token", ["", "NA", "N/A", "nan", "NaN", "?", "null", " na "])
def test_na_tokens_are_missing_cells(tmp_path, token):
    rows = [f"{i},{'x' if i % 3 else 'w'},{y}" for i, y in enumerate(_labels(30))]
    rows[5] = f"{token},w,b"
    rows[7] = f"7,{token},b"
    dm = TabularDataModule(path=str(_write(tmp_path, "a,c,y", rows)), target="y", impute="mean")
    assert dm.feature_names == ["a", "c=w", "c=x"]
    assert dm.table.x[5, 0].isfinite() and dm.table.x[7, 1:].tolist() == [0.0, 0.0]
    assert "1 missing cell of categorical columns left all-zero" in dm.preprocessing_summary


def test_without_impute_a_missing_cell_is_one_line_naming_row_and_column(tmp_path):
    rows = [f"{i},{i},{y}" for i, y in enumerate(_labels(20))]
    rows[2] = "2,,a"
    path = _write(tmp_path, "a,b,y", rows)
    with pytest.raises(DataError) as info:
        TabularDataModule(path=str(path), target="y").setup()
    assert str(info.value).startswith(f"{path}:4, column b: the value is empty")
    assert "data.impute=mean|median" in str(info.value)
    rows[2] = "2,NA,a"
    path = _write(tmp_path, "a,b,y", rows)
    with pytest.raises(DataError, match=r"t.csv:4, column b: the value 'NA' marks a missing cell.*data.impute=mean"):
        TabularDataModule(path=str(path), target="y").setup()
    # nan is refused as before (not finite), with the way to fill it
    rows[2] = "2,nan,a"
    path = _write(tmp_path, "a,b,y", rows)
    with pytest.raises(DataError, match=r"t.csv:4, column b: feature value 'nan' is not finite.*data.impute=mean"):
        TabularDataModule(path=str(path), target="y").setup()
    # a missing label is an error whatever data.impute says
    rows[2] = "2,3,?"
    path = _write(tmp_path, "a,b,y", rows)
    with pytest.raises(DataError, match=r"t.csv:4: the label \(column y\) is missing \('\?'\)"):
        TabularDataModule(path=str(path), target="y", impute="median").setup()


def test_a_column_without_training_values_cannot_be_imputed(tmp_path):
    rows = [f"{i},,{y}" for i, y in enumerate(_labels(20))]
    with pytest.raises(DataError, match="column b has no values in the training rows to impute from"):
        TabularDataModule(path=str(_write(tmp_path, "a,b,y", rows)), target="y", impute="mean").setup()


# --- cross-validation ---------------------------------------------------------------------------
def test_cv_folds_partition_the_rows_left_after_the_test_rows(tmp_path):
    rows = [f"{i},{i % 5},{'abc'[i % 3]}" for i in range(61)]
    path = _write(tmp_path, "a,b,y", rows)
    plain = TabularDataModule(path=str(path), target="y")
    k = 4
    folds = [TabularDataModule(path=str(path), target="y", cv_folds=k, cv_fold=i, val_fraction=0.5) for i in range(k)]
    for dm in folds:
        # the test rows do not depend on the fold (nor on val_fraction): the same as without folds
        assert torch.equal(dm.table.test, plain.table.test)
        assert set(dm.table.val.tolist()).isdisjoint(dm.table.train.tolist())
        assert sorted(dm.table.val.tolist() + dm.table.train.tolist() + dm.table.test.tolist()) == list(range(61))
    validated = sorted(r for dm in folds for r in dm.table.val.tolist())
    rest = sorted(set(range(61)) - set(plain.table.test.tolist()))
    assert validated == rest  # every non-test row validates exactly once
    sizes = [len(dm.table.val) for dm in folds]
    assert max(sizes) - min(sizes) <= 1
    y = plain.table.y
    for dm in folds:  # stratified: each class's count per fold differs by at most one
        counts = torch.bincount(y[dm.table.val], minlength=3)
        assert counts.max() - counts.min() <= 1
    dm = folds[1]
    dm.setup()
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [len(dm.table.train), len(dm.table.val), 12]
    # the same seed gives the same folds; another seed others
    again = TabularDataModule(path=str(path), target="y", cv_folds=k, cv_fold=1)
    assert torch.equal(again.table.val, dm.table.val)
    other = TabularDataModule(path=str(path), target="y", cv_folds=k, cv_fold=1, split_seed=7)
    assert not torch.equal(other.table.val, dm.table.val)


def test_cv_with_too_few_rows_or_without_a_fold_is_one_line(tmp_path):
    path = _write(tmp_path, "a,y", [f"{i},{y}" for i, y in enumerate(_labels(10))])
    with pytest.raises(DataError, match="too few for data.test_fraction=0.2 and data.cv_folds=9"):
        TabularDataModule(path=str(path), target="y", cv_folds=9, cv_fold=0).setup()
    with pytest.raises(DataError, match=r"data.cv_folds=3 needs data.cv_fold=<0..2>"):
        TabularDataModule(path=str(path), target="y", cv_folds=3)


def test_train_runs_every_fold_and_records_mean_and_std(tmp_path):
    rows = [f"{(i % 2) * 3 + (i % 7) / 7:.3f},{'uv'[i % 2] if i % 5 else 'w'},{y}" for i, y in enumerate(_labels(40))]
    rows[3] = ",u,b"
    path = _write(tmp_path, "a,c,y", rows)
    overrides = [f"data.path={path}", "data.target=y", "data.impute=median", "data.cv_folds=3", "data.batch_size=8"]
    overrides += ["data=csv", "model.width=4", "trainer.max_epochs=2", "logger=none", f"paths.log_dir={tmp_path}"]
    cfg = make_cfg([*QUIET, *overrides])
    best = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "ok" and record["cv_folds"] == 3 and record["monitor"] == "val/acc"
    for key in ("val_acc", "test_acc", "val_loss", "test_loss"):
        assert {f"cv/{key}_mean", f"cv/{key}_std"} <= set(record["metrics"]), record["metrics"]
    folds = record["folds"]
    assert [f["fold"] for f in folds] == [0, 1, 2]
    # the objective is the mean of the folds' best monitored values
    assert best == pytest.approx(record["best"]) == pytest.approx(sum(f["best"] for f in folds) / 3)
    test_accs = [f["metrics"]["test/acc"] for f in folds]
    assert record["metrics"]["cv/test_acc_mean"] == pytest.approx(sum(test_accs) / 3)
    for i, fold in enumerate(folds):  # each fold's own checkpoint, in its own folder, and no metrics.json there
        assert Path(fold["best_ckpt"]).is_relative_to(run_dir / f"fold_{i}") and Path(fold["best_ckpt"]).is_file()
        assert not (run_dir / f"fold_{i}" / "metrics.json").exists()
        data = torch.load(fold["best_ckpt"], map_location="cpu", weights_only=True)["hyper_parameters"]["data"]
        assert (data["cv_folds"], data["cv_fold"]) == (3, i)  # eval.py rebuilds this fold's data
    assert record["preprocessing"].startswith("imputed 1 missing cell (median of training rows) in columns a")
    # resuming a cross-validation, or running one over several devices, is refused in one line
    with pytest.raises(ConfigError, match="cannot resume a cross-validation"):
        train(make_cfg([*QUIET, *overrides, f"ckpt_path={folds[0]['best_ckpt']}"]))
    with pytest.raises(ConfigError, match="runs its folds one after another on one device; this trainer has 2"):
        train(make_cfg([*QUIET, *overrides, "trainer.devices=2"]))


def test_a_column_constant_over_the_training_rows_keeps_scale_one(tmp_path):
    """As scikit-learn's StandardScaler: no division by a ~0 std (a test row's other value would become ~1e8)."""
    path = tmp_path / "constant.csv"

    def write(b_values):
        path.write_text("a,b,y\n" + "".join(f"{i},{b},{i % 2}\n" for i, b in enumerate(b_values)))

    write([0.0] * 40)
    test_row = int(TabularDataModule(str(path), "y", split_seed=0).table.test[0])  # the split ignores features
    write([5.0 if i == test_row else 0.0 for i in range(40)])
    dm = TabularDataModule(str(path), "y", split_seed=0)
    dm.setup()
    assert float(dm.std[1]) == 1.0 and float(dm.mean[1]) == 0.0
    assert dm.splits["test"].x[:, 1].max().item() == 5.0


def test_auto_batch_size_follows_the_training_rows():
    from ugmm.data.tabular import auto_batch_size

    assert [auto_batch_size(n) for n in (10, 105, 1258, 10_000, 10**6)] == [16, 16, 32, 256, 256]


def test_null_max_epochs_trains_a_table_for_about_2000_steps():
    """trainer.max_epochs=null: the data's suggestion, written into the config (logged, scheduled, checkpointed)."""
    from ugmm.builders import build_datamodule, resolve_max_epochs
    from ugmm.data.tabular import TABLE_STEPS

    cfg = make_cfg(["data=iris"])
    assert cfg.trainer.max_epochs is None and cfg.data.batch_size == 16
    dm = build_datamodule(cfg.data)
    resolve_max_epochs(cfg, dm)
    steps_per_epoch = -(-len(dm.table.train) // dm.batch_size)
    assert cfg.trainer.max_epochs == dm.suggested_max_epochs() == -(-TABLE_STEPS // steps_per_epoch)
    # an explicit limit, in epochs or steps, is left alone
    for override, key, value in (
        ("trainer.max_epochs=7", "max_epochs", 7),
        ("trainer.max_steps=50", "max_epochs", None),
    ):
        cfg = make_cfg(["data=iris", override])
        resolve_max_epochs(cfg, dm)
        assert cfg.trainer[key] == value


def test_null_width_is_the_data_suggestion_for_ugmm_and_mlp_alike():
    """model.width=null: a table's networks are TABLE_WIDTH wide, MNIST's 128; explicit widths and width-less
    models are left alone."""
    from ugmm.builders import build_datamodule, resolve_model_width
    from ugmm.data.mnist import MNISTDataModule
    from ugmm.data.tabular import TABLE_WIDTH

    for model in ("ugmm", "mlp"):
        cfg = make_cfg(["data=iris", f"model={model}"])
        assert cfg.model.width is None
        resolve_model_width(cfg, build_datamodule(cfg.data))
        assert cfg.model.width == TABLE_WIDTH
        cfg = make_cfg(["data=iris", f"model={model}", "model.width=8"])
        resolve_model_width(cfg, build_datamodule(cfg.data))
        assert cfg.model.width == 8
    cfg = make_cfg(["data=iris", "model=linear"])
    resolve_model_width(cfg, build_datamodule(cfg.data))
    assert "width" not in cfg.model
    assert MNISTDataModule.suggested_width(object.__new__(MNISTDataModule)) == 128


def test_the_default_run_trains_mnist_for_its_suggested_epochs():
    from ugmm.data.mnist import MNISTDataModule

    cfg = make_cfg([])
    assert cfg.trainer.max_epochs is None and cfg.scheduler._target_.endswith("CosineAnnealingLR")
    assert (cfg.model.init, cfg.model.std_floor) == ("data", 0.1)
    assert MNISTDataModule.SUGGESTED_EPOCHS == 15


def test_a_small_validation_split_tests_the_last_model_without_early_stopping(tmp_path):
    """test_checkpoint=auto: Iris' 15 validation rows pick noise, so the run tests the end of its budget."""
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor

    from ugmm.builders import MIN_SELECTION_ROWS, build_datamodule, resolve_test_checkpoint

    cfg = make_cfg(["data=iris"])
    dm = build_datamodule(cfg.data)
    assert dm.validation_rows() == 15 < MIN_SELECTION_ROWS
    assert "early_stopping" in cfg.callbacks  # on by default
    callbacks = [EarlyStopping(monitor="val/acc", mode="max"), LearningRateMonitor()]
    choice, kept = resolve_test_checkpoint(cfg, dm, callbacks)
    assert choice == "last" and not any(isinstance(c, EarlyStopping) for c in kept)
    best, kept = resolve_test_checkpoint(make_cfg(["data=iris", "test_checkpoint=best"]), dm, callbacks)
    assert best == "best" and kept == callbacks
    # MNIST's 5000 validation images are enough to choose by
    mnist = type("DM", (), {"validation_rows": lambda self: 5000})()
    assert resolve_test_checkpoint(make_cfg([]), mnist, callbacks)[0] == "best"
    # end to end: the test metrics are the last model's, and metrics.json says so
    overrides = ["data=iris", "trainer.max_epochs=3", "logger=none", f"paths.log_dir={tmp_path}"]
    train(make_cfg([*overrides, "callbacks.rich_progress_bar=null"]))
    (record,) = [json.loads(p.read_text()) for p in tmp_path.rglob("metrics.json")]
    assert record["tested"] == "last" and record["tested_ckpt"].endswith("last.ckpt")
