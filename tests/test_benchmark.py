"""scripts/benchmark.py --quick runs end to end and writes a complete, positive JSON report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_quick(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "benchmark.py"),
            "--quick",
            "--device",
            "cpu",
            "--interleaved",
            "3",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["quick"] is True
    assert report["hardware"]["cpus"] >= 1 and report["data"]
    interleaved = [r for r in report["results"] if r["kind"] == "interleaved"]
    results = [r for r in report["results"] if r["kind"] != "interleaved"]
    backends = {r["backend"] for r in results}
    assert {"reference", "mlp"} <= backends
    # --interleaved: one process per fused backend alternating its steps with the MLP's, 3 of each
    assert {r["backend"] for r in interleaved} == backends - {"reference", "mlp"}
    for r in interleaved:
        assert r["size"] == "quick" and r["repeats"] == 3
        assert r["steps_ms"]["ugmm"]["median"] > 0 and r["steps_ms"]["mlp"]["median"] > 0
        assert r["step_vs_mlp"] == pytest.approx(r["steps_ms"]["ugmm"]["median"] / r["steps_ms"]["mlp"]["median"])
        assert r["step_vs_mlp_pairwise_median"] > 0
    assert "interleaved" in proc.stdout
    for r in results:
        assert r["memory"]["peak_mb"] >= 0 and r["memory"]["method"]
        assert r["optimizer"] == "Adam(fused=True)"  # the step train.py takes (build_optimizer)
        for what in ("forward", "fwd_bwd", "step"):
            t = r["times"][what]
            assert t["median_ms"] > 0 and t["min_ms"] > 0 and t["n"] == 3
    sizes = {r["size"] for r in results if r["kind"] == "network"}
    assert sizes == {"quick"}
    layers = [r for r in results if r["kind"] == "layer"]
    assert {r["size"].endswith("dense") for r in layers} == {True, False}  # real-data and dense layer cases
    for r in layers:  # G terms/s per direction
        rates = r["times"]["G_terms_per_s"]
        assert rates["forward"] > 0 and rates["backward"] > 0 and rates["fwd_bwd"] > 0 and rates["terms"] > 0
    assert report["omp_wait_policy"] == "PASSIVE" and report["rounds"] == 1
    # every fused backend gets ratios against the reference and the MLP
    for backend in backends - {"reference", "mlp"}:
        entry = report["ratios"]["quick"][backend]
        for key in ("step_speedup_vs_reference", "step_vs_mlp", "fwd_bwd_speedup_vs_reference"):
            assert entry[key] > 0
        assert entry.get("memory_vs_reference", 1.0) > 0  # absent only if the reference's growth was 0
    assert "uGMM benchmark" in proc.stdout and "wrote" in proc.stdout
