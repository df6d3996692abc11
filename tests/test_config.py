"""Config composition and instantiation (every group option, every experiment) and one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from conftest import REPO
from ugmm.builders import build_callbacks, build_datamodule, build_loggers, build_module, build_trainer
from ugmm.config import (
    GROUPS,
    ConfigError,
    check_group_overrides,
    group_options,
    legacy_plus_trainer,
    trainer_arguments,
    validate_train_config,
)
from ugmm.data import DataError
from ugmm.modules import build_optimizer, build_scheduler
from ugmm.overrides import check_plain_keys
from ugmm.runs import resolve_ckpt_path
from ugmm_helpers import make_cfg

MULTISTEP = "torch.optim.lr_scheduler.MultiStepLR"

EXPERIMENTS = group_options("experiment")


def test_groups_ship_their_options():
    assert set(EXPERIMENTS) >= {"paper_mnist", "paper_iris", "mnist_mlp"}
    assert set(group_options("data")) >= {"mnist", "iris", "csv"}
    assert set(group_options("model")) >= {"ugmm", "mlp"}
    assert set(group_options("loss")) == {"cross_entropy", "nll"}
    assert set(group_options("optimizer")) >= {"adam", "adamw", "sgd"}
    assert set(group_options("scheduler")) >= {"multistep", "cosine", "onecycle", "none"}
    assert set(group_options("trainer")) >= {"cpu", "gpu"}
    assert set(group_options("logger")) >= {"csv", "tensorboard", "none"}
    assert set(group_options("debug")) >= {"fdr", "overfit", "limit", "profiler"}
    # every group a config file selects is one the command-line check knows
    folders = {p.name for p in (REPO / "src" / "ugmm" / "conf").iterdir() if p.is_dir() and p.name[0] != "_"}
    assert set(GROUPS) >= folders - {"hydra"}


def test_defaults_are_the_paper_topology():
    cfg = make_cfg([])
    # width null: the data's suggestion, 128 for MNIST (the paper's 784-128-64-10)
    assert (cfg.model._target_, cfg.model.width, cfg.model.depth, cfg.model.dropout) == (
        "ugmm.nn.uGMMNet",
        None,
        2,
        0.2,
    )
    assert (cfg.data.name, cfg.loss._target_) == ("MNIST", "ugmm.modules.Classifier")
    assert (cfg.optimizer._target_, cfg.optimizer.lr) == ("torch.optim.Adam", 0.01)
    assert cfg.scheduler._target_ == "torch.optim.lr_scheduler.CosineAnnealingLR" and cfg.scheduler.T_max is None
    assert (cfg.model.init, cfg.model.std_floor, cfg.trainer.max_epochs, cfg.test_checkpoint) == (
        "data",
        0.1,
        None,
        "auto",
    )
    assert cfg.seed == 0 and cfg.ckpt_path is None
    validate_train_config(cfg)


# --- every option of every group composes, validates and instantiates -----------------------------
GROUP_CASES = [
    (group, option)
    for group in GROUPS
    if group not in ("experiment", "debug", "hparams_search")
    for option in group_options(group)
    if option != "default" or group == "paths"
]


def _instantiate(cfg, group: str, tmp_path: Path) -> None:
    """Build the objects ``group``'s option describes, as a run would."""
    params = [torch.nn.Parameter(torch.zeros(3))]
    if group == "data":
        dm = build_datamodule(cfg.data)
        assert dm.n_features > 0 and dm.n_classes > 1
    elif group in ("model", "loss"):
        images = cfg.model._target_ == "ugmm.nn.ConvNet"  # conv models read 28x28 images
        n_features = 784 if images else 4
        module = build_module(cfg, type("DM", (), {"n_features": n_features, "n_classes": 3})())
        net = module.net.head if images else module.net
        assert net.sizes[0] == (
            cfg.model.n_features if images else n_features + (cfg.loss._target_.endswith("DensityModel"))
        )
        assert type(module).__name__ == cfg.loss._target_.rsplit(".", 1)[1]
        assert type(module.net).__name__ == cfg.model._target_.rsplit(".", 1)[1]
    elif group in ("optimizer", "scheduler"):
        opt = build_optimizer(params, cfg.optimizer)
        assert type(opt).__name__ == cfg.optimizer._target_.rsplit(".", 1)[1]
        sched = build_scheduler(opt, cfg.get("scheduler"), max_epochs=3, total_steps=30)
        assert (sched is None) == (not cfg.get("scheduler"))
    elif group == "trainer":
        if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
            pytest.skip("needs a GPU")
        trainer = build_trainer(cfg, [], [])
        assert trainer.max_epochs == cfg.trainer.max_epochs
    elif group == "logger":
        loggers = build_loggers(cfg)
        assert len(loggers) == len([c for c in (cfg.logger or {}).values() if c])
    elif group == "callbacks":
        callbacks = build_callbacks(cfg, has_logger=True)
        assert len(callbacks) == len([c for c in (cfg.callbacks or {}).values() if c])


@pytest.mark.parametrize(("group", "option"), GROUP_CASES, ids=[f"{g}={o}" for g, o in GROUP_CASES])
def test_every_group_option_composes_and_instantiates(group, option, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = [f"{group}={option}", f"paths.log_dir={tmp_path}", f"paths.output_dir={tmp_path / 'run'}"]
    if (group, option) == ("data", "csv"):
        csv = tmp_path / "t.csv"
        csv.write_text("a,b,label\n" + "".join(f"{i},{i % 3},{'xyz'[i % 3]}\n" for i in range(30)))
        overrides += [f"data.path={csv}", "data.target=label"]
    if (group, option) == ("model", "mlp"):
        overrides += ["loss=cross_entropy"]
    cfg = make_cfg(overrides)
    validate_train_config(cfg)
    _instantiate(cfg, group, tmp_path)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment):
    cfg = make_cfg([f"experiment={experiment}"])
    validate_train_config(cfg)
    assert cfg.task_name == experiment


def test_experiments_hold_their_measured_settings():
    mnist = make_cfg(["experiment=paper_mnist"])
    assert (mnist.trainer.max_epochs, mnist.data.batch_size, mnist.model.dropout) == (50, 256, 0.2)
    assert (mnist.optimizer._target_, mnist.optimizer.lr) == ("torch.optim.Adam", 0.01)
    assert (mnist.scheduler._target_, list(mnist.scheduler.milestones)) == (MULTISTEP, [20, 45])
    iris = make_cfg(["experiment=paper_iris"])
    assert (iris.data.name, iris.loss._target_, iris.data.split_seed, iris.data.test_fraction) == (
        "iris",
        "ugmm.modules.DensityModel",
        42,
        0.2,
    )
    assert not iris.get("scheduler") and iris.optimizer.lr == 0.01
    assert make_cfg(["experiment=mnist_mlp"]).model._target_ == "ugmm.nn.MLP"
    tuned = make_cfg(["experiment=mnist_tuned"])
    assert (list(tuned.scheduler.milestones), tuned.trainer.max_epochs, tuned.model.init) == ([40, 90], 100, "data")
    aug = make_cfg(["experiment=mnist_tuned_aug"])
    assert aug.scheduler._target_.endswith("CosineAnnealingLR") and aug.scheduler.T_max is None
    assert (aug.trainer.max_epochs, aug.model.init, aug.model.std_floor, aug.data.augment.translate) == (
        100,
        "data",
        0.1,
        0.04,
    )
    generative = make_cfg(["experiment=mnist_generative"])
    assert generative.scheduler._target_.endswith("CosineAnnealingLR") and generative.trainer.max_epochs == 10


def test_cosine_spans_the_run_and_onecycle_every_step():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, make_cfg(["scheduler=cosine"]).scheduler, max_epochs=7)
    assert sched["interval"] == "epoch" and sched["scheduler"].T_max == 7
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, make_cfg(["scheduler=onecycle"]).scheduler, total_steps=lambda: 42)
    assert sched["interval"] == "step" and sched["scheduler"].total_steps == 42


def test_any_optimizer_class_by_target():
    cfg = make_cfg(["optimizer._target_=torch.optim.RAdam", "optimizer.lr=3e-3", "data=iris"])
    validate_train_config(cfg)
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg.optimizer)
    assert isinstance(opt, torch.optim.RAdam) and opt.defaults["lr"] == 3e-3


def test_fused_optimizer_unless_the_config_says_otherwise():
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert build_optimizer(params, make_cfg([]).optimizer).defaults["fused"] is True
    assert build_optimizer(params, make_cfg(["+optimizer.fused=false"]).optimizer).defaults["fused"] is False
    assert build_optimizer(params, make_cfg(["optimizer=sgd"]).optimizer).defaults["fused"] is True
    integer = [torch.zeros(2, dtype=torch.long)]  # a fused kernel needs floats: the plain loop is kept
    assert not build_optimizer(integer, make_cfg([]).optimizer).defaults["fused"]


@pytest.mark.parametrize("debug", group_options("debug"))
def test_every_debug_option_composes(debug):
    cfg = make_cfg([f"debug={debug}", "data=iris"])
    validate_train_config(cfg)
    assert cfg.trainer.accelerator == "cpu"


def test_eval_config_composes():
    cfg = make_cfg(["ckpt_path=some.ckpt"], config_name="eval")
    assert cfg.get("data") is None and cfg.ckpt_path == "some.ckpt"
    assert make_cfg(["ckpt_path=x.ckpt", "data=iris"], config_name="eval").data.name == "iris"


def test_trainer_config_takes_every_trainer_argument():
    cfg = make_cfg(["trainer.fast_dev_run=true", "trainer.barebones=false", "data=iris"])
    assert set(trainer_arguments()) <= set(cfg.trainer)
    assert cfg.trainer.fast_dev_run is True and cfg.trainer.max_epochs is None  # the yaml's values stay
    # the form that was needed before still works: the command line drops the +
    assert legacy_plus_trainer(["+trainer.fast_dev_run=true", "+foo=1"]) == ["trainer.fast_dev_run=true", "+foo=1"]


# --- validation errors, in-process: one line, no I/O ----------------------------------------------
BAD = [
    (["model.width=0"], "model.width=0 is out of range: must be >= 1"),
    (["model.depth=-1"], "model.depth=-1 is out of range: must be >= 0"),
    (["model.dropout=1.0"], "model.dropout=1.0 is out of range: must be in [0, 1)"),
    (["model.dropout=[0.2,1.5,0]"], "model.dropout=[0.2, 1.5, 0] must hold rates in [0, 1), one per layer"),
    (["model.std_param=sigmoid"], "model.std_param=sigmoid is not allowed; choose one of: exp, softplus"),
    (["model.init=zeros"], "model.init=zeros is not allowed; choose one of: reference, data"),
    (["model.width=abc"], "model.width=abc is not an integer"),
    (["model.backend=gpu"], "model.backend=gpu is not allowed; choose one of: auto, reference, cpu, triton"),
    (["model._target_=ugmm.nn.Nope"], "model._target_=ugmm.nn.Nope cannot be imported"),
    (["loss=nll", "model=mlp"], "loss=nll needs model=ugmm"),
    (["optimizer.lr=0"], "optimizer.lr=0 is out of range"),
    (["optimizer._target_=torch.optim.Bogus"], "optimizer._target_=torch.optim.Bogus cannot be imported"),
    (["+optimizer.bogus=1"], "optimizer: TypeError:"),
    (["scheduler=cosine", "+scheduler.milestones=[1]"], "scheduler: TypeError:"),
    (
        ["scheduler=multistep", "scheduler.milestones=[0,3]"],
        "scheduler.milestones=[0, 3] must be a list of positive epoch numbers",
    ),
    (["data=csv"], "data.path is required"),
    (["data=iris", "data.val_fraction=0.9"], "must be < 1"),
    (["data=mnist", "data.val_size=60000"], "data.val_size=60000 is out of range: must be in [0, 60000)"),
    (["data=iris", "trainer.max_epochs=0"], "trainer.max_epochs=0 is out of range"),
    (["data=iris", "seed=-1"], "seed=-1 is out of range: must be >= 0"),
    (["data=iris", "threads.torch=0"], "threads.torch=0 is out of range: must be >= 1"),
    (["data=iris", "threads.kernels=two"], "threads.kernels=two is not an integer"),
    (["data=iris", "monitor.mode=best"], "monitor.mode=best is not allowed; choose one of: max, min"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_values_raise_one_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        validate_train_config(make_cfg(overrides))
    text = str(info.value)
    assert message in text and "\n" not in text


def test_validation_reads_no_files(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("validation touched the data")

    monkeypatch.setattr("ugmm.data.mnist.ensure_downloaded", forbidden)
    validate_train_config(make_cfg([f"data.data_dir={tmp_path / 'nowhere'}", "data.download=true"]))
    validate_train_config(make_cfg(["data=csv", "data.path=/nonexistent/t.csv", "data.target=y"]))
    assert not (tmp_path / "nowhere").exists()


# --- data and checkpoint errors: raised when the objects are built, still one line --------------
def test_missing_files_are_one_line_errors_when_built(tmp_path):
    with pytest.raises(DataError, match="data.path=/nonexistent/t.csv does not exist"):
        build_datamodule(make_cfg(["data=csv", "data.path=/nonexistent/t.csv", "data.target=y"]).data)
    with pytest.raises(DataError, match=r"data.target=label is not a column of"):
        build_datamodule(make_cfg(["data=iris", "data.target=label"]).data)
    with pytest.raises(ConfigError, match="ckpt_path=/nonexistent.ckpt does not exist"):
        resolve_ckpt_path("/nonexistent.ckpt", tmp_path, "train")


def test_csv_without_target_column(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("a,b,c\n1,2,x\n3,4,y\n")
    with pytest.raises(DataError, match=r"data.target=label is not a column of .*t.csv; columns: a, b, c"):
        build_datamodule(make_cfg(["data=csv", f"data.path={csv}", "data.target=label"]).data)


def test_missing_mnist_offline_says_where_to_put_files(tmp_path):
    dm = build_datamodule(make_cfg([f"data.data_dir={tmp_path}", "data.download=false"]).data)
    with pytest.raises(DataError) as info:
        dm.prepare_data()
    text = str(info.value)
    assert "\n" not in text and str(tmp_path / "MNIST" / "raw") in text and "UGMM_DATA_DIR" in text


def test_failed_download_says_where_to_put_files(tmp_path, monkeypatch):
    # a mirror nobody listens on stands for a machine without internet, whatever CI has
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    target = tmp_path / "new"
    dm = build_datamodule(make_cfg([f"data.data_dir={target}", "data.download=true"]).data)
    with pytest.raises(DataError, match="download failed") as info:
        dm.prepare_data()
    assert "\n" not in str(info.value) and "UGMM_DATA_DIR" in str(info.value)
    assert not target.exists()  # the failed download leaves no empty folders behind


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data=bogus"], "data=bogus is not an option of group data; choose one of: csv, iris, mnist"),
        (["loss=bogus"], "loss=bogus is not an option of group loss; choose one of: cross_entropy, nll"),
        (["-m", "model=ugmm,mlpp"], "model=mlpp is not an option of group model"),
        (["+experiment=nope"], "experiment=nope is not an option of group experiment"),
        (["optimizer=rmsprop"], "optimizer=rmsprop is not an option of group optimizer"),
        # keys replaced by config groups name their replacement
        (["optimizer.name=adamw"], "optimizer.name=adamw is gone: use optimizer=adamw"),
        (["scheduler.name=cosine"], "scheduler.name=cosine is gone: use scheduler=cosine"),
        (["model.net=mlp"], "model.net=mlp is gone: use model=mlp"),
        (["loss.name=nll"], "loss.name=nll is gone: use loss=nll"),
    ],
)
def test_group_typos_raise_one_line(args, message):
    with pytest.raises(ConfigError, match=message):
        check_group_overrides(args)


def test_old_keys_in_a_config_file_name_their_replacement():
    cfg = make_cfg(["data=iris", "+optimizer.name=sgd"])
    with pytest.raises(ConfigError, match="optimizer.name=sgd is gone: use optimizer=sgd"):
        validate_train_config(cfg)


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
    check_group_overrides(["optimizer=adamw,sgd", "scheduler=none", "optimizer._target_=torch.optim.RAdam"])


# --- the real command: exit code 2, one line on stderr, nothing left behind ---------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ["model.dropout=1.0", "data=iris"],
        ["data=bogus"],
        ["loss=bogus"],
        ["data=mnist", "data.download=false"],
        ["optimizer.name=adamw", "data=iris"],
        ["data=iris", "model.widht=3"],
    ],
    ids=["dropout", "data", "loss", "offline", "replaced", "mistyped key"],
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


def test_paper_mnist_is_the_reference_notebooks_setting():
    """The values of the public reference notebook (zakeria/uGMM, MNIST): pinned so they cannot drift."""
    cfg = make_cfg(["experiment=paper_mnist"])
    reference = {
        "pixels in [0, 1] (ToTensor only)": (cfg.data.normalize, False),
        "batch size": (cfg.data.batch_size, 256),
        "topology 784-128-64-10": ((cfg.model.width, cfg.model.depth), (128, 2)),
        "dropout 0.2 on the first layer": (cfg.model.dropout, 0.2),
        "reference initialisation": (cfg.model.init, "reference"),
        "sigma = exp(raw)": (cfg.model.std_param, "exp"),
        "Adam": (cfg.optimizer._target_, "torch.optim.Adam"),
        "lr 1e-2": (cfg.optimizer.lr, 0.01),
        "no weight decay": (cfg.optimizer.weight_decay, 0.0),
        "MultiStepLR": (cfg.scheduler._target_, MULTISTEP),
        "milestones [20, 45]": (list(cfg.scheduler.milestones), [20, 45]),
        "gamma 0.1": (cfg.scheduler.gamma, 0.1),
        "50 epochs": (cfg.trainer.max_epochs, 50),
        "cross-entropy on the log-densities": (cfg.loss._target_, "ugmm.modules.Classifier"),
    }
    assert {k: got for k, (got, _) in reference.items()} == {k: want for k, (_, want) in reference.items()}
    # the tuned experiments built on it keep the standardised pixels they were measured with
    assert (
        make_cfg(["experiment=mnist_tuned"]).data.normalize and make_cfg(["experiment=mnist_tuned_aug"]).data.normalize
    )


@pytest.mark.parametrize(
    "experiment", [e for e in EXPERIMENTS if make_cfg([f"experiment={e}"]).loss._target_.endswith("Classifier")]
)
def test_model_mlp_runs_on_every_classifier_experiment(experiment):
    """``experiment=X model=mlp``: the same-size MLP on X's recipe; uGMM-only keys are ignored."""
    from ugmm.modules.base import net_arguments

    ugmm, mlp = make_cfg([f"experiment={experiment}"]), make_cfg([f"experiment={experiment}", "model=mlp"])
    validate_train_config(mlp)
    images = ugmm.model._target_ == "ugmm.nn.ConvNet"
    module = build_module(mlp, type("DM", (), {"n_features": 784, "n_classes": 10})())
    assert type(module.net).__name__ == "MLP"
    if not images:  # the same topology and dropout as the uGMM-NN it is compared with
        assert module.net.sizes == [784, *[max(1, ugmm.model.width // 2**i) for i in range(ugmm.model.depth)], 10]
    _, _, ignored = net_arguments(mlp.model)
    assert set(ignored) <= {"std_floor", "std_param", "backend", "image_shape", "channels", "n_features", "head"}
    for group in ("data", "optimizer", "scheduler", "trainer"):  # the identical recipe
        assert mlp[group] == ugmm[group], group


@pytest.mark.parametrize("experiment", ["paper_mnist", "mnist_tuned_aug", "cnn_mnist"])
def test_model_linear_is_softmax_regression_on_any_experiment(experiment):
    """``model=linear``: one Linear layer whatever sizes the experiment sets, with the experiment's recipe."""
    ugmm, linear = make_cfg([f"experiment={experiment}"]), make_cfg([f"experiment={experiment}", "model=linear"])
    validate_train_config(linear)
    module = build_module(linear, type("DM", (), {"n_features": 784, "n_classes": 10})())
    assert [tuple(p.shape) for p in module.net.parameters()] == [(10, 784), (10,)]
    for group in ("data", "optimizer", "scheduler", "trainer"):
        assert linear[group] == ugmm[group], group


def test_mnist_without_a_validation_split_needs_a_training_monitor():
    cfg = make_cfg(["data.val_size=0"])
    with pytest.raises(
        ConfigError, match="data.val_size=0 leaves no validation rows to compute monitor.metric=val/acc"
    ):
        validate_train_config(cfg)
    validate_train_config(make_cfg(["data.val_size=0", "monitor.metric=train/loss", "monitor.mode=min"]))
