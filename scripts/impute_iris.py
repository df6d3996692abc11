"""Missing values by MPE against mean imputation, on Iris's held-out rows, one feature hidden at a time.

For every seed, trains the paper's generative Iris model (``python train.py experiment=paper_iris seed=S``,
a density over the 4 features and the label), then, for every test row and every feature, hides that
feature and fills it two ways:

- **MPE**: the value that maximises the model's density of the row (:func:`ugmm.nn.impute_mpe`), with the
  label summed out (``log p(x) = logsumexp_y log p(x, y)``: the class is unknown too) and, as a second
  column, with the row's label given (``log p(x, y)``);
- the model's conditional mean ``E[v | the rest]`` (:func:`ugmm.nn.impute_mean`, label summed out), the
  squared-error-optimal guess under the model;
- **mean**: the feature's mean over the training rows.

Prints and writes (``--out``, JSON and a markdown table beside it) the RMSE of each method per feature,
in the feature's own units (cm), mean +- std over the seeds::

    python scripts/impute_iris.py --seeds 0 1 2 3 4 --out docs/results/impute_iris.json
    python scripts/impute_iris.py --ckpt <a paper_iris checkpoint>          # score one trained model
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from ugmm.builders import build_datamodule
from ugmm.data import TabularDataModule
from ugmm.data.tabular import read_header
from ugmm.modules import DensityModel
from ugmm.nn import impute_mean, impute_mpe

REPO = Path(__file__).resolve().parents[1]
GRID_POINTS = 201


def train_paper_iris(seed: int, log_dir: Path, extra: list[str]) -> Path:
    """Train ``experiment=paper_iris`` with ``seed`` through the real command; returns its best checkpoint."""
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "experiment=paper_iris",
            f"seed={seed}",
            "logger=none",
            f"paths.log_dir={log_dir}",
            "callbacks.rich_progress_bar=null",
            *extra,
        ],  # fmt: skip
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        raise SystemExit(f"error: training seed {seed} failed: {run.stderr.strip().splitlines()[-1:]}")
    metrics = sorted(log_dir.glob("paper_iris/runs/*/metrics.json"), key=lambda p: p.stat().st_mtime)[-1]
    return Path(json.loads(metrics.read_text())["best_ckpt"])


def datamodule_from(model: DensityModel) -> TabularDataModule:
    """The checkpoint's own data split (same rows, same standardisation)."""
    datamodule = build_datamodule(model.hparams["data"])
    datamodule.setup()
    return datamodule


@torch.no_grad()
def impute_errors(ckpt: Path) -> dict[str, dict[str, float]]:
    """RMSE per feature (original units) of MPE (label summed out / given) and of mean imputation."""
    model = DensityModel.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    datamodule = datamodule_from(model)
    train, test = datamodule.splits["train"], datamodule.splits["test"]
    header = [c for c in read_header(datamodule.path) if c != datamodule.target]
    label_column = train.x.shape[1]
    states = model.states
    rows = torch.cat([test.x, model.label_value(test.y).unsqueeze(1)], dim=1)
    out = {}
    for k, name in enumerate(header):
        low, high = train.x[:, k].min().item(), train.x[:, k].max().item()
        grid = torch.linspace(low - 1.0, high + 1.0, GRID_POINTS)
        truth = test.x[:, k]
        summed_out = (label_column, states)
        mean = train.x[:, k].mean().expand_as(truth)
        scale = datamodule.std[k].item() if datamodule.std is not None else 1.0

        def rmse(guess: torch.Tensor, truth: torch.Tensor = truth, scale: float = scale) -> float:
            return ((guess - truth).pow(2).mean().sqrt() * scale).item()

        out[name] = {
            "mpe": rmse(impute_mpe(model.net, rows, k, grid, marginalize=summed_out)),
            "mpe_label_known": rmse(impute_mpe(model.net, rows, k, grid)),
            "posterior_mean": rmse(impute_mean(model.net, rows, k, grid, marginalize=summed_out)),
            "mean": rmse(mean),
        }
    return out


def summarise(per_seed: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, list[float]]]:
    """Per feature and method: ``[mean, std]`` over seeds (std 0 for one seed)."""
    summary: dict[str, dict[str, list[float]]] = {}
    for feature in per_seed[0]:
        summary[feature] = {}
        for method in per_seed[0][feature]:
            values = [run[feature][method] for run in per_seed]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            summary[feature][method] = [statistics.fmean(values), spread]
    return summary


def markdown(summary: dict[str, dict[str, list[float]]], n_seeds: int) -> str:
    lines = [
        f"RMSE of the imputed feature on Iris's 30 reference test rows (cm), mean +- std over {n_seeds} seed(s)",
        "",
        "| feature | MPE, label unknown | MPE, label known | model's conditional mean, label unknown "
        "| training mean | MPE (label unknown) better than the mean? |",
        "|---|---|---|---|---|---|",
    ]
    for feature, row in summary.items():
        cells = [f"{row[m][0]:.3f} +- {row[m][1]:.3f}" for m in ("mpe", "mpe_label_known", "posterior_mean", "mean")]
        better = "yes" if row["mpe"][0] < row["mean"][0] else "no"
        lines.append(f"| {feature} | " + " | ".join(cells) + f" | {better} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="training seeds")
    parser.add_argument("--ckpt", type=Path, nargs="*", default=None, help="score these checkpoints instead")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here (and a .md beside it)")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides, e.g. trainer.max_epochs=100")
    args = parser.parse_args(argv)
    per_seed = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpts = args.ckpt or [train_paper_iris(s, Path(tmp), args.overrides) for s in args.seeds]
        for ckpt in ckpts:
            per_seed.append(impute_errors(ckpt))
            print(f"{ckpt.name}: " + json.dumps(per_seed[-1]), flush=True)
    summary = summarise(per_seed)
    table = markdown(summary, len(per_seed))
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        record = {"command": " ".join(["python scripts/impute_iris.py", *(argv or sys.argv[1:])])}
        record |= {"per_seed": per_seed, "summary": summary}
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
