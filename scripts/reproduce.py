"""Reproduce the paper's experiments over several seeds through the real entry point and tabulate them.

Each (experiment, seed) runs as ``python train.py experiment=<name> seed=<s> hydra.run.dir=...`` in a
subprocess (exactly what a user types), its ``metrics.json`` is collected, and the results are
aggregated into ``results.json`` and a Markdown table ``results.md`` (mean +- sample std over seeds,
wall time per run, the hardware, the paper's figure and the command), which is also printed.

    python scripts/reproduce.py --experiments paper_iris --seeds 0 1 2 3 4
    python scripts/reproduce.py --experiments paper_mnist mnist_mlp --seeds 0 1 2 3 4 --extra-overrides trainer=gpu
    python scripts/reproduce.py --quick        # a tiny budget per run: checks the pipeline, not the numbers
    python scripts/reproduce.py --render a/results.json b/results.json   # one table from earlier runs
    python scripts/reproduce.py --compare docs/results/comparison.yaml   # uGMM-NN vs MLP rows, paired
    python scripts/reproduce.py --experiments paper_mnist --label dropout0.5 --extra-overrides model.dropout=0.5
        # an ablation row: the experiment plus overrides, tabulated under its own name

Runs that fail are listed with the tail of their log and left out of the statistics (never hidden).
An interrupted batch is rerun with the same command and ``--out``: a seed whose run dir holds a
``last.ckpt`` but no ``metrics.json`` resumes from it, and the runs already recorded in that
``results.json`` are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from ugmm.records import mean_std

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = ("paper_mnist", "paper_iris", "mnist_mlp")
# --experiments default: plain `python train.py` (the shipped defaults), e.g. with a search's best overrides
DEFAULT = "default"

# what the paper (arXiv 2509.07569) and its public code report for the same setting
PAPER = {
    "paper_mnist": "97.46% test acc (public notebook, 1 run)",
    "mnist_mlp": "~98.2% test acc (same-size MLP, paper)",
    "paper_iris": "93-100% MAP acc (public script; measured on the 150 rows it trained on)",
    "mnist_generative": "- (no generative MNIST figure in the paper)",
}
# metrics worth a column when a run logged them: (key, header, is a fraction shown in %)
COLUMNS = (
    ("test/acc", "test acc (%)", True),
    ("test/loglik", "test log-lik", False),
    ("test/ece", "test ECE", False),
)
# tiny budget for --quick: one epoch over a few batches
QUICK_OVERRIDES = (
    "trainer.max_epochs=1",
    "trainer.check_val_every_n_epoch=1",  # an experiment may validate less often; the monitor needs one
    "++trainer.limit_train_batches=3",
    "++trainer.limit_val_batches=2",
    "++trainer.limit_test_batches=2",
)


def hardware() -> str:
    """One line: CPU model and cores, GPU (when torch sees one), torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [f"{cpu}, {cores} cores ({platform.machine()})"]
    try:
        import torch

        if torch.cuda.is_available():
            parts.append(f"GPU: {torch.cuda.get_device_name(0)}")
        else:
            parts.append("no GPU")
        parts.append(f"torch {torch.__version__}")
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return "; ".join(parts)


def command_for(experiment: str, seed: int | str, extra: list[str], quick: bool) -> list[str]:
    """The train.py overrides of one run, without the run dir (which the script adds).

    ``experiment="default"`` is the shipped defaults (no ``experiment=`` override).
    """
    chosen = [] if experiment == DEFAULT else [f"experiment={experiment}"]
    return [*chosen, f"seed={seed}", *(QUICK_OVERRIDES if quick else ()), *extra]


def run_one(experiment: str, seed: int, extra: list[str], quick: bool, out: Path, label: str | None = None) -> dict:
    """Run one training job in a subprocess; return its record (metrics.json plus status and timing).

    ``label`` names the row (default: the experiment), e.g. for an ablation of overrides.
    """
    name = label or experiment
    run_dir = out / "runs" / name / f"seed_{seed}"
    log_path = out / "logs" / f"{name}_seed{seed}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    overrides = command_for(experiment, seed, extra, quick)
    cmd = [sys.executable, str(REPO / "train.py"), *overrides, f"hydra.run.dir={run_dir}", "logger=csv"]
    last = run_dir / "checkpoints" / "last.ckpt"
    resumed = last.is_file() and not (run_dir / "metrics.json").is_file()
    if resumed:  # an interrupted run goes on from its last epoch instead of starting over
        cmd.append(f"ckpt_path={last}")
    start = time.perf_counter()
    with log_path.open("a" if resumed else "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=_child_env())
    elapsed = time.perf_counter() - start
    record = {"experiment": name, "config": experiment, "seed": seed, "returncode": proc.returncode}
    record["elapsed_s"] = elapsed  # of this process only, when resumed
    record["command"] = "python train.py " + " ".join(overrides)
    if resumed:
        record["resumed_from"] = str(last)
    metrics_file = run_dir / "metrics.json"
    if proc.returncode == 0 and metrics_file.is_file():
        record.update(json.loads(metrics_file.read_text()))
    else:
        tail = log_path.read_text().strip().splitlines()[-5:]
        record.update({"status": "failed", "log_tail": tail, "log": str(log_path)})
    return record


def earlier_records(results: Path, rerun: list[tuple[str, int]]) -> list[dict]:
    """The runs an earlier invocation recorded in ``results``, minus the (name, seed) pairs run again."""
    if not results.is_file():
        return []
    runs = json.loads(results.read_text())["runs"]
    return [r for r in runs if (r["experiment"], r["seed"]) not in set(rerun)]


def _child_env() -> dict:
    env = dict(os.environ)
    env.setdefault("WANDB_MODE", "offline")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def aggregate(records: list[dict]) -> dict[str, dict]:
    """Per experiment: seeds run and succeeded, mean/std of every metric in COLUMNS, wall time."""
    out: dict[str, dict] = {}
    for exp in dict.fromkeys(r["experiment"] for r in records):
        runs = [r for r in records if r["experiment"] == exp]
        ok = [r for r in runs if r.get("status") == "ok"]
        summary = {"runs": len(runs), "ok": len(ok), "seeds": [r["seed"] for r in ok], "metrics": {}}
        for key, _, _ in COLUMNS:
            values = [r["metrics"][key] for r in ok if r.get("metrics", {}).get(key) is not None]
            if values:
                mean, std = mean_std(values)
                summary["metrics"][key] = {"mean": mean, "std": std, "values": values}
        timed = [r for r in ok if not r.get("resumed_from")]  # a resumed run timed only its last epochs
        if timed:
            mean, std = mean_std([r["wall_time_s"] for r in timed])
            summary["wall_time_s"] = {"mean": mean, "std": std}
            mean, std = mean_std([r["elapsed_s"] for r in timed])
            summary["process_time_s"] = {"mean": mean, "std": std}
        summary["config"] = runs[0].get("config", exp)
        summary["command"] = runs[0]["command"].replace(f"seed={runs[0]['seed']}", "seed=<seed>")
        out[exp] = summary
    return out


def _fmt(stat: dict | None, percent: bool) -> str:
    if stat is None:
        return "-"
    scale = 100.0 if percent else 1.0
    digits = 2 if percent else 4
    return f"{stat['mean'] * scale:.{digits}f} +- {stat['std'] * scale:.{digits}f}"


def markdown_table(summary: dict[str, dict], hw: str, quick: bool) -> str:
    """The results table: one row per experiment, then the hardware and the commands."""
    header = ["experiment", "seeds ok", *[h for _, h, _ in COLUMNS], "train time / run (s)", "process (s)", "paper"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for exp, s in summary.items():
        cells = [f"`{exp}`", f"{s['ok']}/{s['runs']}"]
        cells += [_fmt(s["metrics"].get(key), pct) for key, _, pct in COLUMNS]
        for key in ("wall_time_s", "process_time_s"):
            t = s.get(key)
            cells.append(f"{t['mean']:.1f} +- {t['std']:.1f}" if t else "-")
        cells.append(PAPER.get(exp, "-") if exp == s.get("config", exp) else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Mean +- sample std over seeds. Train time: `train()` from config to test metrics (metrics.json's"
        " wall_time_s); process: the whole `python train.py` subprocess, imports included; runs resumed from a"
        " checkpoint are left out of both."
    )
    lines.append(f"Hardware: {hw}.")
    if quick:
        lines.append("QUICK MODE (1 epoch, 3 training batches): a pipeline check, not a result.")
    lines.append("")
    lines.append("Commands (seed = each listed seed):")
    lines.append("")
    for exp, s in summary.items():
        lines.append(f"- `{exp}`: `{s['command']}` (seeds {', '.join(map(str, s['seeds'])) or 'none ok'})")
    return "\n".join(lines) + "\n"


def _write_json(out: Path, hw: str, quick: bool, records: list[dict]) -> None:
    record = {"hardware": hw, "quick": quick, "summary": aggregate(records), "runs": records}
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")


def render(paths: list[Path]) -> str:
    """One table from the runs recorded in earlier ``results.json`` files (re-aggregated)."""
    runs, hardware_lines, quick = [], [], False
    for path in paths:
        saved = json.loads(Path(path).read_text())
        runs += saved["runs"]
        quick |= bool(saved.get("quick"))
        if saved["hardware"] not in hardware_lines:
            hardware_lines.append(saved["hardware"])
    return markdown_table(aggregate(runs), " | ".join(hardware_lines), quick)


def _stat(path: Path, label: str) -> dict:
    """The aggregate of runs named ``label`` in the results.json at ``path``."""
    saved = json.loads(path.read_text())
    runs = [r for r in saved["runs"] if r["experiment"] == label]
    if not runs:
        names = sorted({r["experiment"] for r in saved["runs"]})
        raise SystemExit(f"{path}: no runs named {label!r} (it has {', '.join(names)})")
    return aggregate(runs)[label] | {"hardware": saved["hardware"]}


def _better(a: dict | None, b: dict | None) -> int:
    """+1 if mean a beats mean b by more than both standard deviations, -1 the other way, else 0."""
    if not a or not b:
        return 0
    gap = a["mean"] - b["mean"]
    return 0 if abs(gap) <= max(a["std"], b["std"]) else (1 if gap > 0 else -1)


def render_comparison(manifest: Path) -> str:
    """uGMM-NN against the MLP, one row per (data, recipe) of ``manifest`` (YAML), from recorded runs.

    Each row: ``data``, ``recipe`` (Markdown), ``ugmm`` and ``mlp``, each ``{file: results.json relative
    to the manifest, label: the runs' name in it}``. Test accuracy and ECE are mean +- sample std over
    the seeds that finished; the better accuracy is bold where the gap exceeds both standard deviations.
    """
    import yaml  # hydra's own dependency

    spec = yaml.safe_load(manifest.read_text())
    header = [
        "data",
        "recipe: overrides of `python train.py`",
        "seeds",
        "uGMM-NN test acc (%)",
        "MLP test acc (%)",
        "uGMM-NN test ECE",
        "MLP test ECE",
        "train time / run, uGMM-NN / MLP (s)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    hardware, commands = [], []
    for row in spec["rows"]:
        stats = {m: _stat(manifest.parent / row[m]["file"], row[m]["label"]) for m in ("ugmm", "mlp")}
        acc = {m: stats[m]["metrics"].get("test/acc") for m in stats}
        ece = {m: stats[m]["metrics"].get("test/ece") for m in stats}
        cell = {m: _fmt(acc[m], True) for m in stats}
        winner = _better(acc["ugmm"], acc["mlp"])
        if winner:
            m = "ugmm" if winner > 0 else "mlp"
            cell[m] = f"**{cell[m]}**"
        seeds = {m: stats[m]["ok"] for m in stats}
        times = " / ".join(
            f"{stats[m]['wall_time_s']['mean']:.0f}" if stats[m].get("wall_time_s") else "-" for m in stats
        )
        n_seeds = str(seeds["ugmm"]) if seeds["ugmm"] == seeds["mlp"] else f"{seeds['ugmm']} / {seeds['mlp']}"
        cells = [row["data"], row["recipe"], n_seeds, cell["ugmm"], cell["mlp"]]
        cells += [_fmt(ece["ugmm"], False), _fmt(ece["mlp"], False), times]
        lines.append("| " + " | ".join(cells) + " |")
        for m in stats:
            hardware += [stats[m]["hardware"]] if stats[m]["hardware"] not in hardware else []
            commands.append(
                f"- {row['data']}, {m}: `{stats[m]['command']}` (seeds {', '.join(map(str, stats[m]['seeds']))})"
            )
    lines += [
        "",
        "Mean +- sample std over seeds; bold: the better mean where the gap exceeds both standard deviations;"
        " train time: runs resumed from a checkpoint are left out.",
    ]
    lines += [f"Hardware: {' | '.join(hardware)}.", "", "Commands (seed = each listed seed):", "", *commands]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), help="experiment config names")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--quick", action="store_true", help="1 epoch over 3 batches per run: a pipeline check")
    parser.add_argument(
        "--extra-overrides", nargs="*", default=[], help="more train.py overrides for every run, e.g. trainer=gpu"
    )
    parser.add_argument("--label", default=None, help="row name for these runs (one experiment), e.g. an ablation")
    parser.add_argument("--out", type=Path, default=None, help="output dir (default logs/reproduce/<timestamp>)")
    parser.add_argument(
        "--render",
        nargs="+",
        type=Path,
        default=None,
        help="print one table from earlier results.json files; run nothing",
    )
    parser.add_argument(
        "--compare", type=Path, default=None, help="print the uGMM-NN vs MLP table of a manifest (YAML); run nothing"
    )
    args = parser.parse_args(argv)
    if args.compare:
        print(render_comparison(args.compare), end="")
        return 0
    if args.render:
        print(render(args.render), end="")
        return 0

    known = {p.stem for p in (REPO / "src" / "ugmm" / "conf" / "experiment").glob("*.yaml")} | {DEFAULT}
    unknown = [e for e in args.experiments if e not in known]
    if unknown:
        parser.error(f"unknown experiment(s) {', '.join(unknown)}; choose from {', '.join(sorted(known))}")
    if args.label and len(args.experiments) != 1:
        parser.error("--label names the runs of one experiment; give exactly one with --experiments")
    if args.label and not re.fullmatch(r"[A-Za-z0-9._+-]+", args.label):
        # it becomes a folder in a Hydra override (hydra.run.dir=...), where , ( ) = and spaces have meaning
        parser.error(f"--label {args.label!r} may hold only letters, digits and . _ + -")
    out = args.out or REPO / "logs" / "reproduce" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    hw = hardware()
    records = earlier_records(
        out / "results.json", [(args.label or e, s) for e in args.experiments for s in args.seeds]
    )
    for exp in args.experiments:
        for seed in args.seeds:
            record = run_one(exp, seed, list(args.extra_overrides), args.quick, out, args.label)
            records.append(record)
            status = record.get("status", "failed")
            acc = record.get("metrics", {}).get("test/acc")
            shown = f"test/acc={acc:.4f}" if acc is not None else ""
            print(f"[{args.label or exp} seed={seed}] {status} {shown} ({record['elapsed_s']:.1f} s)", flush=True)
            if status != "ok":
                print("  " + "\n  ".join(record.get("log_tail", [])), flush=True)
            _write_json(out, hw, args.quick, records)  # after every run: an interrupted batch keeps its runs
    summary = aggregate(records)
    table = markdown_table(summary, hw, args.quick)
    _write_json(out, hw, args.quick, records)
    (out / "results.md").write_text(table)
    print()
    print(table)
    print(f"results: {out / 'results.md'}, {out / 'results.json'}")
    return 0 if all(r.get("status") == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
