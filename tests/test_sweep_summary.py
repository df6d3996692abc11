"""Sweep summary, failed-job records, the optuna search-space parser and the offline W&B reader (in-process)."""

import csv
import io
import json
import math

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hydra_plugins.ugmm_optuna_sweeper.sweeper import normalize_direction, override_to_distribution
from ugmm.integrations.sweep_summary import SweepSummary
from ugmm.records import read_job, write_failed_job, write_job_metrics


def _ok(job_dir, best, overrides, mode="max"):
    write_job_metrics(
        job_dir,
        {
            "status": "ok",
            "monitor": "val/acc",
            "mode": mode,
            "best": best,
            "metrics": {"val/acc": best, "val/loss": 1.0 - best},
            "overrides": overrides,
            "wall_time_s": 1.5,
            "best_ckpt": None,
        },
    )


def test_summary_sorts_by_monitor_and_lists_failures(tmp_path):
    _ok(tmp_path / "0", 0.5, ["model.width=4"])
    _ok(tmp_path / "1", 0.9, ["model.width=8"])
    _ok(tmp_path / "2", float("nan"), ["model.width=16"])  # diverged: a failed objective
    try:
        raise RuntimeError("CUDA out of memory\nsecond line")
    except RuntimeError as exc:
        write_failed_job(tmp_path / "3", exc, ["model.width=32"])
    (tmp_path / "4" / ".hydra").mkdir(parents=True)  # a job killed before writing metrics.json
    (tmp_path / "4" / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  job:\n    num: 4\n  overrides:\n    task: [model.width=64]\n"
    )

    summary = SweepSummary.from_sweep_dir(tmp_path)
    # ok jobs best first; failed jobs after them, by job number (jobs without one last)
    assert [j.overrides[0] for j in summary.jobs] == [f"model.width={w}" for w in (8, 4, 64, 16, 32)]
    assert [j.status for j in summary.jobs] == ["ok", "ok", "failed", "failed", "failed"]
    assert summary.best.best == 0.9
    assert summary.jobs[4].error == "RuntimeError: CUDA out of memory"
    assert "no metrics.json" in summary.jobs[2].error and summary.jobs[2].num == 4
    assert summary.jobs[3].error == "monitored metric is nan"

    csv_path, md_path = summary.write(tmp_path)
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "failed", "failed"]
    assert float(rows[0]["best val/acc"]) == pytest.approx(0.9) and rows[0]["rank"] == "1"
    assert rows[0]["overrides"] == "model.width=8" and float(rows[1]["val/loss"]) == pytest.approx(0.5)
    md = md_path.read_text()
    assert "5 jobs, 2 ok, 3 failed" in md and "sorted by val/acc (max)" in md
    header, _, *lines = [line for line in md.splitlines() if line.startswith("|")]
    assert "| model.width |" in header and "| best val/acc |" in header  # one column per swept key
    assert [line.split("|")[5].strip() for line in lines] == ["8", "4", "64", "16", "32"]


def test_summary_min_mode_sorts_ascending(tmp_path):
    _ok(tmp_path / "a", 3.0, ["x=1"], mode="min")
    _ok(tmp_path / "b", 1.0, ["x=2"], mode="min")
    summary = SweepSummary.from_sweep_dir(tmp_path)
    assert [j.best for j in summary.jobs] == [1.0, 3.0]


def test_metrics_json_roundtrip_keeps_nan(tmp_path):
    _ok(tmp_path, float("nan"), [])
    rec = json.loads((tmp_path / "metrics.json").read_text())
    assert math.isnan(rec["best"])
    job = read_job(tmp_path)
    assert not job.ok and job.status == "ok"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("model.width=choice(4,8,16)", CategoricalDistribution([4, 8, 16])),
        ("loss=cross_entropy,nll", CategoricalDistribution(["cross_entropy", "nll"])),
        ("model.depth=range(1,4)", IntDistribution(1, 3)),
        ("model.dropout=range(0.0,0.5,0.25)", FloatDistribution(0.0, 0.25, step=0.25)),
        ("model.dropout=interval(0.0,0.5)", FloatDistribution(0.0, 0.5)),
        ("optim.lr=tag(log,interval(1e-4,1e-1))", FloatDistribution(1e-4, 1e-1, log=True)),
        ("model.width=tag(int,interval(4,64))", IntDistribution(4, 64)),
        ("model.width=tag(int,log,interval(4,64))", IntDistribution(4, 64, log=True)),
        ("seed=3", None),
    ],
)
def test_optuna_search_space(line, expected):
    (override,) = OverridesParser.create().parse_overrides([line])
    assert override_to_distribution(override) == expected


def test_optuna_direction():
    assert normalize_direction("max") == "maximize" and normalize_direction("minimize") == "minimize"
    with pytest.raises(ValueError, match="direction"):
        normalize_direction("up")


def test_wandb_offline_run_records_nested_config_metrics_and_summary(tmp_path, monkeypatch, capsys):
    from ugmm.integrations.wandb_logger import HydraWandbLogger, finish_wandb
    from ugmm.integrations.wandb_offline import read_offline_run

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no credentials: auto offline
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = HydraWandbLogger(project="ugmm-test", save_dir=str(tmp_path), name="width=4", group="sweep-1")
    assert logger.is_offline
    logger.log_hyperparams({"model": {"width": 4, "depth": 1}, "optim": {"lr": 0.01}})
    for step, acc in enumerate((0.25, 0.75)):
        logger.log_metrics({"val/acc": acc}, step=step)
    finish_wandb([logger], summary={"best/val/acc": 0.75})

    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    out = capsys.readouterr().out
    assert f"wandb: offline run; sync with: wandb sync {run_dir}" in out
    run = read_offline_run(run_dir)
    assert (run.project, run.group, run.name, run.exit_code) == ("ugmm-test", "sweep-1", "width=4", 0)
    assert run.config["model"] == {"width": 4, "depth": 1} and run.config["optim"] == {"lr": 0.01}
    assert [h["val/acc"] for h in run.history if "val/acc" in h] == [0.25, 0.75]
    assert run.summary["best/val/acc"] == 0.75


def test_ddp_trainer_configs_compose():
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    from ugmm.integrations.ddp import HydraDDPStrategy, _config_args

    with initialize_config_module("ugmm.conf", version_base="1.3"):
        gpu = compose("train", overrides=["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"])
        cpu = compose("train", overrides=["trainer=ddp_cpu"])
    assert (gpu.trainer.accelerator, gpu.trainer.devices, gpu.trainer.num_nodes) == ("gpu", 4, 2)
    assert gpu.trainer.sync_batchnorm is False
    strategy = instantiate(cpu.trainer.strategy)
    assert isinstance(strategy, HydraDDPStrategy) and strategy.entry_point == "ugmm.cli:train_main"
    assert strategy._process_group_backend == "gloo" and cpu.trainer.devices == 2
    argv = ["-m", "--config-dir", "/x", "-cn=exp", "model.width=4,8", "--config-path", "/c"]
    assert _config_args(argv) == ["--config-dir", "/x", "-cn=exp", "--config-path", "/c"]
