"""Out-of-distribution benchmark: classifiers and a density model trained on one MNIST-family set, scored
on another set, on rotated and on noise images.

For each model and seed, trains through the real command (``python train.py <recipe> data.name=<in>
seed=<s>``), loads the best checkpoint and scores the in-distribution test images against:

- the other data set's test images (Fashion-MNIST in -> MNIST out, and vice versa),
- the in-distribution test images rotated by 90 degrees,
- uniform noise images.

Scores (higher = more in-distribution, :func:`ugmm.uncertainty.ood_scores`): ``max_softmax``,
``neg_entropy``, ``max_logit`` (for a uGMM output: the largest class log-density), every uGMM layer's
largest and mean neuron log-density (``ugmm{i}_max``, ``ugmm{i}_mean``), and for the density model
``log_px`` (``log p(x)``, the label summed out); and each score's two-sided ``<score>_typical`` twin
(:class:`ugmm.uncertainty.TypicalRange`: minus its distance from the mean over the run's own validation
images, in their stds), which also catches outliers scored *higher* than in-distribution data. AUROC and
AUPR-In per score; mean +- std over seeds.

Every finished run is written to ``--out`` at once (a stop loses nothing; a rerun skips what is there)::

    python scripts/ood_benchmark.py --in-data FashionMNIST --seeds 0 1 2 --out docs/results/ood_fashion.json
    python scripts/ood_benchmark.py --render docs/results/ood_fashion.json    # the markdown tables
    python scripts/ood_benchmark.py --quick --out /tmp/ood.json                # a smoke run (tiny budget)
    python scripts/ood_benchmark.py --models ugmm --keep-runs runs/ood ...        # keep every run's checkpoints
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from reproduce import hardware  # noqa: E402 - the scripts folder is not a package

# model name -> train.py overrides; each pair differs only in the network (the same data, epochs from
# --epochs, optimizer and schedule): uGMM-NN and MLP on experiment=mnist_tuned's recipe, cnn_ugmm and cnn on
# the conv experiment of the in-distribution set (CONV_EXPERIMENT); the density model is
# experiment=mnist_generative
RECIPES = {
    "mlp": ["experiment=mnist_tuned", "model=mlp"],
    "ugmm": ["experiment=mnist_tuned"],
    "cnn": ["experiment=cnn_mnist", "model=cnn"],
    "cnn_ugmm": ["experiment=cnn_mnist"],
    "density": ["experiment=mnist_generative"],
}
OTHER = {"MNIST": "FashionMNIST", "FashionMNIST": "MNIST"}
CONV_EXPERIMENT = {"MNIST": "experiment=cnn_mnist", "FashionMNIST": "experiment=cnn_fashion"}


def recipe(model: str, in_data: str) -> list[str]:
    """The train.py overrides of ``model`` trained on ``in_data`` (a conv model takes that set's recipe)."""
    return [CONV_EXPERIMENT[in_data] if o == "experiment=cnn_mnist" else o for o in RECIPES[model]]


QUICK = ["++trainer.limit_train_batches=3", "++trainer.limit_val_batches=2", "++trainer.limit_test_batches=2"]


def train_run(model: str, in_data: str, seed: int, epochs: int, run_dir: Path, extra: list[str]) -> dict:
    """One training run through ``train.py``; returns its metrics.json (with ``wall_time_s``)."""
    cmd = [sys.executable, str(REPO / "train.py"), *recipe(model, in_data), f"data.name={in_data}", f"seed={seed}"]
    cmd += [f"trainer.max_epochs={epochs}", "logger=none", f"hydra.run.dir={run_dir}", *extra]
    run = subprocess.run(cmd, capture_output=True, text=True)
    metrics_file = run_dir / "metrics.json"
    if run.returncode != 0 or not metrics_file.is_file():
        tail = (run.stderr or run.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{model} seed {seed} failed (exit {run.returncode}): {' | '.join(tail)}")
    return json.loads(metrics_file.read_text())


def load_module(ckpt: str):
    from ugmm.modules import MODULES

    hparams = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    return MODULES[hparams["loss"]].load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()


def image_sets(module, data_dir: str | None, n: int | None, seed: int) -> tuple[str, dict[str, torch.Tensor]]:
    """The in-distribution test images and the shifted sets, normalised as the checkpoint's data module does,
    and (``"reference"``) the run's own validation images: in-distribution, never trained on."""
    from ugmm.builders import build_datamodule
    from ugmm.data.mnist import load_split
    from ugmm.uncertainty import noise_images, rotate_images

    data = dict(module.hparams["data"])
    if data_dir is not None:
        data["data_dir"] = data_dir
    datamodule = build_datamodule(data)  # its data_dir and pixel normalisation, as in training
    name = datamodule.name

    def raw(which: str) -> torch.Tensor:
        images = load_split(datamodule.data_dir, which, train=False)[0]
        return images[:n] if n else images

    pixels = raw(name).float()
    gen = torch.Generator().manual_seed(seed)
    sets = {
        "in": pixels,
        OTHER[name]: raw(OTHER[name]).float(),
        "rotate90": rotate_images(pixels, 90.0),
        "uniform_noise": noise_images(pixels, kind="uniform", high=255.0, generator=gen),
    }
    sets = {k: datamodule.transform(v.round().clamp(0, 255).to(torch.uint8)) for k, v in sets.items()}
    datamodule.setup("fit")  # the validation split of training (data.split_seed), already normalised
    reference = datamodule.splits["val"].x
    return name, {"reference": reference[:n] if n else reference, **sets}


@torch.no_grad()
def scores_of(module, images: torch.Tensor, batch_size: int = 1000) -> dict[str, torch.Tensor]:
    from ugmm.uncertainty import ood_scores

    if not hasattr(module, "log_marginal"):  # a classifier: every score of its network
        return {k: v.float() for k, v in ood_scores(module.net, images, batch_size=batch_size).items()}
    parts: dict[str, list[torch.Tensor]] = {}
    for x in images.split(batch_size):  # the density model: classify by MAP, score by log p(x)
        joint = module(x)
        batch = {
            "log_px": module.log_marginal(x),
            "max_softmax": joint.softmax(-1).amax(-1),
            "max_joint": joint.amax(-1),
        }
        for key, value in batch.items():
            parts.setdefault(key, []).append(value.float())
    return {k: torch.cat(v) for k, v in parts.items()}


def evaluate(ckpt: str, data_dir: str | None, n: int | None, seed: int) -> dict:
    """AUROC/AUPR of every score per shifted set; each score's ``_typical`` twin fitted on the validation images."""
    from ugmm.uncertainty import TypicalRange, ood_metrics

    module = load_module(ckpt)
    _, sets = image_sets(module, data_dir, n, seed)
    typical = TypicalRange.of(scores_of(module, sets.pop("reference")))
    scored = {}
    for name, images in sets.items():
        plain = scores_of(module, images)
        scored[name] = plain | typical.distances(plain)
    return {shift: ood_metrics(scored["in"], shifted) for shift, shifted in scored.items() if shift != "in"}


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} +- {spread:.3f}"


def render(results: dict) -> str:
    """Markdown: per model its accuracy and, per shifted set, the best score's AUROC/AUPR; then every score."""
    runs = results["runs"]
    models = [m for m in RECIPES if any(r["model"] == m for r in runs)]
    shifts = sorted({s for r in runs for s in r["ood"]}, key=lambda s: (s not in OTHER.values(), s))
    lines = [
        f"In-distribution: {results['in_data']} test set; {results['epochs']} epochs per run; {results['hardware']}.",
        "Commands: " + "; ".join(f"`{c}`" for c in results.get("commands") or [results.get("command", "-")]),
        "",
        "| model | seeds | test acc (%) | " + " | ".join(f"{s}: best score, AUROC / AUPR" for s in shifts) + " |",
        "|---|---|---|" + "---|" * len(shifts),
    ]
    detail = ["", "Every score (AUROC, mean +- std over seeds):", ""]
    for model in models:
        mine = [r for r in runs if r["model"] == model]
        acc = _mean_std([100 * r["test_acc"] for r in mine])
        cells = []
        for shift in shifts:
            # runs recorded before a score existed lack it: only the scores every run holds
            keys = [k for k in mine[0]["ood"][shift] if all(k in r["ood"][shift] for r in mine)]
            auroc = {k: [r["ood"][shift][k]["auroc"] for r in mine] for k in keys}
            best = max(keys, key=lambda k: statistics.fmean(auroc[k]))
            aupr = [r["ood"][shift][best]["aupr"] for r in mine]
            cells.append(f"`{best}` {_mean_std(auroc[best])} / {_mean_std(aupr)}")
            detail.append(
                f"- {model}, {shift}: " + ", ".join(f"`{k}` {_mean_std(v)}" for k, v in sorted(auroc.items()))
            )
        lines.append(f"| {model} | {len(mine)} | {acc} | " + " | ".join(cells) + " |")
    return "\n".join(lines + detail) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--in-data", default="FashionMNIST", choices=sorted(OTHER))
    parser.add_argument("--models", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--n", type=int, default=None, help="score the first n test images (default all)")
    parser.add_argument("--data-dir", default=None, help="folder holding <name>/raw (default: $UGMM_DATA_DIR)")
    parser.add_argument("--out", type=Path, default=Path("ood_results.json"))
    parser.add_argument("--quick", action="store_true", help="a tiny budget per run: checks the pipeline only")
    parser.add_argument("--render", type=Path, default=None, help="print the tables of an earlier --out file")
    parser.add_argument(
        "--keep-runs", type=Path, default=None, help="train in DIR/<model>_<seed> and keep the runs (checkpoints)"
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        print(render(json.loads(args.render.read_text())))
        return 0
    extra = list(QUICK) if args.quick else []
    if args.data_dir:
        extra.append(f"data.data_dir={args.data_dir}")
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": []}
    command = "python scripts/ood_benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])
    # every command that added runs to this file, in order (a file may be filled by several invocations)
    commands = results.get("commands") or ([results["command"]] if "command" in results else [])
    results |= {
        "in_data": args.in_data,
        "epochs": args.epochs,
        "hardware": hardware(),
        "commands": commands + ([command] if command not in commands else []),
    }
    results.pop("command", None)
    done = {(r["model"], r["seed"]) for r in results["runs"]}
    with contextlib.ExitStack() as stack:
        tmp = args.keep_runs or stack.enter_context(tempfile.TemporaryDirectory())
        for seed in args.seeds:
            for model in args.models:
                if (model, seed) in done:
                    continue
                start = time.perf_counter()
                try:
                    record = train_run(model, args.in_data, seed, args.epochs, Path(tmp) / f"{model}_{seed}", extra)
                    ood = evaluate(record["best_ckpt"], args.data_dir, args.n or (200 if args.quick else None), seed)
                except RuntimeError as err:
                    print(f"error: {err}", file=sys.stderr)
                    continue
                results["runs"].append(
                    {
                        "model": model,
                        "seed": seed,
                        "test_acc": record["metrics"].get("test/acc"),
                        "val_acc_best": record["metrics"].get("val/acc_best"),
                        "overrides": record.get("overrides"),
                        "train_wall_time_s": record.get("wall_time_s"),
                        "total_time_s": time.perf_counter() - start,
                        "ood": ood,
                    }
                )
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=2) + "\n")  # after every run
                print(f"{model} seed {seed}: test acc {results['runs'][-1]['test_acc']}", flush=True)
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
