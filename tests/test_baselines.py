"""scripts/baselines.py: uGMM-NN, the same-size MLP and a linear model over tables and seeds, in one table."""

import csv
import json

import pytest
import torch

from ugmm_helpers import load_script

baselines = load_script("baselines")


def _write_blobs(path, n=90, seed=0):
    """Three well-separated Gaussian blobs in 2-D, labels as strings."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    x = torch.randn(n, 2, generator=gen) * 0.3 + torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])[labels]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["a", "b", "kind"])
        writer.writerows([[*map(float, row), f"k{c}"] for row, c in zip(x.tolist(), labels.tolist())])
    return path


def test_every_model_on_a_written_table_with_paired_splits(tmp_path, capsys):
    table = _write_blobs(tmp_path / "blobs.csv")
    out = tmp_path / "out"
    rc = baselines.main(
        [
            "--tables", f"{table}:kind", "--models", "ugmm", "mlp", "linear", "ugmm_nll", "--seeds", "3",
            "--extra-overrides", "trainer.max_epochs=60", "--out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    saved = json.loads((out / "results.json").read_text())
    runs = saved["runs"]
    assert [(r["model"], r["seed"]) for r in runs] == [
        (m, s) for m in ("ugmm", "mlp", "linear", "ugmm_nll") for s in (3,)
    ]
    assert all(r["status"] == "ok" for r in runs)
    # the seed moves the split as well as the initialisation, the same way for every model
    assert all(f"data.split_seed={r['seed']}" in r["command"] for r in runs)
    # separable blobs: every classifier learns them (not a fixed number: the models must train)
    for r in runs:
        assert r["metrics"]["test/acc"] >= 0.9, r
    printed = capsys.readouterr().out
    assert "| blobs |" in printed and "linear test acc (%)" in printed and "Hardware:" in printed
    assert (out / "results.md").read_text() in printed
    # --render rebuilds the same table from the file
    assert baselines.main(["--render", str(out / "results.json")]) == 0
    assert capsys.readouterr().out == (out / "results.md").read_text()


def test_cross_validated_runs_are_tabulated_by_their_mean_over_folds(tmp_path, capsys):
    table = _write_blobs(tmp_path / "blobs.csv")
    out = tmp_path / "out"
    overrides = ["trainer.max_epochs=60", "data.cv_folds=2"]
    rc = baselines.main(
        [
            "--tables",
            f"{table}:kind",
            "--models",
            "linear",
            "--seeds",
            "0",
            "--extra-overrides",
            *overrides,
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    metrics = json.loads((out / "results.json").read_text())["runs"][0]["metrics"]
    assert metrics["cv/val_acc_mean"] >= 0.9 and "val/acc" not in metrics
    printed = capsys.readouterr().out
    val = 100 * metrics["cv/val_acc_mean"]
    assert f"val acc {val:.1f}%" in printed and "each seed's mean over its folds" in printed


def test_bundled_table_is_written_once_as_csv(tmp_path):
    pytest.importorskip("sklearn", reason="scikit-learn (a dev dependency) provides the bundled tables")
    name, path, target = baselines.resolve_table("iris", tmp_path)
    assert (name, target) == ("iris", "target")
    with path.open() as f:
        rows = list(csv.reader(f))
    assert rows[0][-1] == "target" and len(rows) == 151 and {r[-1] for r in rows[1:]} == {"0", "1", "2"}
    assert baselines.resolve_table("iris", tmp_path)[1].stat().st_mtime == path.stat().st_mtime


def test_bad_table_spec_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="give a bundled name"):
        baselines.resolve_table("nothing_here", tmp_path)
    with pytest.raises(SystemExit, match="does not exist"):
        baselines.resolve_table(f"{tmp_path / 'x.csv'}:y", tmp_path)


def test_merged_results_name_each_models_seeds_when_they_differ():
    def run(model, seed):
        return {"table": "iris", "model": model, "seed": seed, "status": "ok", "command": "python train.py",
                "metrics": {"test/acc": 0.9, "val/acc": 0.9}}  # fmt: skip

    same = [run(m, s) for m in ("ugmm", "mlp") for s in (0, 1)]
    assert "over seeds 0, 1 (each seed" in baselines.markdown(same, "cpu", None)
    merged = same + [run(m, s) for m in ("ugmm",) for s in (2, 3)]
    text = baselines.markdown(merged, "cpu", None)
    assert "over seeds 0, 1, 2, 3 (ugmm); 0, 1 (mlp) (each seed" in text
