"""The benchmark, end to end in the lab guest: the quick mode (make bench-quick, about 12
minutes here) must produce results.json, and every figure in it must be re-derivable from the raw runs.
Plotting happens on the host (tests/postlab/test_bench_report.py renders report.html from
this run's results.json): under QEMU's emulation matplotlib takes longer than measuring.
Performance targets are shown in the report, never asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cblb.bench import analysis as an

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def quick_report(lab_out: Path) -> Path:
    out = lab_out / "bench-test"
    (out / "results.json").unlink(missing_ok=True)
    p = subprocess.run([sys.executable, "-m", "cblb.cli", "bench", "--quick", "--no-report",
                        "--out", str(out)], capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "[bench " in p.stdout and "ETA" in p.stdout  # progress shown
    assert "--report-only" in p.stdout
    return out


def test_results_json_describes_the_run(quick_report: Path) -> None:
    data = json.loads((quick_report / "results.json").read_text())
    assert not (quick_report / "results.partial.json").exists()
    meta = data["meta"]
    assert meta["kernel"]["release"] == os.uname().release
    assert meta["machine"]["cpu"]
    assert "--quick" in meta["command_line"]
    assert data["recommendation"]
    assert {t["name"] for t in data["targets"]}


def test_results_are_internally_consistent(quick_report: Path) -> None:
    data = json.loads((quick_report / "results.json").read_text())
    assert an.check_consistency(data) == []
    for r in data["ratios"]:
        assert r["value"] == pytest.approx(r["num_median"] / r["den_median"])


def test_every_experiment_produced_figures(quick_report: Path) -> None:
    data = json.loads((quick_report / "results.json").read_text())
    names = {r["name"] for r in data["ratios"]}
    for wl in ("seq1m", "rand4k", "db"):
        for ph in ("first", "rewrite"):
            for t in ("cblb", "dm4k", "dm64k"):
                assert f"compare/{wl}/{ph}/{t}/write_bw" in names
    assert {"snapread/cblb/0.1", "snapread/cblb/0.5", "tracer/loaded_vs_unloaded"} <= names
    assert any(n.startswith("totals/255/") for n in names)
    runs = data["runs"]
    cblb_first = [r for r in runs if r["experiment"] == "compare" and r["target"] == "cblb"
                  and r["phase"] == "first"]
    # first touch copies each written byte once; the rewrite pass copies nothing
    for r in cblb_first:
        assert r["metrics"]["cow_per_byte"] == pytest.approx(1.0, abs=0.05), r["workload"]
    for r in runs:
        if r["experiment"] == "compare" and r["target"] == "cblb" and r["phase"] == "rewrite":
            assert r["metrics"]["cow_bytes"] == 0
    assert not [n for n in data["meta"]["notes"] if "failed" in n]
