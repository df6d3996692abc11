"""uGMM-NN against the same-size MLP and a linear model on classification tables, defaults only.

Every (table, model, seed) is one ``train()`` of ``python train.py data=csv data.path=<csv>
data.target=<column> model=<model> seed=<s> data.split_seed=<s>`` composed in-process (no subprocess
start-up per run): the seed moves the initialisation *and* the train/validation/test split, and every
model sees the same splits, so the comparison is paired. ``results.json`` is rewritten after every run;
the table (test accuracy, mean +- sample std over seeds; the validation accuracy at the end of
training beside it) is printed and written to ``results.md``.

    python scripts/baselines.py                                   # Iris, wine, breast cancer, digits; 5 seeds
    python scripts/baselines.py --tables iris my.csv:label --seeds 0 1 2 --models ugmm mlp linear ugmm_nll
    python scripts/baselines.py --extra-overrides model.std_floor=0.01 --label floor0.01   # an ablation
    python scripts/baselines.py --render a/results.json b/results.json                    # join earlier runs

Tables by name are scikit-learn's bundled ones (no download), written once as CSV beside the results;
any other table is ``path.csv:target_column``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import re
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path

from ugmm.records import mean_std  # the package first: it sets OMP_WAIT_POLICY=PASSIVE before torch loads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce import REPO, hardware  # noqa: E402 - the scripts folder is not a package

# model name -> train.py overrides; ugmm_nll is the generative model, classifying by MAP over the label
MODELS = {
    "ugmm": ["model=ugmm"],
    "mlp": ["model=mlp"],
    "linear": ["model=linear"],
    "ugmm_nll": ["model=ugmm", "loss=nll"],
}
# scikit-learn's bundled classification tables (they ship with the package: nothing is downloaded)
SKLEARN_TABLES = ("iris", "wine", "breast_cancer", "digits")
# the printed command's own callbacks (checkpoints, early stopping), without the progress bar and model summary
QUIET = [
    "logger=none",
    "callbacks.rich_progress_bar=null",
    "callbacks.model_summary=null",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def sklearn_csv(name: str, folder: Path) -> Path:
    """scikit-learn's bundled table ``name`` as ``folder/<name>.csv`` with its label in column ``target``."""
    from sklearn import datasets

    path = folder / f"{name}.csv"
    if path.is_file():
        return path
    bunch = getattr(datasets, f"load_{name}")()
    names = [str(n).replace(" ", "_") for n in getattr(bunch, "feature_names", [])]
    if len(names) != bunch.data.shape[1]:
        names = [f"x{i}" for i in range(bunch.data.shape[1])]
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*names, "target"])
        for row, label in zip(bunch.data.tolist(), bunch.target.tolist()):
            writer.writerow([*(repr(float(v)) for v in row), int(label)])
    tmp.replace(path)
    return path


def resolve_table(spec: str, folder: Path) -> tuple[str, Path, str]:
    """``(name, csv path, target column)`` of a table given by name or as ``path.csv:target``."""
    if spec in SKLEARN_TABLES:
        return spec, sklearn_csv(spec, folder), "target"
    path, sep, target = spec.rpartition(":")
    if not sep or not path or not target:
        raise SystemExit(f"--tables {spec}: give a bundled name ({', '.join(SKLEARN_TABLES)}) or path.csv:target")
    if not Path(path).is_file():
        raise SystemExit(f"--tables {spec}: {path} does not exist")
    return Path(path).stem, Path(path).resolve(), target


def run_one(table: str, path: Path, target: str, model: str, seed: int, extra: list[str], runs_dir: Path) -> dict:
    """Train and test one model on one table in-process; the record of the run (status, metrics, time)."""
    from hydra import compose, initialize_config_module

    from ugmm.cli import train

    overrides = [
        "data=csv",
        f"data.path={path}",
        f"data.target={target}",
        *MODELS[model],
        f"seed={seed}",
        f"data.split_seed={seed}",
        *extra,
    ]
    record = {"table": table, "model": model, "seed": seed, "command": "python train.py " + " ".join(overrides)}
    with initialize_config_module("ugmm.conf", version_base="1.3"):
        cfg = compose(
            "train", overrides=[*overrides, *QUIET, f"paths.log_dir={runs_dir}", f"task_name={table}_{model}"]
        )
    start = time.perf_counter()
    log_file = runs_dir / f"{table}_{model}_seed{seed}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        with log_file.open("w") as log, contextlib.redirect_stdout(log):  # the run's own summary goes to its log
            train(cfg)
    except Exception as err:  # a failed run is listed with its error, never dropped silently
        record.update({"status": "failed", "error": f"{type(err).__name__}: {err}"})
        return record
    out = Path(cfg.paths.output_dir)
    saved = json.loads((out / "metrics.json").read_text())
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the numbers are what is kept
    record.update(status="ok", metrics=saved["metrics"], seconds=time.perf_counter() - start)
    return record


def accuracy(metrics: dict, split: str) -> float | None:
    """``split`` accuracy of a run: ``<split>/acc``, or the mean over folds of a cross-validated run."""
    return metrics.get(f"{split}/acc", metrics.get(f"cv/{split}_acc_mean"))


def summarise(records: list[dict]) -> dict:
    """Per table and model: runs, successful runs, and their test and final validation accuracies."""
    out: dict[str, dict[str, dict]] = {}
    for r in records:
        cell = out.setdefault(r["table"], {}).setdefault(r["model"], {"runs": 0, "ok": 0, "test": [], "val": []})
        cell["runs"] += 1
        if r["status"] != "ok":
            continue
        cell["ok"] += 1
        cell["test"].append(accuracy(r["metrics"], "test"))
        cell["val"].append(accuracy(r["metrics"], "val"))
    return out


def _cell(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean, std = mean_std([100 * v for v in values])
    return f"{mean:.1f} +- {std:.1f}"


def _seed_caption(records: list[dict], models: list[str]) -> str:
    """The seeds as "seeds 0, 1, 2", or each model's seeds when they differ (results merged from several runs)."""
    by_model = {m: sorted({r["seed"] for r in records if r["model"] == m}) for m in models}
    if len({tuple(s) for s in by_model.values()}) == 1:
        return "seeds " + ", ".join(map(str, next(iter(by_model.values()))))
    return "seeds " + "; ".join(f"{', '.join(map(str, s))} ({m})" for m, s in by_model.items())


def markdown(records: list[dict], hw: str, label: str | None) -> str:
    """Test accuracy (%) per table (rows) and model (columns), validation accuracy and failures below."""
    summary = summarise(records)
    cv = any("cv/val_acc_mean" in r.get("metrics", {}) for r in records)
    models = list(dict.fromkeys(r["model"] for r in records))
    head = ["table", *[f"{m} test acc (%)" for m in models], *[f"{m} final val acc (%)" for m in models]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for table, cells in summary.items():
        row = [table]
        row += [_cell(cells[m]["test"]) if m in cells else "-" for m in models]
        row += [_cell(cells[m]["val"]) if m in cells else "-" for m in models]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        f"Mean +- sample std over {_seed_caption(records, models)} (each seed: its own split and initialisation,"
        " the same for every model); defaults only"
        + (f" plus `{label}`" if label else "")
        + "."
        + (" Cross-validated runs: each seed's mean over its folds." if cv else ""),
        f"Hardware: {hw}.",
        "",
        "Commands (seed = each listed seed; `<out>/tables/`: scikit-learn's bundled tables as CSV, written by"
        " the script):",
        "",
    ]
    seen = set()
    for r in records:
        if (r["table"], r["model"]) in seen:
            continue
        seen.add((r["table"], r["model"]))
        cmd = (
            r["command"]
            .replace(f"seed={r['seed']}", "seed=<seed>")
            .replace(f"split_seed={r['seed']}", "split_seed=<seed>")
        )
        cmd = re.sub(r"data\.path=\S*/tables/", "data.path=<out>/tables/", cmd)  # the bundled tables the script wrote
        lines.append(f"- {r['table']}, {r['model']}: `{cmd}`")
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        lines += ["", "Failed runs:", ""]
        lines += [f"- {r['table']} {r['model']} seed {r['seed']}: {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", nargs="+", default=list(SKLEARN_TABLES), help="bundled names or path.csv:target")
    parser.add_argument("--models", nargs="+", default=["ugmm", "mlp", "linear"], choices=list(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--extra-overrides", nargs="*", default=[], help="train.py overrides for every run")
    parser.add_argument("--label", help="what --extra-overrides change, for the table's caption")
    parser.add_argument("--out", type=Path, help="output dir (default logs/baselines/<timestamp>)")
    parser.add_argument("--render", nargs="+", type=Path, help="print one table from earlier results.json files")
    args = parser.parse_args(argv)

    if args.render:
        saved = [json.loads(p.read_text()) for p in args.render]
        records = [r for s in saved for r in s["runs"]]
        print(markdown(records, "; ".join(dict.fromkeys(s["hardware"] for s in saved)), saved[0].get("label")), end="")
        return 0
    out = args.out or REPO / "logs" / "baselines" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    tables = [resolve_table(spec, out / "tables") for spec in args.tables]
    logging.getLogger("lightning").setLevel(logging.ERROR)
    hw, records = hardware(), []
    total = len(tables) * len(args.models) * len(args.seeds)
    for table, path, target in tables:
        for model in args.models:
            for seed in args.seeds:
                record = run_one(table, path, target, model, seed, args.extra_overrides, out / "runs")
                records.append(record)
                shown = "FAILED"
                if record["status"] == "ok":
                    shown = f"test acc {100 * accuracy(record['metrics'], 'test'):.1f}%"
                    shown += f", val acc {100 * accuracy(record['metrics'], 'val'):.1f}%"
                print(f"[{len(records)}/{total}] {table} {model} seed {seed}: {shown}", flush=True)
                result = {"hardware": hw, "label": args.label, "extra_overrides": args.extra_overrides, "runs": records}
                (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    table_md = markdown(records, hw, args.label)
    (out / "results.md").write_text(table_md)
    print(table_md, end="")
    print(f"results: {out / 'results.json'}")
    return 0 if all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
