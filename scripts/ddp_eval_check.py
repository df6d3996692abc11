"""One checkpoint, evaluated under different trainers: are the test metrics identical?

Trains once with ``--train`` trainer overrides (e.g. a 2-process DDP run), then evaluates the best
checkpoint with ``eval.py`` under each ``--eval`` setting (one process, DDP with 2 or 3 ranks, ...), and
prints one row per run with its ``test/*`` metrics and whether they equal the training run's::

    python scripts/ddp_eval_check.py --train trainer=ddp_cpu \
        --eval "" trainer=ddp_cpu "trainer=ddp_cpu trainer.devices=3"
    python scripts/ddp_eval_check.py --train "trainer=ddp trainer.devices=2" \
        --eval trainer=gpu "trainer=ddp trainer.devices=2"

Exit status 0 when every evaluation matches, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# a stratified 18% of Iris: 9 rows per class, 27 test rows (divisible by neither 2 nor 4)
TABLE = ["data=iris", "data.test_fraction=0.18", "model.width=8"]
QUIET = ["logger=none", "trainer.enable_progress_bar=false"]


def run(script: str, args: list[str], logs: Path) -> Path:
    """Run ``script`` with ``args``; returns the metrics.json it wrote (raises with the error's tail)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    before = set(logs.glob("*/runs/*/metrics.json"))
    cmd = [sys.executable, script, *args, f"paths.log_dir={logs}", *QUIET]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:])} exited {result.returncode}: {result.stderr[-2000:]}")
    (new,) = set(logs.glob("*/runs/*/metrics.json")) - before
    return new


def test_metrics(record: Path) -> dict[str, float]:
    return {k: v for k, v in json.loads(record.read_text())["metrics"].items() if k.startswith("test/")}


def check(train: list[str], evals: list[list[str]], logs: Path, epochs: int = 3) -> list[tuple[str, dict, bool]]:
    """``(label, test metrics, equal to the training run's)`` for the training run and each evaluation."""
    record = run("train.py", [*TABLE, *train, f"trainer.max_epochs={epochs}", "callbacks.rich_progress_bar=null"], logs)
    trained = test_metrics(record)
    rows = [("train.py " + " ".join(train), trained, True)]
    best = json.loads(record.read_text())["tested_ckpt"]
    for extra in evals:
        got = test_metrics(run("eval.py", [f"ckpt_path={best}", *extra], logs))
        rows.append(("eval.py " + (" ".join(extra) or "(one process)"), got, same_metrics(got, trained)))
    return rows


def same_metrics(got: dict[str, float], want: dict[str, float]) -> bool:
    """The same keys; accuracy exactly (whole rows), the other means to float32 rounding (a row's float32
    loss can differ in its last bit with the batch the row lands in when the test rows are sharded)."""
    if got.keys() != want.keys():
        return False
    return all(
        got[k] == want[k] if k.endswith("/acc") else math.isclose(got[k], want[k], rel_tol=1e-6, abs_tol=1e-7)
        for k in want
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", default="trainer=ddp_cpu", help="trainer overrides of the training run")
    parser.add_argument("--eval", nargs="*", default=["", "trainer=ddp_cpu", "trainer=ddp_cpu trainer.devices=3"])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = check(args.train.split(), [e.split() for e in args.eval], Path(tmp), args.epochs)
    for label, metrics, same in rows:
        shown = ", ".join(f"{k}={v!r}" for k, v in sorted(metrics.items()))
        print(f"{'same' if same else 'DIFFERENT':9}  {label}: {shown}")
    return 0 if all(same for _, _, same in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
