"""Preemption (SIGTERM / Ctrl-C) and divergence through the real command line: exit codes and one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO

QUIET = ["callbacks.rich_progress_bar=null", "callbacks.model_summary=null", "trainer.enable_progress_bar=false"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _train_py(*args: str) -> subprocess.CompletedProcess:
    """``python train.py <args>`` from the repository, output captured (five minutes at most)."""
    cmd = [sys.executable, "train.py", *args]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_says_how_to_resume(tmp_path, signum):
    logs = tmp_path / "logs"
    # the reference backend: no C++ build (and its lock file) in the way of the timing
    args = ["data=iris", "model.width=4", "model.backend=reference", "logger=none", f"paths.log_dir={logs}", *QUIET]
    proc = subprocess.Popen(
        [sys.executable, "train.py", *args, "trainer.max_epochs=100000"],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list(logs.glob("train/runs/*/checkpoints/last.ckpt")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signum)
    try:
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, stderr[-2000:]
    lines = _error_lines(stderr)
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    name = signal.Signals(signum).name
    assert lines[0].startswith(f"error: interrupted by {name} at epoch ")
    assert "resume with: python train.py data=iris" in lines[0]
    assert lines[0].endswith("ckpt_path=last")
    (last,) = logs.glob("train/runs/*/checkpoints/last.ckpt")
    record = json.loads((last.parents[1] / "metrics.json").read_text())
    assert record["status"] == "interrupted" and record["ckpt"] == str(last)
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    # saved at the end of the step the signal interrupted: its step is the run's last
    assert ckpt["global_step"] == record["step"] and "RandomStates" in ckpt["callbacks"]
    resumed = _train_py(*args, f"trainer.max_epochs={ckpt['epoch'] + 2}", "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    runs = sorted(logs.glob("train/runs/*/metrics.json"))
    final = json.loads(runs[-1].read_text())
    assert final["status"] == "ok" and final["resumed_from"] == str(last)


def test_divergence_single_run_exits_3_with_one_line(tmp_path):
    logs = tmp_path / "logs"
    result = _train_py(
        "data=iris", "optimizer.lr=1e6", "model.backend=reference", f"paths.log_dir={logs}", "logger=none", *QUIET
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "Encountered `nan`" not in result.stderr
    (line,) = _error_lines(result.stderr)
    assert line.startswith("error: training diverged at epoch 0, step ") and "lower optimizer.lr (now 1e+06)" in line
    (metrics,) = logs.glob("train/runs/*/metrics.json")
    record = json.loads(metrics.read_text())
    assert record["status"] == "diverged" and record["loss"] in ("nan", "inf", "-inf")


def test_divergence_in_a_multirun_is_listed_and_the_sweep_goes_on(tmp_path):
    logs = tmp_path / "logs"
    result = _train_py(
        *["-m", "data=iris", "model.width=4", "model.backend=reference", "trainer.max_epochs=2"],
        *["optimizer.lr=1e6,0.01", f"paths.log_dir={logs}", "logger=none", *QUIET],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (summary,) = logs.glob("train/multiruns/*/summary.csv")
    rows = summary.read_text().splitlines()
    assert "1 ok, 0 failed, 1 diverged" in summary.with_name("summary.md").read_text()
    assert rows[1].split(",")[2] == "ok" and rows[2].split(",")[2] == "diverged"
    assert "training diverged at epoch 0" in rows[2]


def test_signal_before_training_stops_at_once(tmp_path, monkeypatch):
    """A SIGTERM while the run still sets up (nothing to save yet) ends it at once, not after the setup."""
    from lightning.pytorch import Callback

    import ugmm.cli as cli
    from ugmm.resume import TrainingInterruptedError
    from ugmm_helpers import make_cfg

    class SignalAtFitStart(Callback):
        def on_fit_start(self, trainer, pl_module) -> None:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises inside this sleep

    resume_callbacks = cli.resume_callbacks
    monkeypatch.setattr(cli, "resume_callbacks", lambda: [*resume_callbacks(), SignalAtFitStart()])
    cfg = make_cfg([f"paths.log_dir={tmp_path}", "data=iris", "model.width=4", "logger=none", *QUIET])
    previous = signal.getsignal(signal.SIGTERM)
    start = time.monotonic()
    with pytest.raises(
        TrainingInterruptedError, match="interrupted by SIGTERM at epoch 0, step 0: no checkpoint saved"
    ):
        cli.train(cfg)
    assert time.monotonic() - start < 60 and signal.getsignal(signal.SIGTERM) == previous


def test_sigterm_after_the_callback_looked_still_saves_and_says_how_to_resume(tmp_path, monkeypatch):
    """The race: a SIGTERM after Preemption's end-of-step look meets Lightning's own check first, whose
    bare SystemExit would end the run with exit code 0 and no checkpoint."""
    from lightning.pytorch import Callback

    import ugmm.cli as cli
    from ugmm.resume import TrainingInterruptedError
    from ugmm_helpers import make_cfg

    class SignalAfterPreemptionLooked(Callback):  # runs after Preemption: it comes later in the list
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    resume_callbacks = cli.resume_callbacks
    monkeypatch.setattr(cli, "resume_callbacks", lambda: [*resume_callbacks(), SignalAfterPreemptionLooked()])
    cfg = make_cfg([f"paths.log_dir={tmp_path}", "data=iris", "model.width=4", "logger=none", *QUIET])
    with pytest.raises(
        TrainingInterruptedError, match=r"interrupted by SIGTERM at epoch 0, step 3: saved .*last\.ckpt"
    ):
        cli.train(cfg)
    (last,) = tmp_path.glob("train/runs/*/checkpoints/last.ckpt")
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3
