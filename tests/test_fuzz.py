"""Fuzzing the inputs: malformed CSVs and random override strings give a clean run or one line, never a
traceback. Most cases go through the in-process checks the command line runs first; a few through train.py."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
from omegaconf import open_dict

from conftest import REPO
from ugmm.cli import build_datamodule
from ugmm.config import ConfigError, check_group_overrides, validate_train_config
from ugmm.data import DataError
from ugmm.overrides import check_plain_keys
from ugmm_helpers import make_cfg

USER_ERRORS = (ConfigError, DataError)


def _cell(rng: random.Random) -> str:
    return rng.choice(
        [str(rng.uniform(-5, 5)), str(rng.randint(-3, 3)), "nan", "inf", "-inf", "1e39", "1e300", "", " ", "abc",
         "1,5", '"2"', "0x10", "\x00", "é", "3.4e38", "-3.5e38"]
    )  # fmt: skip


def malformed_csv(rng: random.Random) -> bytes:
    """A small table with one kind of damage (or none)."""
    kind = rng.choice(["bytes", "ragged", "empty column", "huge", "nonfinite", "duplicate", "one row", "cells", "ok"])
    if kind == "bytes":
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    n_cols, n_rows = rng.randint(1, 4), rng.randint(0, 30)
    header = [f"f{i}" for i in range(n_cols)] + ["y"]
    if kind == "duplicate":
        header[rng.randrange(len(header))] = header[0] if header[0] != "y" else "y"
        header[-1] = rng.choice(["y", header[0]])
    rows = []
    for _ in range(n_rows if kind != "one row" else 1):
        row = [f"{rng.gauss(0, 1):.3f}" for _ in range(n_cols)] + [rng.choice("ab")]
        if kind == "ragged" and rng.random() < 0.3:
            row = row[: rng.randrange(len(row))] if rng.random() < 0.5 else [*row, "1"]
        if kind == "empty column":
            row[0] = ""
        if kind == "huge":
            row[rng.randrange(n_cols)] = rng.choice(["1e30", "-1e37", "3e38", "1e39"])
        if kind == "nonfinite" and rng.random() < 0.2:
            row[rng.randrange(n_cols)] = rng.choice(["nan", "inf", "-inf", "NaN"])
        if kind == "cells" and rng.random() < 0.3:
            row[rng.randrange(len(row))] = _cell(rng)
        rows.append(row)
    text = "\n".join(",".join(r) for r in [header, *rows]) + "\n"
    return text.encode("utf-8")


def test_malformed_csvs_give_a_clean_table_or_one_line(tmp_path):
    rng = random.Random(12)
    cfg = make_cfg(["data=csv", "data.path=x", "data.target=y"])
    outcomes = {"ok": 0, "error": 0}
    for i in range(120):
        path = tmp_path / f"t{i}.csv"
        path.write_bytes(malformed_csv(rng))
        with open_dict(cfg):
            cfg.data.path = str(path)
        try:
            validate_train_config(cfg)
            datamodule = build_datamodule(cfg.data)
            assert datamodule.n_classes >= 2
            datamodule.setup()
            assert all(split.x.isfinite().all() for split in datamodule.splits.values())
            outcomes["ok"] += 1
        except USER_ERRORS as err:
            assert str(err) and "\n" not in str(err), (path.read_bytes()[:200], str(err))
            outcomes["error"] += 1
    assert outcomes["ok"] > 5 and outcomes["error"] > 50, outcomes


KEYS = ["model.width", "model.depth", "model.dropout", "model.widht", "optimizer.lr", "optimizer.name", "seed",
        "data.batch_size", "data.test_fraction", "data.val_fraction", "data.target", "loss", "model", "trainer",
        "trainer.max_epochs", "scheduler.gamma", "monitor.mode", "lr", "data.split", "ckpt_path", "+extra", "~model",
        "model.backend", "model.std_floor", "data.augment", "trainer.max_epoch"]  # fmt: skip
VALUES = ["3", "-1", "0", "0.5", "1e9", "abc", "null", "", "[1,2]", "{a: 1}", "nan", "inf", "1e999", "'x'", "${oops}",
          "true", "adam", "min", "iris", "mlp", "cpu", "a=b", "(1", "[", "last", "reference", "ugmm"]  # fmt: skip


def random_overrides(rng: random.Random) -> list[str]:
    args = ["data=iris"]
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.1:
            args.append(rng.choice(["=x", "model.width", "a=b=c", "model..width=3", "@x=1", "model.width==3"]))
        else:
            args.append(f"{rng.choice(KEYS)}={rng.choice(VALUES)}")
    return args


def test_random_overrides_give_a_config_or_one_line():
    rng = random.Random(5)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(25):
        args = random_overrides(rng)
        try:
            check_group_overrides(args)
            check_plain_keys(args)
            validate_train_config(make_cfg(args))
            outcomes["ok"] += 1
        except ConfigError as err:
            assert str(err) and "\n" not in str(err), (args, str(err))
            outcomes["error"] += 1
    assert outcomes["ok"] >= 1 and outcomes["error"] >= 15, outcomes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_train_py_on_fuzzed_input_exits_0_or_2_with_one_line(tmp_path, seed):
    rng = random.Random(seed)
    path = tmp_path / "t.csv"
    path.write_bytes(malformed_csv(rng))
    args = [*random_overrides(rng)[1:], "data=csv", f"data.path={path}", "data.target=y"] if seed else [
        "data=csv", f"data.path={path}", "data.target=y"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [sys.executable, "train.py", *args, f"paths.log_dir={tmp_path / 'logs'}", "trainer.max_epochs=1"]
        + ["logger=none", "model.backend=reference", "callbacks=none", "trainer.enable_progress_bar=false"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Traceback" not in result.stderr, (args, result.stderr[-3000:])
    assert result.returncode in (0, 2), (args, result.stderr[-3000:])
    if result.returncode == 2:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, result.stderr[-3000:]
        assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("metrics.json"))
