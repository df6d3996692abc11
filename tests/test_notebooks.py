"""The notebooks run top to bottom in quick mode (UGMM_NOTEBOOK_QUICK=1) and show their figures."""

import nbformat
import pytest

from conftest import REPO, SHARED_DATA, requires_mnist

nbclient = pytest.importorskip("nbclient")
NOTEBOOKS = REPO / "notebooks"


def _execute(name: str, monkeypatch) -> nbformat.NotebookNode:
    monkeypatch.setenv("UGMM_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("UGMM_DATA_DIR", str(SHARED_DATA))
    monkeypatch.setenv("WANDB_MODE", "offline")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    return nb


def _outputs(nb) -> tuple[str, int]:
    text, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                text.append(out.text)
            elif "image/png" in out.get("data", {}):
                images += 1
    return "".join(text), images


def _committed_with_outputs(name: str) -> tuple[str, int]:
    return _outputs(nbformat.read(NOTEBOOKS / name, as_version=4))


def test_iris_generative_notebook(monkeypatch):
    text, images = _outputs(_execute("iris_generative.ipynb", monkeypatch))
    assert "quick mode" in text and "MAP accuracy" in text and "AUROC" in text
    assert images == 4  # training curves, confusion matrix, reliability diagram, neuron mixtures


@requires_mnist
def test_mnist_discriminative_notebook(monkeypatch):
    text, images = _outputs(_execute("mnist_discriminative.ipynb", monkeypatch))
    assert "quick mode" in text and "test accuracy" in text and "ECE" in text and "rotated 90" in text
    assert images == 5


@requires_mnist
def test_uncertainty_notebook(monkeypatch):
    text, images = _outputs(_execute("uncertainty.ipynb", monkeypatch))
    assert "quick mode" in text and "test accuracy" in text and "AUROC" in text and "AUPR-In" in text
    assert "MNIST test images" in text and "uGMM-NN" in text and "MLP" in text
    assert images == 5  # neuron weights, means, sigmas, the mixing-weight map, the in/out histograms


@pytest.mark.parametrize("name", ["iris_generative.ipynb", "mnist_discriminative.ipynb", "uncertainty.ipynb"])
def test_notebooks_are_committed_with_full_run_outputs(name):
    text, images = _committed_with_outputs(name)
    assert images >= 4, "execute the notebook (full budget) and commit it with its outputs"
    assert "full notebook budget" in text or "as configured" in text
