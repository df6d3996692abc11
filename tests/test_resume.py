"""Exact resume: interrupted and resumed runs end with the uninterrupted run's metrics, digit for digit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

import ugmm.cli as cli
from ugmm.cli import find_last_checkpoint, train
from ugmm.config import ConfigError
from ugmm.data.base import EpochSampler, InMemoryDataset, ResumableLoader, batch_loader
from ugmm.resume import collect_random_states, set_random_states
from ugmm_helpers import make_cfg, write_fake_mnist

QUIET = ["callbacks.rich_progress_bar=null", "callbacks.model_summary=null", "trainer.enable_progress_bar=false"]


class Crash(Callback):
    """Dies (as kill -9 would, from the run's point of view) after training step ``at``."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.at:
            raise RuntimeError("simulated crash")


def _train(root: Path, overrides: list[str]) -> dict:
    cfg = make_cfg([f"paths.log_dir={root}", *QUIET, *overrides])
    train(cfg)
    return json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())


def _interrupted_then_resumed(root: Path, overrides: list[str], crash_at: int, monkeypatch) -> tuple[dict, int]:
    resume_callbacks = cli.resume_callbacks
    monkeypatch.setattr(cli, "resume_callbacks", lambda: [*resume_callbacks(), Crash(crash_at)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(root, ["task_name=part", *overrides])
    monkeypatch.setattr(cli, "resume_callbacks", resume_callbacks)
    step = torch.load(find_last_checkpoint(root, "part"), map_location="cpu", weights_only=True)["global_step"]
    return _train(root, ["task_name=part", "ckpt_path=last", *overrides]), step


IRIS = ["data=iris", "model.width=6", "model.dropout=0.3", "trainer.max_epochs=3", "callbacks.lr_monitor=null"]


@pytest.mark.parametrize(
    ("extra", "crash_at", "saved_at"),
    [([], 11, 7), (["callbacks.last_checkpoint.every_n_train_steps=3"], 11, 9)],
    ids=["epoch-end checkpoint", "mid-epoch checkpoint"],
)
def test_resumed_run_ends_with_the_uninterrupted_metrics(tmp_path, monkeypatch, extra, crash_at, saved_at):
    full = _train(tmp_path, ["task_name=full", *IRIS, *extra])
    resumed, step = _interrupted_then_resumed(tmp_path, [*IRIS, *extra], crash_at, monkeypatch)
    assert step == saved_at  # Iris: 7 batches per epoch; the crash came after the last checkpoint
    assert resumed["metrics"] == full["metrics"]  # every digit, validation and test
    assert resumed["resumed_from"].endswith("last.ckpt") and resumed["best"] == full["best"]
    # the resumed run's metrics.csv is the whole history, row for row the uninterrupted run's
    (resumed_csv,) = {p for p in (tmp_path / "part" / "runs").glob("*/csv/metrics.csv")} - {
        Path(resumed["resumed_from"]).parents[1] / "csv" / "metrics.csv"
    }
    assert resumed_csv.read_text() == (Path(full["best_ckpt"]).parents[1] / "csv" / "metrics.csv").read_text()


def test_augmented_mnist_resumes_exactly_mid_epoch(tmp_path, monkeypatch):
    data = write_fake_mnist(tmp_path / "mnist", n_train=200, n_test=40)
    overrides = [
        f"data.data_dir={data}",
        "data.download=false",
        "data.val_size=40",
        "data.batch_size=32",
        "data.augment={degrees: 10, translate: 0.1}",
        "model.width=8",
        "model.depth=1",
        "trainer.max_epochs=2",
        "logger=none",
        "callbacks.last_checkpoint.every_n_train_steps=2",
    ]
    full = _train(tmp_path, ["task_name=full", *overrides])
    resumed, step = _interrupted_then_resumed(tmp_path, overrides, 9, monkeypatch)
    assert step == 8 and resumed["metrics"] == full["metrics"]


def test_resuming_a_finished_run_says_how_to_extend_it(tmp_path):
    _train(tmp_path, ["task_name=done", "data=iris", "model.width=4", "trainer.max_epochs=2", "logger=none"])
    limit = ["trainer.max_epochs=2"]  # without it the run would extend to the data's suggested epochs
    cfg = make_cfg([f"paths.log_dir={tmp_path}", "task_name=done", "data=iris", *limit])
    with cfg_unchanged_dirs(tmp_path / "done" / "runs"), pytest.raises(ConfigError) as info:
        train(make_cfg([f"paths.log_dir={tmp_path}", "task_name=done", "data=iris", "ckpt_path=last", *limit]))
    assert "already finished (2 of trainer.max_epochs=2 epochs)" in str(info.value)
    assert "trainer.max_epochs=3 or more" in str(info.value) and "\n" not in str(info.value)
    assert cfg.trainer.max_epochs == 2


class cfg_unchanged_dirs:  # noqa: N801 - a context manager used like a function
    """Asserts that no run dir was added inside the block."""

    def __init__(self, runs: Path) -> None:
        self.runs = runs

    def __enter__(self):
        self.before = sorted(self.runs.iterdir())

    def __exit__(self, *exc):
        assert sorted(self.runs.iterdir()) == self.before
        return False


def test_epoch_sampler_resumes_inside_an_epoch():
    sampler = EpochSampler(10, seed=7, batch_size=3)
    sampler.set_epoch(2)
    order = list(sampler)
    assert sorted(order) == list(range(10)) and order == sampler.order(2).tolist()
    assert sampler.order(3).tolist() != order  # a new order each epoch
    assert list(sampler) == sampler.order(3).tolist()  # without set_epoch, each pass is the next epoch
    sampler.set_epoch(2)
    it = iter(sampler)
    for _ in range(6):  # two batches of three
        next(it)
    state = sampler.state_dict()
    assert state == {"seed": 7, "epoch": 2, "batches": 2}
    again = EpochSampler(10, seed=0, batch_size=3)
    again.load_state_dict(state)
    again.set_epoch(2)
    assert list(again) == order[6:]
    again.set_epoch(2)  # the skip applies to one pass only
    assert list(again) == order


def test_loaders_never_draw_from_the_global_generator():
    data = InMemoryDataset(torch.randn(20, 2), torch.arange(20) % 2)
    train_loader = batch_loader(data, 4, shuffle=True, seed=1)
    assert isinstance(train_loader, ResumableLoader) and "seed" in train_loader.state_dict()
    before = torch.get_rng_state()
    for loader in (train_loader, batch_loader(data, 4, shuffle=False)):
        list(loader)
    assert torch.equal(torch.get_rng_state(), before)


def test_random_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    states = collect_random_states()
    torch.save({"s": states}, tmp_path / "s.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    set_random_states(torch.load(tmp_path / "s.pt", weights_only=True)["s"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]  # noqa: NPY002
