"""Config composition (every group option, every experiment) and validation with one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torchvision

from conftest import REPO
from ugmm.config import (
    GROUPS,
    ConfigError,
    check_group_overrides,
    check_plain_keys,
    group_options,
    validate_train_config,
)
from ugmm_helpers import make_cfg

EXPERIMENTS = group_options("experiment")


def test_groups_ship_their_options():
    assert set(EXPERIMENTS) >= {"paper_mnist", "paper_iris", "mnist_mlp"}
    assert set(group_options("data")) >= {"mnist", "iris", "csv"}
    assert set(group_options("model")) >= {"ugmm", "mlp"}
    assert set(group_options("loss")) == {"cross_entropy", "nll"}
    assert set(group_options("trainer")) >= {"cpu", "gpu"}
    assert set(group_options("logger")) >= {"csv", "tensorboard", "none"}
    assert set(group_options("debug")) >= {"fdr", "overfit", "limit", "profiler"}


def test_defaults_are_the_paper_topology():
    cfg = make_cfg([])
    assert (cfg.model.net, cfg.model.width, cfg.model.depth, cfg.model.dropout) == ("ugmm", 128, 2, 0.2)
    assert (cfg.data.name, cfg.loss.name, cfg.optimizer.name, cfg.optimizer.lr) == (
        "MNIST",
        "cross_entropy",
        "adam",
        0.01,
    )
    assert list(cfg.scheduler.milestones) == [20, 45] and cfg.scheduler.gamma == 0.1
    assert cfg.seed == 0 and cfg.ckpt_path is None
    validate_train_config(cfg, check_files=False)


# every option of every group, composed on top of the defaults, validates (files are not checked here)
GROUP_CASES = [
    (group, option)
    for group in GROUPS
    if group not in ("experiment", "debug")
    for option in group_options(group)
    if option != "default" or group == "paths"
]


@pytest.mark.parametrize(("group", "option"), GROUP_CASES, ids=[f"{g}={o}" for g, o in GROUP_CASES])
def test_every_group_option_composes(group, option):
    overrides = [f"{group}={option}"]
    if (group, option) == ("data", "csv"):
        overrides += ["data.path=my.csv", "data.target=label"]
    cfg = make_cfg(overrides)
    validate_train_config(cfg, check_files=False)
    if group == "logger":
        targets = [c._target_ for c in (cfg.logger or {}).values()]
        assert (option == "none") == (not targets)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment):
    cfg = make_cfg([f"experiment={experiment}"])
    validate_train_config(cfg, check_files=False)
    assert cfg.task_name == experiment


def test_experiments_hold_the_paper_settings():
    mnist = make_cfg(["experiment=paper_mnist"])
    assert (mnist.trainer.max_epochs, mnist.data.batch_size, mnist.model.dropout) == (50, 256, 0.2)
    iris = make_cfg(["experiment=paper_iris"])
    assert (iris.data.name, iris.loss.name, iris.data.split_seed, iris.data.test_fraction) == ("iris", "nll", 42, 0.2)
    assert make_cfg(["experiment=mnist_mlp"]).model.net == "mlp"


@pytest.mark.parametrize("debug", group_options("debug"))
def test_every_debug_option_composes(debug):
    cfg = make_cfg([f"debug={debug}", "data=iris"])
    validate_train_config(cfg, check_files=False)
    assert cfg.trainer.accelerator == "cpu"


def test_eval_config_composes():
    cfg = make_cfg(["ckpt_path=some.ckpt"], config_name="eval")
    assert cfg.get("data") is None and cfg.ckpt_path == "some.ckpt"
    assert make_cfg(["ckpt_path=x.ckpt", "data=iris"], config_name="eval").data.name == "iris"


# --- validation errors, in-process --------------------------------------------------------------
BAD = [
    (["model.width=0"], "model.width=0 is out of range: must be >= 1"),
    (["model.depth=-1"], "model.depth=-1 is out of range: must be >= 0"),
    (["model.dropout=1.0"], "model.dropout=1.0 is out of range: must be in [0, 1)"),
    (["model.dropout=[0.2,1.5,0]"], "model.dropout=[0.2, 1.5, 0] must hold rates in [0, 1), one per layer"),
    (["model.std_param=sigmoid"], "model.std_param=sigmoid is not allowed; choose one of: exp, softplus"),
    (["model.init=zeros"], "model.init=zeros is not allowed; choose one of: reference, data"),
    (["model.width=abc"], "model.width=abc is not an integer"),
    (["model.backend=gpu"], "model.backend=gpu is not allowed; choose one of: auto, reference, cpu, triton"),
    (["loss=nll", "model=mlp"], "loss=nll needs model=ugmm"),
    (["optimizer.lr=0"], "optimizer.lr=0 is out of range"),
    (["optimizer.name=rmsprop"], "optimizer.name=rmsprop is not allowed; choose one of: adam, adamw, sgd"),
    (["data=csv"], "data.path is required"),
    (["data=iris", "data.val_fraction=0.9"], "must be < 1"),
    (["data=iris", "data.target=label"], "data.target=label is not a column of"),
    (["data=csv", "data.path=/nonexistent/t.csv", "data.target=y"], "data.path=/nonexistent/t.csv does not exist"),
    (["data=iris", "ckpt_path=/nonexistent.ckpt"], "ckpt_path=/nonexistent.ckpt does not exist"),
    (["data=iris", "trainer.max_epochs=0"], "trainer.max_epochs=0 is out of range"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_values_raise_one_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        validate_train_config(make_cfg(overrides))
    text = str(info.value)
    assert message in text and "\n" not in text


def test_csv_without_target_column(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("a,b,c\n1,2,x\n3,4,y\n")
    with pytest.raises(ConfigError, match=r"data.target=label is not a column of .*t.csv; columns: a, b, c"):
        validate_train_config(make_cfg(["data=csv", f"data.path={csv}", "data.target=label"]))


def test_missing_mnist_offline_says_where_to_put_files(tmp_path):
    with pytest.raises(ConfigError) as info:
        validate_train_config(make_cfg([f"data.data_dir={tmp_path}", "data.download=false"]))
    text = str(info.value)
    assert "\n" not in text and str(tmp_path / "MNIST" / "raw") in text and "UGMM_DATA_DIR" in text


def test_failed_download_says_where_to_put_files(tmp_path, monkeypatch):
    # a mirror nobody listens on stands for a machine without internet, whatever CI has
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    target = tmp_path / "new"
    with pytest.raises(ConfigError, match="download failed") as info:
        validate_train_config(make_cfg([f"data.data_dir={target}", "data.download=true"]))
    assert "\n" not in str(info.value) and "UGMM_DATA_DIR" in str(info.value)
    assert not target.exists()  # the failed download leaves no empty folders behind


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data=bogus"], "data=bogus is not an option of group data; choose one of: csv, iris, mnist"),
        (["loss=bogus"], "loss=bogus is not an option of group loss; choose one of: cross_entropy, nll"),
        (["-m", "model=ugmm,mlpp"], "model=mlpp is not an option of group model"),
        (["+experiment=nope"], "experiment=nope is not an option of group experiment"),
    ],
)
def test_group_typos_raise_one_line(args, message):
    with pytest.raises(ConfigError, match=message):
        check_group_overrides(args)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model.widht=3"], "model.widht is not a key of the config; did you mean model.width?"),
        (["data=iris", "data.targt=y"], "data.targt is not a key of the config; did you mean data.target?"),
        (["lr=0.1"], "lr is not a key of the config; did you mean optimizer.lr?"),
        (["data=mnist", "data.augment.degrees=5"], "data.augment is null here: set it as a whole"),
        (["model.width=[1"], "model.width=[1: no viable alternative at input '[1'"),
    ],
)
def test_mistyped_keys_raise_one_line_with_the_closest_key(args, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        check_plain_keys(args)
    assert "\n" not in str(info.value)


def test_good_plain_keys_and_sweeps_pass():
    check_plain_keys(["data=iris", "model.width=3", "callbacks.last_checkpoint.every_n_train_steps=5"])
    check_plain_keys(["-m", "data=iris,mnist", "data.augment={degrees: 5}", "model.width=3,4"])
    check_plain_keys(["hparams_search=optuna", "model.width=choice(8,16)"])


def test_good_group_overrides_pass():
    check_group_overrides(["data=iris", "loss=nll", "-m", "model=ugmm,mlp", "model.width=3", "hydra/launcher=basic"])


# --- the real command: exit code 2, one line on stderr, nothing left behind ---------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ["model.dropout=1.0", "data=iris"],
        ["data=bogus"],
        ["loss=bogus"],
        ["data=mnist", "data.download=false"],
        ["data=iris", "model.widht=3"],
    ],
    ids=["dropout", "data", "loss", "offline", "mistyped key"],
)
def test_train_py_bad_config_exits_2_with_one_line(tmp_path, args):
    logs = tmp_path / "logs"
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        f"paths.log_dir={logs}",
        f"paths.data_dir={tmp_path / 'empty'}",
        *args,
    ]
    env = {k: v for k, v in __import__("os").environ.items() if k != "UGMM_DATA_DIR"}
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    # no half-written run dir stays behind
    assert not any(Path(logs).rglob("*")) if logs.exists() else True
