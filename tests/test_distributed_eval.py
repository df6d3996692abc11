"""Multi-device runs report the same numbers as one device (DDP on CPU processes, gloo).

One checkpoint: the test metrics written at the end of a 2-process training run, ``eval.py`` on one
process, and ``eval.py trainer=ddp_cpu`` with 2 and 3 processes are identical, on a test split of 27
rows (uneven shares for 2 ranks). The check itself is ``scripts/ddp_eval_check.py``.
"""

import json

import pytest

from ugmm_helpers import load_script

pytestmark = pytest.mark.slow
check = load_script("ddp_eval_check")


def test_one_checkpoint_gives_the_same_test_metrics_on_1_2_and_3_processes(tmp_path):
    evals = [[], ["trainer=ddp_cpu"], ["trainer=ddp_cpu", "trainer.devices=3"]]
    rows = check.check(["trainer=ddp_cpu"], evals, tmp_path / "logs")
    trained = rows[0][1]
    assert {"test/acc", "test/loss", "test/ece"} <= set(trained)
    assert round(trained["test/acc"] * 27, 5) == round(trained["test/acc"] * 27)  # whole rows out of 27
    assert [same for _, _, same in rows] == [True] * 4, rows


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_lightning_strategy_names_keep_one_run_dir(tmp_path, strategy):
    logs = tmp_path / "logs"
    args = [*check.TABLE, "trainer.accelerator=cpu", "trainer.devices=2", f"trainer.strategy={strategy}"]
    record = check.run("train.py", [*args, "trainer.max_epochs=1", "callbacks.rich_progress_bar=null"], logs)
    assert [p.name for p in (logs / "train" / "runs").iterdir()] == [record.parent.name]
    assert json.loads(record.read_text())["status"] == "ok"
