"""End-to-end sweeps through the real command (``python train.py -m ...``) on Iris, CPU only.

Each test runs tiny models (width 4, one epoch, no test stage) so the whole file stays in the
minutes: a multirun with failing jobs and its summary, W&B offline runs (one per job, one group),
DDP on two CPU processes (alone and inside a multirun), an optuna search, the joblib launcher, and
the SLURM launcher up to the job submission (a fake ``sbatch`` records what it was given).
"""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO

pytestmark = pytest.mark.slow

TINY = ["data=iris", "model.width=4", "model.depth=1", "trainer.max_epochs=1", "test=false", "callbacks=none"]


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("WANDB_API_KEY", None)
    env.update(
        WANDB_MODE="offline",
        WANDB_DIR=str(tmp_path / "wandb-dir"),
        NETRC=str(tmp_path / "no-netrc"),
        PYTHONUNBUFFERED="1",
        UGMM_ROOT=str(tmp_path),
    )
    return env


def _train(tmp_path: Path, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "train.py"), *args, f"paths.log_dir={tmp_path / 'logs'}"]
    res = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=timeout)
    if check:
        assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def _only(paths) -> Path:
    paths = list(paths)
    assert len(paths) == 1, paths
    return paths[0]


def _sweep_dir(tmp_path: Path) -> Path:
    return _only((tmp_path / "logs" / "train" / "multiruns").iterdir())


def _jobs(sweep_dir: Path) -> dict[int, Path]:
    return {int(p.name): p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()}


def test_multirun_summary_with_failing_jobs(tmp_path):
    # 8 jobs: loss x dropout x precision; precision=bogus makes Lightning raise at Trainer init
    args = ["-m", *TINY, "loss=cross_entropy,nll", "model.dropout=0,0.2", "++trainer.precision=32,bogus"]
    res = _train(tmp_path, *args)
    sweep = _sweep_dir(tmp_path)
    jobs = _jobs(sweep)
    assert sorted(jobs) == list(range(8))  # every job has its own dir, none lost

    records = {n: json.loads((d / "metrics.json").read_text()) for n, d in jobs.items()}
    ok = {n: r for n, r in records.items() if r["status"] == "ok"}
    failed = {n: r for n, r in records.items() if r["status"] == "failed"}
    assert len(ok) == 4 and len(failed) == 4
    assert all("++trainer.precision=bogus" in r["overrides"] for r in failed.values())
    assert all("ValueError: Precision 'bogus' is invalid" in r["error"] for r in failed.values())

    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["ok"] * 4 + ["failed"] * 4
    bests = [float(r["best val/acc"]) for r in rows[:4]]
    assert bests == sorted(bests, reverse=True)  # sorted by the monitored metric, best first
    for row in rows[:4]:  # each row is its job's metrics.json
        rec = records[int(row["job"])]
        assert math.isclose(float(row["best val/acc"]), rec["best"], abs_tol=1e-4)
        assert row["overrides"] == " ".join(rec["overrides"])
    for row in rows[4:]:
        assert "Precision 'bogus' is invalid" in row["error"] and not row["best val/acc"]

    md = (sweep / "summary.md").read_text()
    assert "8 jobs, 4 ok, 4 failed; sorted by val/acc (max)" in md
    assert "| loss | model.dropout | ++trainer.precision |" in md  # one column per swept key
    assert "Sweep summary: 8 jobs, 4 ok, 4 failed" in res.stdout  # and printed at the end

    # the same failure in a single run (no -m) stops it with a non-zero exit code
    single = _train(tmp_path, *TINY, "++trainer.precision=bogus", check=False)
    assert single.returncode != 0 and "Precision 'bogus' is invalid" in single.stderr


def test_wandb_offline_one_run_per_job_in_one_group(tmp_path):
    from ugmm.integrations.wandb_offline import read_offline_run

    res = _train(tmp_path, "-m", *TINY, "logger=[csv,wandb]", "logger.wandb.log_model=true", "model.depth=1,2")
    sweep = _sweep_dir(tmp_path)
    runs = {}
    for num, job in _jobs(sweep).items():
        run_dir = _only((job / "wandb").glob("offline-run-*"))
        assert f"wandb: offline run; sync with: wandb sync {run_dir}" in res.stdout
        runs[num] = (read_offline_run(run_dir), json.loads((job / "metrics.json").read_text()))
        assert (job / "csv" / "metrics.csv").is_file()  # the other logger of the combination
    assert sorted(runs) == [0, 1]

    assert {run.group for run, _ in runs.values()} == {sweep.name}  # one group: the sweep
    for num, (run, rec) in runs.items():
        assert run.project == "ugmm-nn" and run.exit_code == 0
        assert f"model.depth={num + 1}" in run.name and "paths.log_dir" not in run.name
        cfg = run.config["cfg"]  # the whole resolved config, nested
        assert cfg["model"]["depth"] == num + 1 and cfg["model"]["width"] == 4
        assert cfg["data"]["name"] == "iris" and cfg["monitor"] == {"metric": "val/acc", "mode": "max"}
        logged = [h["val/acc"] for h in run.history if "val/acc" in h]
        assert logged and math.isclose(logged[-1], rec["metrics"]["val/acc"], rel_tol=1e-6)
        assert math.isclose(run.summary["best/val/acc"], rec["best"], rel_tol=1e-6)
        (artifact,) = run.artifacts  # log_model: the best checkpoint, kept for `wandb sync`
        assert artifact["type"] == "model" and "best" in artifact["aliases"]
        assert artifact["files"] == [Path(rec["best_ckpt"]).name]
    assert runs[0][0].run_id != runs[1][0].run_id


def _ddp_steps(job_dir: Path) -> int:
    """Optimizer steps of the job, from Lightning's default checkpoint name ``epoch=0-step=K.ckpt``."""
    ckpt = _only(p for p in (job_dir / "checkpoints").glob("epoch=*-step=*.ckpt"))
    return int(ckpt.stem.split("step=")[1])


def _iris_train_rows() -> tuple[int, int]:
    """Rows of the Iris training split and the configured (global) batch size."""
    from hydra import compose, initialize_config_module

    from ugmm.cli import build_datamodule

    with initialize_config_module("ugmm.conf", version_base="1.3"):
        cfg = compose("train", overrides=["data=iris"])
    dm = build_datamodule(cfg.data)
    dm.setup("fit")
    return len(dm.splits["train"]), int(cfg.data.batch_size)


def test_ddp_cpu_single_run(tmp_path):
    res = _train(tmp_path, *TINY, "logger=none", "trainer=ddp_cpu")
    job = _only((tmp_path / "logs" / "train" / "runs").iterdir())  # rank 1 made no dir of its own
    assert not (tmp_path / "logs" / "train" / "multiruns").exists()
    assert (job / "train_rank1.log").is_file()  # rank 1 ran, logging into the same dir
    assert json.loads((job / "metrics.json").read_text())["status"] == "ok"
    assert res.stdout.count("final metrics") == 1  # only rank 0 prints the summary
    # data.batch_size is global: 2 ranks x batch/2 take as many steps as one process would
    n_train, batch = _iris_train_rows()
    assert _ddp_steps(job) == math.ceil(math.ceil(n_train / 2) / (batch // 2))


def test_ddp_cpu_inside_multirun(tmp_path):
    from ugmm.integrations.wandb_offline import read_offline_run

    res = _train(tmp_path, "-m", *TINY, "logger=wandb", "trainer=ddp_cpu", "model.depth=1,2")
    assert sorted(p.name for p in (tmp_path / "logs" / "train").iterdir()) == ["multiruns"]  # no runs/ dirs
    sweep = _sweep_dir(tmp_path)  # and exactly one sweep: the children did not re-run it
    jobs = _jobs(sweep)
    assert sorted(jobs) == [0, 1]
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml", "summary.csv", "summary.md"]
    for job in jobs.values():
        assert (job / "train_rank1.log").is_file()
        assert json.loads((job / "metrics.json").read_text())["status"] == "ok"
        run = read_offline_run(_only((job / "wandb").glob("offline-run-*")))  # one W&B run per job: rank 0's
        assert run.exit_code == 0 and run.group == sweep.name
    assert res.stdout.count("wandb: offline run; sync with:") == 2
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["ok", "ok"]


def test_optuna_search(tmp_path):
    # minimise the validation loss: the direction must follow monitor.mode
    args = ["hparams_search=optuna", *TINY, "logger=none", "monitor.metric=val/loss", "monitor.mode=min"]
    args += ["hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.n_startup_trials=2", "model.width=choice(4,8)"]
    res = _train(tmp_path, *args)
    sweep = _sweep_dir(tmp_path)
    result = OmegaConf.to_container(OmegaConf.load(sweep / "optimization_results.yaml"))
    assert result["direction"] == "minimize" and result["n_trials"] == 3 and result["n_complete"] == 3
    records = [json.loads((job / "metrics.json").read_text()) for job in _jobs(sweep).values()]
    assert len(records) == 3
    assert math.isclose(result["best_value"], min(r["best"] for r in records), rel_tol=1e-6)
    for rec in records:  # every trial drew from the search space
        params = dict(o.split("=", 1) for o in rec["overrides"])
        assert params["model.width"] in ("4", "8") and 0.0 <= float(params["model.dropout"]) <= 0.5
        assert 1e-4 <= float(params["optimizer.lr"]) <= 1e-1 and params["model.depth"] == "1"
    assert "Sweep summary: 3 jobs, 3 ok, 0 failed" in res.stdout


def test_joblib_launcher_runs_jobs_in_parallel(tmp_path):
    res = _train(
        tmp_path, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY, "logger=none", "model.depth=1,2"
    )
    assert "Joblib.Parallel(n_jobs=2" in res.stdout + res.stderr
    sweep = _sweep_dir(tmp_path)
    assert sorted(_jobs(sweep)) == [0, 1]
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["ok", "ok"]


def test_submitit_slurm_up_to_submission(tmp_path):
    """No cluster: a fake ``sbatch`` records the script submitit generates and answers with a job id."""
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir()
    record.mkdir()
    (bin_dir / "sbatch").write_text(
        '#!/bin/sh\necho "$@" > "$SBATCH_RECORD/args.txt"\ncp "$1" "$SBATCH_RECORD/job.sh"\n'
        'echo "Submitted batch job 4242"\n'
    )
    (bin_dir / "srun").write_text('#!/bin/sh\necho "fake srun: no cluster here" >&2\nexit 1\n')  # only looked up
    for exe in bin_dir.iterdir():
        exe.chmod(0o755)
    env = _env(tmp_path)
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", SBATCH_RECORD=str(record))
    cmd = [sys.executable, str(REPO / "train.py"), "-m", "hydra/launcher=submitit_slurm"]
    cmd += ["hydra.launcher.partition=gpu", "data=iris", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"]
    cmd += ["model.width=32,64", f"paths.log_dir={tmp_path / 'logs'}"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:  # after submitting, the launcher would wait for the jobs: stop it once they are submitted
        deadline = time.monotonic() + 120
        while not (record / "job.sh").exists() or len(list(tmp_path.glob("logs/**/*_submitted.pkl"))) < 2:
            assert proc.poll() is None, f"train.py exited with {proc.returncode} before submitting"
            assert time.monotonic() < deadline, "no submission within 120 s"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)

    script = (record / "job.sh").read_text()
    assert (record / "args.txt").read_text().strip().endswith(".sh")
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --array=0-1",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --time=240",
        "#SBATCH --job-name=train",
    ):
        assert line in script, f"{line!r} not in the generated script:\n{script}"
    assert "srun" in script and "-m submitit.core._submit" in script

    from submitit.core.utils import DelayedSubmission

    submitted = sorted(tmp_path.glob("logs/**/4242_*/4242_*_submitted.pkl"))
    overrides = [DelayedSubmission.load(p).args[0] for p in submitted]
    assert [o for o in overrides if "model.width=32" in o] and [o for o in overrides if "model.width=64" in o]
    assert all("trainer=ddp" in o and "trainer.devices=4" in o for o in overrides)
