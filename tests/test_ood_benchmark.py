"""scripts/ood_benchmark.py: the scores it collects and the tables it renders (training is the real CLI's)."""

import json

import pytest
import torch

from conftest import SHARED_DATA
from ugmm_helpers import load_script

bench = load_script("ood_benchmark")


class _Classifier(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net


def test_scores_of_a_ugmm_classifier_batches_like_one_pass():
    from ugmm.nn import uGMMNet
    from ugmm.uncertainty import ood_scores

    torch.manual_seed(0)
    module = _Classifier(uGMMNet(16, 3, width=4, depth=1).eval())
    images = torch.randn(7, 1, 4, 4)
    batched = bench.scores_of(module, images, batch_size=3)
    whole = ood_scores(module.net, images)
    assert batched.keys() == whole.keys()
    for key in whole:
        torch.testing.assert_close(batched[key], whole[key].float())


def test_conv_models_take_the_conv_recipe_of_their_data_set():
    assert bench.recipe("cnn", "FashionMNIST") == ["experiment=cnn_fashion", "model=cnn"]
    assert bench.recipe("cnn_ugmm", "MNIST") == ["experiment=cnn_mnist"]
    assert bench.recipe("ugmm", "FashionMNIST") == ["experiment=mnist_tuned"]


def test_render_names_the_best_score_per_model_and_shift():
    def run(model, seed, acc, mnist_auroc):
        ood = {
            "MNIST": {
                "max_softmax": {"auroc": 0.6, "aupr": 0.55},
                "ugmm0_max": {"auroc": mnist_auroc, "aupr": 0.9},
            },
            "rotate90": {"max_softmax": {"auroc": 0.7, "aupr": 0.65}, "ugmm0_max": {"auroc": 0.5, "aupr": 0.5}},
        }
        return {"model": model, "seed": seed, "test_acc": acc, "ood": ood}

    results = {
        "in_data": "FashionMNIST",
        "epochs": 3,
        "hardware": "test CPU",
        "command": "python scripts/ood_benchmark.py --seeds 0 1",
        "runs": [run("ugmm", 0, 0.90, 0.96), run("ugmm", 1, 0.92, 0.94)],
    }
    table = bench.render(results)
    row = next(line for line in table.splitlines() if line.startswith("| ugmm |"))
    assert "| 2 | 91.000 +- 1.414 |" in row
    assert "`ugmm0_max` 0.950 +- 0.014 / 0.900 +- 0.000" in row  # MNIST: the uGMM score wins
    assert "`max_softmax` 0.700 +- 0.000 / 0.650 +- 0.000" in row  # rotate90: the softmax wins
    assert "python scripts/ood_benchmark.py --seeds 0 1" in table

    # a run recorded before a score existed: the model's row uses only the scores all its runs hold
    newer = run("ugmm", 2, 0.91, 0.95)
    newer["ood"]["MNIST"]["ugmm0_max_typical"] = {"auroc": 0.99, "aupr": 0.99}
    results["runs"].append(newer)
    row = next(line for line in bench.render(results).splitlines() if line.startswith("| ugmm |"))
    assert "`ugmm0_max` 0.950 +- 0.010" in row and "typical" not in row


@pytest.mark.skipif(
    not all((SHARED_DATA / name / "raw").is_dir() for name in ("MNIST", "FashionMNIST")),
    reason=f"real MNIST and Fashion-MNIST not found under {SHARED_DATA} (set UGMM_DATA_DIR to their parent)",
)
def test_quick_run_records_every_run_and_a_rerun_skips_them(tmp_path, capsys):
    out = tmp_path / "ood.json"
    argv = ["--quick", "--models", "ugmm", "--seeds", "0", "--epochs", "1", "--data-dir", str(SHARED_DATA)]
    assert bench.main([*argv, "--out", str(out), "--keep-runs", str(tmp_path / "runs")]) == 0
    assert list((tmp_path / "runs" / "ugmm_0" / "checkpoints").glob("*.ckpt"))
    (run,) = json.loads(out.read_text())["runs"]
    # every score has its two-sided twin, fitted on the run's validation images
    assert {"max_softmax_typical", "ugmm0_mean_typical", "mean_logit"} <= run["ood"]["MNIST"].keys()
    assert run["model"] == "ugmm" and 0.0 <= run["val_acc_best"] <= 1.0 and 0.0 <= run["test_acc"] <= 1.0
    assert "experiment=mnist_tuned" in run["overrides"]
    assert {"MNIST", "rotate90", "uniform_noise"} <= run["ood"].keys()
    assert 0.0 <= run["ood"]["MNIST"]["max_softmax"]["auroc"] <= 1.0
    before = out.read_text()
    assert bench.main([*argv, "--out", str(out)]) == 0  # nothing left to run: the file keeps its runs
    assert json.loads(out.read_text())["runs"] == json.loads(before)["runs"]
    assert "| ugmm | 1 |" in capsys.readouterr().out
