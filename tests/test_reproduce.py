"""scripts/reproduce.py: the statistics by hand, and one quick run through the real train.py."""

import json
import math
import subprocess
import sys

import pytest

from conftest import REPO
from ugmm_helpers import load_script

reproduce = load_script("reproduce")


def test_mean_std_is_the_sample_std():
    assert reproduce.mean_std([0.9, 1.0]) == pytest.approx((0.95, math.sqrt(0.005)))
    assert reproduce.mean_std([0.5]) == (0.5, 0.0)
    with pytest.raises(ValueError):
        reproduce.mean_std([])


def test_default_is_the_shipped_defaults_without_an_experiment():
    assert reproduce.command_for("default", 1, ["model=mlp"], quick=False) == ["seed=1", "model=mlp"]
    assert reproduce.command_for("paper_iris", 0, [], quick=False) == ["experiment=paper_iris", "seed=0"]


def test_failed_runs_are_counted_but_left_out_of_the_statistics():
    records = [
        {
            "experiment": "paper_iris",
            "seed": s,
            "status": "ok",
            "command": f"python train.py seed={s}",
            "metrics": {"test/acc": acc},
            "wall_time_s": 2.0 * (s + 1),
            "elapsed_s": 10.0,
        }
        for s, acc in ((0, 0.9), (1, 1.0))
    ]
    records.append(
        {
            "experiment": "paper_iris",
            "seed": 2,
            "status": "failed",
            "command": "python train.py seed=2",
            "elapsed_s": 1.0,
        }
    )
    summary = reproduce.aggregate(records)["paper_iris"]
    assert (summary["runs"], summary["ok"], summary["seeds"]) == (3, 2, [0, 1])
    assert summary["metrics"]["test/acc"]["mean"] == pytest.approx(0.95)
    assert summary["wall_time_s"]["mean"] == pytest.approx(3.0)
    assert summary["command"] == "python train.py seed=<seed>"
    table = reproduce.markdown_table({"paper_iris": summary}, "test cpu", quick=False)
    assert "| `paper_iris` | 2/3 | 95.00 +- 7.07 |" in table


def test_a_rerun_keeps_the_runs_recorded_by_earlier_invocations(tmp_path):
    results = tmp_path / "results.json"
    assert reproduce.earlier_records(results, [("a", 0)]) == []
    runs = [{"experiment": "a", "seed": 0}, {"experiment": "a", "seed": 1}, {"experiment": "b", "seed": 0}]
    results.write_text(json.dumps({"runs": runs}))
    assert reproduce.earlier_records(results, [("a", 0)]) == runs[1:]


def test_quick_run_through_train_py(tmp_path):
    out = tmp_path / "repro"
    argv = [sys.executable, str(REPO / "scripts" / "reproduce.py"), "--experiments", "paper_iris"]
    argv += ["--seeds", "3", "--quick", "--out", str(out)]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    (run,) = results["runs"]
    assert run["status"] == "ok" and run["seed"] == 3
    # the table's accuracy is the run's own metrics.json
    written = json.loads((out / "runs" / "paper_iris" / "seed_3" / "metrics.json").read_text())
    assert run["metrics"]["test/acc"] == written["metrics"]["test/acc"]
    acc = 100 * written["metrics"]["test/acc"]
    table = (out / "results.md").read_text()
    assert f"| `paper_iris` | 1/1 | {acc:.2f} +- 0.00 |" in table
    assert "QUICK MODE" in table and "Hardware:" in table
    assert table in proc.stdout
    assert reproduce.render([out / "results.json"]) == table  # re-rendered from the saved runs

    # a run killed after its last checkpoint: the same command goes on from it (one more epoch here)
    (out / "runs" / "paper_iris" / "seed_3" / "metrics.json").unlink()
    again = [*argv, "--extra-overrides", "trainer.max_epochs=2"]
    proc = subprocess.run(again, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    assert run["status"] == "ok" and run["resumed_from"].endswith("last.ckpt")
    assert "wall_time_s" not in reproduce.aggregate([run])["paper_iris"]  # it timed only the last epoch
    assert json.loads((out / "runs" / "paper_iris" / "seed_3" / "metrics.json").read_text())["resumed_from"]
    bad = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "reproduce.py"), "--experiments", "nope", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "unknown experiment" in bad.stderr


@pytest.mark.parametrize("argv", [["--label", "a (b)"], ["--label", "x", "--experiments", "paper_iris", "mnist_mlp"]])
def test_bad_labels_are_usage_errors(argv, capsys):
    if "--experiments" not in argv:
        argv = [*argv, "--experiments", "paper_iris"]
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main(argv)
    assert exit_info.value.code == 2 and "--label" in capsys.readouterr().err


def test_compare_pairs_recorded_runs_and_bolds_a_clear_winner(tmp_path):
    def results(name, label, accs):
        runs = [
            {"experiment": label, "seed": s, "status": "ok", "command": f"python train.py seed={s}",
             "metrics": {"test/acc": a, "test/ece": 0.01}, "wall_time_s": 10.0, "elapsed_s": 12.0}
            for s, a in enumerate(accs)
        ]  # fmt: skip
        (tmp_path / name).write_text(json.dumps({"hardware": "test cpu", "quick": False, "runs": runs}))

    results("u.json", "u", [0.97, 0.971, 0.969])
    results("m.json", "m", [0.98, 0.981, 0.979])
    results("close.json", "c", [0.9705, 0.97, 0.9695])
    (tmp_path / "cmp.yaml").write_text(
        "rows:\n"
        "  - {data: MNIST, recipe: clear, ugmm: {file: u.json, label: u}, mlp: {file: m.json, label: m}}\n"
        "  - {data: MNIST, recipe: close, ugmm: {file: u.json, label: u}, mlp: {file: close.json, label: c}}\n"
    )
    table = reproduce.render_comparison(tmp_path / "cmp.yaml")
    clear, close = [line for line in table.splitlines() if line.startswith("| MNIST")]
    assert "97.00 +- 0.10" in clear and "**98.00 +- 0.10**" in clear
    assert "**" not in close  # 0.0 gap within the spread: no winner
    assert "Hardware: test cpu" in table
    (tmp_path / "bad.yaml").write_text(
        "rows:\n  - {data: X, recipe: r, ugmm: {file: u.json, label: nope}, mlp: {file: m.json, label: m}}\n"
    )
    with pytest.raises(SystemExit, match="no runs named 'nope'"):
        reproduce.render_comparison(tmp_path / "bad.yaml")


def test_the_results_page_holds_the_comparison_as_the_recorded_runs_render_it():
    """docs/results.md's uGMM-NN vs MLP table is exactly what --compare prints from the recorded runs."""
    table = reproduce.render_comparison(REPO / "docs" / "results" / "comparison.yaml")
    assert table in (REPO / "docs" / "results.md").read_text()
