"""Training in-process: fast_dev_run of every experiment, train -> eval, resume from last, seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ugmm.cli import evaluate, find_last_checkpoint, train
from ugmm.config import ConfigError, group_options, validate_train_config
from ugmm.modules import Classifier, DensityModel
from ugmm_helpers import make_cfg, write_fake_mnist

# small and fast: tiny networks, Iris, no progress bars or summaries
QUIET = ["callbacks.rich_progress_bar=null", "callbacks.model_summary=null", "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def fake_mnist(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mnist")
    write_fake_mnist(root, name="FashionMNIST", n_train=300, n_test=60)
    return write_fake_mnist(root, n_train=300, n_test=60)


def _mnist_small(root: Path) -> list[str]:
    return [f"data.data_dir={root}", "data.download=false", "data.val_size=60", "data.eval_batch_size=64"]


def _run(tmp_path: Path, overrides: list[str]) -> tuple[float, dict]:
    cfg = make_cfg([f"paths.log_dir={tmp_path / 'logs'}", *QUIET, *overrides])
    best = train(cfg)
    return best, json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())


@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_fast_dev_run_of_every_experiment(tmp_path, fake_mnist, experiment):
    overrides = [f"experiment={experiment}", "debug=fdr", "model.width=8"]
    if make_cfg(overrides).data.name in ("MNIST", "FashionMNIST"):
        overrides += _mnist_small(fake_mnist)
    best, record = _run(tmp_path, overrides)
    monitor = make_cfg(overrides).monitor  # val/acc by default; paper_iris picks by val/loglik
    assert record["status"] == "ok" and (record["monitor"], record["mode"]) == (monitor.metric, monitor.mode)
    assert record["best"] == pytest.approx(best) and (0.0 <= best <= 1.0 or monitor.metric != "val/acc")
    assert {"val/acc", "test/acc"} <= set(record["metrics"])
    assert record["best_ckpt"] is None  # fast_dev_run writes no checkpoint


@pytest.mark.parametrize("loss", ["cross_entropy", "nll"])
@pytest.mark.parametrize("data", ["mnist", "iris"])
def test_both_losses_on_both_data_sets(tmp_path, fake_mnist, loss, data):
    overrides = [f"data={data}", f"loss={loss}", "model.width=6", "trainer.max_epochs=1", "logger=none"]
    if data == "mnist":
        overrides += [*_mnist_small(fake_mnist), "data.batch_size=64"]
    _, record = _run(tmp_path, overrides)
    keys = {"val/acc", "val/ece", "test/acc", "test/ece", "val/acc_best"}
    keys |= {"val/loss", "test/loss"} if loss == "cross_entropy" else {"val/nll", "val/loglik", "test/loglik"}
    assert keys <= set(record["metrics"]), record["metrics"]
    assert Path(record["best_ckpt"]).is_file()


def test_train_then_eval_gives_the_same_test_metric(tmp_path):
    best, record = _run(tmp_path, ["data=iris", "loss=nll", "model.width=6", "trainer.max_epochs=3"])
    ckpt = record["tested_ckpt"]  # the weights the test metrics are of (iris: the last model)
    # the checkpoint loads with torch's default weights_only=True: no objects in it
    hparams = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert hparams["loss"] == "nll" and hparams["data"]["name"] == "iris"
    ecfg = make_cfg([f"ckpt_path={ckpt}", f"paths.log_dir={tmp_path / 'logs'}", *QUIET[2:]], config_name="eval")
    metrics = evaluate(ecfg)
    for key in ("test/acc", "test/nll", "test/ece"):
        assert metrics[key] == pytest.approx(record["metrics"][key], abs=1e-6), key
    assert json.loads((Path(ecfg.paths.output_dir) / "metrics.json").read_text())["metrics"]["test/acc"] == (
        pytest.approx(metrics["test/acc"])
    )
    model = DensityModel.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    assert model.net.sizes == [5, 6, 3, 1]


def test_resume_from_last(tmp_path):
    common = ["data=iris", "model=mlp", "model.width=8", "task_name=resume_test"]
    _, first = _run(tmp_path, [*common, "trainer.max_epochs=2"])
    last = find_last_checkpoint(tmp_path / "logs", "resume_test")
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["epoch"] == 1
    steps_per_epoch = state["global_step"] // 2
    cfg = make_cfg([f"paths.log_dir={tmp_path / 'logs'}", *QUIET, *common, "trainer.max_epochs=4", "ckpt_path=last"])
    train(cfg)
    resumed = torch.load(
        Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    # it continued from epoch 2 of the earlier run instead of starting over
    assert resumed["epoch"] == 3 and resumed["global_step"] == 4 * steps_per_epoch
    # each run times the epochs it trained itself, validation included
    resumed_record = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert len(first["epoch_times_s"]) == 2 and len(resumed_record["epoch_times_s"]) == 2
    assert all(0 < t < first["wall_time_s"] for t in first["epoch_times_s"])
    # its metrics.csv is the whole history: the first run's rows of epochs 0-1 (copied, not trained
    # again: each epoch's validation row appears once), then epochs 2-3
    import csv

    with (Path(cfg.paths.output_dir) / "csv" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [row["epoch"] for row in rows if row.get("val/acc")] == ["0", "1", "2", "3"]
    with (Path(first["best_ckpt"]).parents[1] / "csv" / "metrics.csv").open() as f:
        first_val = [row["val/acc"] for row in csv.DictReader(f) if row.get("val/acc")]
    assert [row["val/acc"] for row in rows if row.get("val/acc")][:2] == first_val


def test_ckpt_last_without_runs_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="ckpt_path=last: no earlier run of task nothing_yet"):
        _run(tmp_path, ["data=iris", "task_name=nothing_yet", "ckpt_path=last"])
    assert not (tmp_path / "logs" / "nothing_yet").exists()  # no run dir was started


def test_same_seed_same_metrics(tmp_path):
    overrides = ["data=iris", "model.width=6", "model.dropout=0.3", "trainer.max_epochs=2", "logger=none", "seed=0"]
    _, a = _run(tmp_path, overrides)
    _, b = _run(tmp_path, overrides)
    assert a["metrics"] == b["metrics"]
    _, c = _run(tmp_path, [*overrides[:-1], "seed=1"])
    assert c["metrics"] != a["metrics"]


def test_thread_counts_change_speed_not_results(tmp_path):
    overrides = ["data=iris", "model.width=6", "trainer.max_epochs=2", "logger=none", "seed=0"]
    before = torch.get_num_threads()
    _, default = _run(tmp_path, overrides)
    _, split = _run(tmp_path, [*overrides, "threads.torch=1", "threads.kernels=2"])
    assert split["metrics"] == default["metrics"]
    assert torch.get_num_threads() == before  # the run's counts are undone when it ends


def _last_state(record: dict) -> dict:
    return torch.load(Path(record["best_ckpt"]).parent / "last.ckpt", map_location="cpu", weights_only=True)


def test_debug_limit_caps_the_batches(tmp_path):
    # Iris: 105 training rows in batches of 16 = 7 batches per epoch, limited to 5 for 3 epochs
    _, record = _run(tmp_path, ["data=iris", "debug=limit", "model.width=4"])
    state = _last_state(record)
    assert (state["epoch"], state["global_step"]) == (2, 3 * 5)


def test_debug_overfit_repeats_a_few_batches_until_the_loss_drops(tmp_path):
    _, record = _run(tmp_path, ["data=iris", "debug=overfit", "model.width=8", "model.dropout=0"])
    assert _last_state(record)["global_step"] == 20 * 3  # 20 epochs of the same 3 batches
    rows = (Path(record["best_ckpt"]).parents[1] / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    col = header.index("train/loss")
    losses = [float(r.split(",")[col]) for r in rows[1:] if r.split(",")[col]]
    assert len(losses) == 20 and losses[-1] < 0.8 * losses[0]


def test_debug_profiler_writes_its_report(tmp_path):
    _, record = _run(tmp_path, ["data=iris", "debug=profiler", "model.width=4"])
    report = Path(record["best_ckpt"]).parents[1] / "fit-profile.txt"
    text = report.read_text()
    assert "Profiler Report" in text and "run_training_epoch" in text


def test_fast_dev_run_without_plus(tmp_path):
    _, record = _run(tmp_path, ["data=iris", "trainer.fast_dev_run=true", "model.width=4"])
    assert record["status"] == "ok" and record["best_ckpt"] is None


def test_any_optimizer_and_schedule_by_target(tmp_path):
    overrides = ["data=iris", "model.width=4", "optimizer._target_=torch.optim.RAdam", "optimizer.lr=3e-3"]
    _, record = _run(tmp_path, [*overrides, "scheduler=cosine", "trainer.max_epochs=2"])
    state = _last_state(record)
    assert state["hyper_parameters"]["optimizer"]["_target_"] == "torch.optim.RAdam"
    (sched,) = state["lr_schedulers"]
    assert sched["T_max"] == 2 and sched["last_epoch"] == 2
    assert state["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)  # annealed


def test_classifier_hparams_are_plain():
    cfg = make_cfg(["data=iris", "scheduler=multistep"])
    module = Classifier(4, 3, model=cfg.model, optimizer=cfg.optimizer, scheduler=cfg.scheduler, data=cfg.data)
    assert type(module.hparams["model"]) is dict and type(module.hparams["scheduler"]["milestones"]) is list
    assert module.hparams["optimizer"]["_target_"] == "torch.optim.Adam"


def test_head_lr_scale_gives_a_conv_head_its_own_learning_rate():
    cfg = make_cfg(["experiment=cnn_mnist", "model.head_lr_scale=10", "optimizer.lr=1e-3", "scheduler=none"])
    module = Classifier(784, 10, model=cfg.model, optimizer=cfg.optimizer, scheduler=cfg.scheduler)
    features, head = module.configure_optimizers().param_groups
    assert features["lr"] == pytest.approx(1e-3) and head["lr"] == pytest.approx(1e-2)
    assert {id(p) for p in head["params"]} == {id(p) for p in module.net.head.parameters()}
    assert len(features["params"]) + len(head["params"]) == len(list(module.parameters()))
    # a network without a head (the MLP baseline under the conv recipe) trains at one learning rate
    cfg = make_cfg(["experiment=cnn_mnist", "model=mlp", "scheduler=none"])
    module = Classifier(784, 10, model=cfg.model, optimizer=cfg.optimizer, scheduler=cfg.scheduler)
    (group,) = module.configure_optimizers().param_groups
    assert group["lr"] == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match=r"model.head_lr_scale=0 is out of range"):
        validate_train_config(make_cfg(["experiment=cnn_mnist", "model.head_lr_scale=0"]))


def test_default_config_builds_the_paper_network():
    cfg = make_cfg([])
    module = Classifier(784, 10, model=cfg.model, optimizer=cfg.optimizer, scheduler=cfg.scheduler)
    assert module.net.sizes == [784, 128, 64, 10]
    assert [layer.dropout for layer in module.net.layers] == [0.2, 0.0, 0.0]


def test_eval_errors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="ckpt_path is required"):
        evaluate(make_cfg([f"paths.log_dir={tmp_path}"], config_name="eval"))
    with pytest.raises(ConfigError, match="ckpt_path=last: no earlier run of task train"):
        evaluate(make_cfg([f"paths.log_dir={tmp_path}", "ckpt_path=last"], config_name="eval"))
    bogus = tmp_path / "x.ckpt"
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="is not a readable uGMM-NN checkpoint"):
        evaluate(make_cfg([f"paths.log_dir={tmp_path}", f"ckpt_path={bogus}"], config_name="eval"))


def test_mnist_on_every_training_image_tests_the_trained_model(tmp_path, fake_mnist):
    """``data.val_size=0``: all training images, a training monitor, no validation metrics."""
    overrides = [*_mnist_small(fake_mnist), "data.val_size=0", "monitor.metric=train/loss", "monitor.mode=min"]
    _, record = _run(tmp_path, [*overrides, "model.width=8", "trainer.max_epochs=2", "logger=none"])
    assert record["status"] == "ok" and record["monitor"] == "train/loss"
    assert "test/acc" in record["metrics"] and not any(k.startswith("val/") for k in record["metrics"])
    assert Path(record["best_ckpt"]).is_file()
