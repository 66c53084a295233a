"""Host tests of the benchmark's analysis and report: synthetic results, no kernel."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from cblb.bench import analysis as an
from cblb.bench import devices, modes, report, runner
from cblb.bench.experiments import cbt
from cblb.bench.workloads import WORKLOADS, parse_fio_json
from cblb.cli import build_parser, main

BASE = {"seq1m": 400e6, "seq1m8": 450e6, "rand4k": 8e6, "db": 6e6}
FACTOR = {"none": (1.0, 1.0), "cblb": (0.6, 0.98), "dm4k": (0.15, 0.9), "dm64k": (0.2, 0.85)}
DEVS = {"ram": 1.0, "ssd": 0.5}   # the ssd set is slower; ratios the same
CBT = 0.996                        # tracked / untracked origin write throughput
MiB, TiB = 1 << 20, 1 << 40


def synthetic(reps: int = 3, seed: int = 1) -> dict:
    rnd = random.Random(seed)
    runs = []

    def add(metrics, **kw):
        run = {"experiment": "", "target": "", "workload": "", "phase": "", "rep": 0,
               "warmup": False, "info": {}, "device": "ram", **kw,
               "metrics": {k: float(v) for k, v in metrics.items()}}
        runs.append(run)

    for dev, scale in DEVS.items():
        for rep in range(-1, reps):
            for t, (ff, fr) in FACTOR.items():
                for wl in WORKLOADS:
                    phases = (("base", 1.0),) if t == "none" else (("first", ff), ("rewrite", fr))
                    for ph, f in phases:
                        bw = BASE[wl] * scale * f * rnd.uniform(0.95, 1.05)
                        m = {"write_bw": bw, "write_iops": bw / WORKLOADS[wl].bs,
                             "write_p50_us": 100 / f,
                             "write_p99_us": 400 / f * rnd.uniform(0.9, 1.1),
                             "write_bytes": 8 << 20, "runtime_s": 5.0,
                             "read_bw": bw * 2 if wl == "db" else 0.0}
                        info = {}
                        if t != "none":
                            m["cow_per_byte"] = 1.0 if ph == "first" else 0.0
                            m["chunks_copied"] = 2048.0 if ph == "first" else 0.0
                            if ph == "first":
                                m["chunks_expected"] = 2048.0
                                m["copied_all"] = 1.0
                            if t == "cblb" and ph == "first":
                                m["index_per_chunk"] = 4.5
                                m["slab_per_chunk"] = 5.0
                                m["start_latency_us"] = 900
                            if t.startswith("dm"):
                                info = {"dm_status": {"before": "0 100 snapshot 16/200 16",
                                                      "after": "0 100 snapshot 16400/200 16"}}
                        paired = t == "none" and rep >= 0 and wl in ("seq1m", "rand4k")
                        add(m, experiment="compare", target=t, workload=wl, phase=ph, rep=rep,
                            warmup=rep < 0, device=dev, info=info,
                            **({"cbt_paired": True} if paired else {}))
                        if paired:   # the origin tracked, next to the untracked run
                            add({**m, "write_bw": bw * CBT, "write_iops": bw * CBT /
                                 WORKLOADS[wl].bs, "memory_bytes": 32768.0,
                                 "block_size": 4096.0, "size_bytes": 512.0 * MiB,
                                 "changed_blocks": 100.0}, experiment="cbt",
                                target="tracked", workload=wl, phase="base", rep=rep,
                                variant="tracked", device=dev)
        for rep in range(reps):
            for t in ("cblb", "dm4k"):
                for frac in (0.1, 0.5):
                    add({"read_bw": 100e6 * scale, "runtime_s": 5.0}, experiment="snapread",
                        target=t, workload="seqread", phase="origin", rep=rep, frac=frac,
                        device=dev)
                    add({"read_bw": 100e6 * scale * (1 - frac / 2) * rnd.uniform(0.97, 1.03),
                         "runtime_s": 5.0},
                        experiment="snapread", target=t, workload="seqread", phase="snapshot",
                        rep=rep, frac=frac, device=dev)
    for rep in range(reps):
        for total in (1, 16, 255):
            for variant in ("one", "several"):
                if total == 1 and variant == "several":
                    continue
                add({"write_bw": 5e6 * rnd.uniform(0.98, 1.02)}, experiment="totals",
                    target="cblb", workload="rand4k", phase="first", rep=rep, total=total,
                    variant=variant)
        for fs in (2048, 16384, 409600):
            add({"write_bw": 5e6 * (0.9 if fs == 2048 else 1.0), "start_latency_us": 2000 + fs / 10,
                 "files_used": max(1, 8 * 2048 // fs), "failed": 0.0},
                experiment="filesize", target="cblb", workload="rand4k", phase="first", rep=rep,
                file_size=fs, max_files=20,
                info={"growth": [[0.0, 1, 0], [1.0, 2, 4 << 20], [2.0, 3, 8 << 20]]})
    for pair in range(5):
        for variant in ("loaded", "unloaded"):
            add({"write_bw": 8e6 * rnd.uniform(0.99, 1.01), "runtime_s": 5.0},
                experiment="tracer", target=variant, workload="rand4k", phase="base",
                rep=pair, variant=variant)
    add({"memory_bytes": 32.0 * MiB, "block_size": 8192.0, "size_bytes": float(TiB),
         "cbt_memory_per_tib_bytes": 32.0 * MiB}, experiment="cbt", target="tracked",
        phase="memory", info={"device": "/dev/loop9"})
    add({"hash_bw": 50e6, "read_bw": 100e6, "bytes": 8 << 20}, experiment="verify",
        target="cblb", workload="hash", phase="snapshot", info={"engine": "reference: test"})
    return {"schema": 1, "meta": {
        "command_line": "cblb bench --quick", "mode": "quick", "started": "2026-01-01T00:00:00",
        "kernel": {"release": "6.12.0-test", "version": "#1", "cmdline": "console=ttyS0",
                   "note": ""},
        "machine": {"cpu": "QEMU TCG CPU version 2.5+", "cpus": 2, "emulated": True},
        "storage": "RAM", "notes": [], "fio_version": "fio-3.33", "cblb_version": "0",
        "min_runtime_s": 5.0, "min_bytes": 512 << 20,
        "devices": {"ram": {"storage": "loop over tmpfs", "origin": "/dev/loop0",
                            "catalog": "/dev/loop1", "cow": "/dev/loop2"},
                    "ssd": {"storage": "null_blk", "origin": "/dev/nullb0",
                            "catalog": "/dev/nullb1", "cow": "/dev/nullb2"}}},
        "config": {"reps": reps}, "runs": runs}


def test_ratio_math_is_median_over_median():
    runs = [{"experiment": "x", "target": "a", "rep": i, "warmup": False,
             "metrics": {"m": v}} for i, v in enumerate((1.0, 3.0, 2.0))]
    runs += [{"experiment": "x", "target": "b", "rep": i, "warmup": False,
              "metrics": {"m": v}} for i, v in enumerate((4.0, 5.0, 6.0))]
    runs.append({"experiment": "x", "target": "a", "rep": -1, "warmup": True,
                 "metrics": {"m": 1000.0}})
    r = an.ratio(runs, "t", "m", {"target": "a"}, {"target": "b"})
    assert r["num_median"] == 2.0 and r["den_median"] == 5.0
    assert r["value"] == pytest.approx(0.4)
    assert r["lo"] == pytest.approx(1 / 6) and r["hi"] == pytest.approx(3 / 4)
    assert r["num_n"] == 3  # the warm-up run is left out


def test_stats_min_median_max():
    s = an.stats([3.0, 1.0, 2.0, 10.0])
    assert (s["min"], s["median"], s["max"], s["n"]) == (1.0, 2.5, 10.0, 4)
    assert an.stats([])["median"] is None


def test_analysis_is_internally_consistent():
    res = an.analyse(synthetic())
    assert an.check_consistency(res) == []
    R = an.by_name(res["ratios"])
    for dev in ("ram", "ssd"):
        r = R[f"compare/{dev}/rand4k/first/cblb/write_bw"]
        assert r["value"] == pytest.approx(0.6, rel=0.1)
        assert r["den"] == {"experiment": "compare", "device": dev, "target": "none",
                            "workload": "rand4k"}  # the time-based baseline
        assert len(r["per_rep"]) == 3 and r["rep_lo"] <= r["value"] <= r["rep_hi"]
        assert R[f"compare/{dev}/rand4k/first/cblb_vs_dm4k/write_bw"]["value"] == \
            pytest.approx(4, rel=0.15)
        assert R[f"snapread/{dev}/cblb/0.5"]["value"] == pytest.approx(0.75, rel=0.05)
    names = {t["name"] for t in res["targets"]}
    assert {"rewrite_rand4k", "rewrite_seq1m", "first_rand4k", "first_rand4k_vs_dm4k",
            "first_rand4k_p99", "first_seq1m", "first_seq1m_vs_dm4k", "first_seq1m_vs_dm64k",
            "start_ms", "index_bytes", "tracer_cost", "total_max", "snapread_0.1",
            "snapread_0.5", "cbt_seq1m", "cbt_rand4k", "cbt_memory_tib"} <= names


def test_every_issue_target_is_judged_on_both_devices():
    res = an.analyse(synthetic())
    by = {(t["name"], t["device"]): t for t in res["targets"]}
    for name, *_ in an.DEVICE_TARGETS:
        for dev in ("ram", "ssd"):
            t = by[(name, dev)]
            assert isinstance(t["met"], bool), (name, dev)   # judged, not left open
            assert t["lo"] is not None and t["lo"] <= t["value"] <= t["hi"]
            assert t["n"] == 3
    assert by[("first_seq1m", "ssd")]["met"] is True        # 0.6 >= 0.5
    assert by[("first_rand4k_p99", "ram")]["met"] is True    # 1/0.6 <= 3
    assert by[("rewrite_rand4k", "ram")]["met"] is True      # 0.98 >= 0.97, noisy
    assert by[("snapread_0.1", "ssd")]["met"] is True
    assert by[("snapread_0.5", "ssd")]["met"] is True


def test_per_rep_spread_pairs_numerator_and_denominator_by_rep():
    runs = []
    for rep, (a, b) in enumerate(((1.0, 2.0), (3.0, 3.0), (2.0, 8.0))):
        runs.append({"experiment": "x", "target": "a", "rep": rep, "warmup": False,
                     "metrics": {"m": a}})
        runs.append({"experiment": "x", "target": "b", "rep": rep, "warmup": False,
                     "metrics": {"m": b}})
    r = an.ratio(runs, "t", "m", {"target": "a"}, {"target": "b"})
    assert r["per_rep"] == [0.5, 1.0, 0.25]
    assert an.spread(r) == (0.25, 1.0)
    assert (r["lo"], r["hi"]) == (1 / 8, 3 / 2)   # the widest spread stays available


def test_tracer_cost_comes_with_an_interval():
    res = an.analyse(synthetic())
    t = next(t for t in res["targets"] if t["name"] == "tracer_cost")
    assert t["n"] == 5 and t["lo"] <= t["value"] <= t["hi"]
    assert "94% interval" in t["note"]
    assert an.median_interval_confidence(5) == pytest.approx(0.9375)


def test_short_runs_are_listed():
    res = synthetic()
    assert an.short_runs(res) == []
    run = next(r for r in res["runs"] if r["experiment"] == "compare" and not r["warmup"])
    run["metrics"]["runtime_s"] = 1.2
    assert len(an.short_runs(res)) == 1
    run["metrics"]["write_bytes"] = 600 << 20   # 512 MiB moved: long enough
    assert an.short_runs(res) == []


def test_results_without_devices_are_read_as_ram():
    res = synthetic()
    res["runs"] = [r for r in res["runs"] if r["device"] == "ram"]
    for r in res["runs"]:
        del r["device"]
    an.analyse(res)
    assert an.check_consistency(res) == []
    assert "compare/ram/seq1m/first/cblb/write_bw" in an.by_name(res["ratios"])
    assert not any(k.startswith("compare/ssd/") for k in an.by_name(res["ratios"]))


def test_parse_dm_status():
    assert devices.parse_dm_status("0 2097152 snapshot 16400/2228224 48\n") == (16400, 2228224, 48)
    assert devices.parse_dm_status("0 2097152 snapshot Invalid") == (0, 0, 0)


def test_quick_plan_fits_the_time_budget():
    """make bench-quick must stay under 20 minutes including the boot: the plan's own
    estimate (seconds per step, from the runtime of each fio run) leaves room for it."""
    mode = modes.MODES["quick"]
    r = runner.Runner(mode, Path("/nonexistent"), ctl=object(), argv=["cblb", "bench"])
    steps = r.plan()
    total = sum(s.weight for s in steps)
    assert total < 17 * 60, total
    assert mode.runtime >= 5 and mode.reps >= 2 and mode.snapread_reps >= 2
    assert {s.device for s in steps if s.device} == {"ram", "ssd"}
    labels = " ".join(s.label for s in steps)
    assert "[ssd] compare rep 2/2" in labels and "[ram] compare rep 2/2" in labels
    assert labels.count("write hook cost") == 2 * mode.tracer_pairs


def test_consistency_check_catches_a_tampered_ratio():
    res = an.analyse(synthetic())
    res["ratios"][0]["value"] *= 1.5
    assert any("value" in p for p in an.check_consistency(res))
    res = an.analyse(synthetic())
    next(r for r in res["runs"] if not r["warmup"])["metrics"]["write_bw"] *= 7
    assert an.check_consistency(res)


def test_recommendation_picks_smallest_size_within_3_percent():
    res = an.analyse(synthetic())
    rec = res["recommendation"]
    assert rec["file_size"] == 16384  # 2048 is 10% slower
    assert any("16384 blocks" in t for t in rec["text"])
    assert any("total=255" in t for t in rec["text"])


def test_render_writes_report_json_and_figures(tmp_path: Path):
    res = synthetic()
    p = report.render(res, tmp_path)
    html = p.read_text()
    assert p.name == "report.html"
    data = json.loads((tmp_path / "results.json").read_text())
    assert an.check_consistency(data) == []
    for png in ("write_throughput.png", "latency_p50.png", "latency_p99.png",
                "snapshot_reads.png", "start_latency.png", "cow_per_byte.png",
                "file_growth.png", "index_memory.png", "totals.png", "tracer_catalog.png",
                "cbt_cost.png"):
        assert (tmp_path / png).stat().st_size > 1000, png
        assert f"src='{png}'" in html
    assert "QEMU TCG" in html and "6.12.0-test" in html and "cblb bench --quick" in html
    assert "Read ratios, not absolute numbers" in html
    assert "choose a temp-file size" in html
    assert html.count("figcaption") >= 10  # kernel, CPU, command beside every figure


def test_render_with_missing_experiments(tmp_path: Path):
    res = synthetic()
    res["runs"] = [r for r in res["runs"] if r["experiment"] == "compare"]
    p = report.render(res, tmp_path)
    assert "not measured in this run" in p.read_text()
    assert "Kernel memory of changed-block tracking per TiB: not measured" in p.read_text()
    assert an.check_consistency(json.loads((tmp_path / "results.json").read_text())) == []


FIO_JSON = """fio: some warning
{"fio version": "fio-3.33", "jobs": [{"jobname": "rand4k", "error": 0,
 "read": {"io_bytes": 0, "bw_bytes": 0, "iops": 0, "runtime": 0, "clat_ns": {}},
 "write": {"io_bytes": 8388608, "bw_bytes": 4194304, "iops": 1024.0, "runtime": 2000,
   "clat_ns": {"mean": 900000.0, "percentile": {"50.000000": 700000, "99.000000": 4000000}}}}]}
"""


def test_parse_fio_json():
    r = parse_fio_json(FIO_JSON)
    assert r.write_bytes == 8 << 20 and r.write_bw == 4194304 and r.write_iops == 1024
    assert r.write_p50_us == 700 and r.write_p99_us == 4000 and r.runtime_s == 2.0
    assert r.write_mean_us == 900


def test_workload_args_first_pass_and_time_based_runs():
    a = WORKLOADS["rand4k"].args("/dev/x", 8 << 20, io_size=4096 * 10, runtime=5)
    assert "--randrepeat=1" in a and "--randseed=7" in a and "--direct=1" in a
    # a first pass: the runtime is a cap, each block written at most once
    assert "--io_size=40960" in a and "--runtime=5" in a and "--rw=randwrite" in a
    assert "--time_based=1" not in a
    b = WORKLOADS["seq1m"].args("/dev/x", 8 << 20, runtime=5, time_based=True)
    assert "--time_based=1" in b and "--runtime=5" in b


def test_cli_registers_bench_and_report_only(tmp_path: Path, capsys):
    args = build_parser().parse_args(["bench", "--quick", "--out", "x"])
    assert args.quick and args.out == "x"
    report.render(synthetic(), tmp_path)
    (tmp_path / "report.html").unlink()
    assert main(["bench", "--report-only", str(tmp_path)]) == 0
    assert (tmp_path / "report.html").exists()
    assert main(["bench", "--report-only", str(tmp_path / "nope")]) == 1


def test_report_comes_from_the_template_and_escapes(tmp_path: Path):
    res = synthetic()
    res["meta"]["notes"] = ["<script>alert(1)</script> & more"]
    res["meta"]["storage"] = "RAM <b>disk</b>"
    html = report.render(res, tmp_path).read_text()
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in html
    assert "RAM &lt;b&gt;disk&lt;/b&gt;" in html
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    assert "<h2>Notes</h2>" in html and "<span class=ok>met</span>" in html


def test_report_shows_both_devices_targets_and_the_physical_limit(tmp_path: Path):
    res = synthetic()
    res["runs"] = [r for r in res["runs"] if not (
        r["experiment"] == "compare" and r["device"] == "ssd" and r["target"] == "cblb"
        and r["workload"] == "rand4k" and r["phase"] == "first")]
    html = report.render(res, tmp_path).read_text()
    assert "RAM (loop over tmpfs)" in html and "SSD-like (null_blk" in html
    assert "min..max over the repetitions" in html
    assert "<span class=no>missed</span>" in html or "not measured" in html
    assert "not measured" in html   # the ssd rand4k first targets lost their runs
    assert "Proof of the copies" in html and "16400/200" in html
    assert "Every measured run did." in html
    assert "physical limit" in html



# ---- changed-block tracking (issue 12) ------------------------------------------------------
def test_cbt_ratios_pair_the_tracked_runs_with_the_untracked_ones():
    res = an.analyse(synthetic())
    assert an.check_consistency(res) == []
    R = an.by_name(res["ratios"])
    for dev in ("ram", "ssd"):
        for wl in ("seq1m", "rand4k"):
            for m, _ in an.COMPARE_METRICS:
                assert f"cbt/{dev}/{wl}/{m}" in R, (dev, wl, m)
            r = R[f"cbt/{dev}/{wl}/write_bw"]
            assert r["num"] == {"experiment": "cbt", "device": dev, "target": "tracked",
                                "workload": wl, "phase": "base"}
            assert r["den"] == {"experiment": "compare", "device": dev, "target": "none",
                                "workload": wl, "cbt_paired": True}
            # each repetition's tracked run against its own untracked run: exactly CBT
            assert r["per_rep"] == pytest.approx([CBT] * 3)
            assert r["rep_lo"] == pytest.approx(CBT) and r["rep_hi"] == pytest.approx(CBT)
        assert f"cbt/{dev}/db/write_bw" not in R        # db is not measured tracked


def test_cbt_baseline_is_only_the_paired_no_snapshot_runs():
    res = synthetic()
    for r in res["runs"]:   # rep 2's no-snapshot runs have no tracked run beside them
        if r["experiment"] == "compare" and r["rep"] == 2:
            r.pop("cbt_paired", None)
        if r["experiment"] == "compare" and r["target"] == "none" and r["rep"] == 2:
            r["metrics"]["write_bw"] *= 10     # and must not weigh in
    res["runs"] = [r for r in res["runs"] if not (r["experiment"] == "cbt" and r["rep"] == 2)]
    an.analyse(res)
    assert an.check_consistency(res) == []
    r = an.by_name(res["ratios"])["cbt/ram/rand4k/write_bw"]
    assert r["den_n"] == 2 and len(r["per_rep"]) == 2
    assert r["value"] == pytest.approx(CBT, rel=0.06)
    # the comparison's own baseline still pools every no-snapshot run
    assert an.by_name(res["ratios"])["compare/ram/rand4k/first/cblb/write_bw"]["den_n"] == 3


def test_cbt_cost_target_on_both_devices():
    res = synthetic()
    for r in res["runs"]:    # the ssd set's tracked random writes lose 3%
        if r["experiment"] == "cbt" and r.get("device") == "ssd" and r["workload"] == "rand4k":
            r["metrics"]["write_bw"] *= 0.97 / CBT
    an.analyse(res)
    assert an.check_consistency(res) == []
    by = {(t["name"], t["device"]): t for t in res["targets"]}
    for name, *_ in an.CBT_TARGETS:
        for dev in ("ram", "ssd"):
            t = by[(name, dev)]
            assert t["unit"] == "frac" and t["op"] == "<=" and t["threshold"] == 0.01
            assert isinstance(t["met"], bool) and t["n"] == 3
            assert t["lo"] <= t["value"] <= t["hi"]
            assert t["source"] == f"cbt/{dev}/{name[4:]}/write_bw"
    assert by[("cbt_seq1m", "ram")]["value"] == pytest.approx(1 - CBT)
    assert by[("cbt_seq1m", "ram")]["met"] is True
    assert by[("cbt_rand4k", "ram")]["met"] is True
    assert by[("cbt_rand4k", "ssd")]["value"] == pytest.approx(0.03)
    assert by[("cbt_rand4k", "ssd")]["met"] is False


def test_cbt_memory_per_tib_in_results_and_target():
    res = an.analyse(synthetic())
    c = res["cbt"]
    assert c["memory_per_tib_bytes"] == 32 * MiB and c["block_size_per_tib"] == 8192
    assert c["origins"]["ram"] == {"memory_bytes": 32768, "block_size": 4096,
                                   "size_bytes": 512 * MiB}
    assert set(c["origins"]) == {"ram", "ssd"}
    t = next(t for t in res["targets"] if t["name"] == "cbt_memory_tib")
    assert (t["value"], t["unit"], t["op"], t["threshold"]) == (32.0, "MiB", "<=", 32.0)
    assert t["met"] is True and t["device"] == "ram" and "8 KiB per map bit" in t["note"]
    # more than 32 MiB per TiB misses it
    res = synthetic()
    for r in res["runs"]:
        if r["experiment"] == "cbt" and r["phase"] == "memory":
            r["metrics"]["cbt_memory_per_tib_bytes"] = 48.0 * MiB
    an.analyse(res)
    assert next(t for t in res["targets"] if t["name"] == "cbt_memory_tib")["met"] is False
    assert an.check_consistency(res) == []


def test_cbt_not_measured_is_shown_as_such():
    res = synthetic()
    res["runs"] = [r for r in res["runs"] if r["experiment"] != "cbt"]
    an.analyse(res)
    assert an.check_consistency(res) == []
    assert res["cbt"] == {"memory_per_tib_bytes": None, "block_size_per_tib": None,
                          "origins": {}}
    assert not [r for r in res["ratios"] if r["name"].startswith("cbt/")]
    by = {(t["name"], t["device"]): t for t in res["targets"]}
    assert by[("cbt_rand4k", "ssd")]["met"] is None
    assert by[("cbt_memory_tib", "ram")]["met"] is None


def test_consistency_check_catches_tampered_cbt_figures():
    res = an.analyse(synthetic())
    res["cbt"]["memory_per_tib_bytes"] = 1.0
    assert any("cbt" in p for p in an.check_consistency(res))
    res = an.analyse(synthetic())
    next(t for t in res["targets"] if t["name"] == "cbt_memory_tib")["value"] = 16.0
    assert any("cbt_memory_tib" in p for p in an.check_consistency(res))
    res = an.analyse(synthetic())
    next(t for t in res["targets"] if t["name"] == "cbt_rand4k")["value"] = 0.5
    assert any("cbt_rand4k" in p for p in an.check_consistency(res))
    res = an.analyse(synthetic())
    del res["cbt"]
    assert "missing top-level key cbt" in an.check_consistency(res)


def test_report_shows_cbt_cost_and_memory(tmp_path: Path):
    html = report.render(synthetic(), tmp_path).read_text()
    assert "Changed-block tracking: cost on origin writes and kernel memory" in html
    assert "src='cbt_cost.png'" in html
    assert "changed-block tracking costs &lt;= 1% of origin write bandwidth" in html
    assert "&lt;= 1%" in html and "&lt;= 32 MiB" in html     # the goals
    assert "0.4%" in html                                      # the measured cost
    assert "32 MiB per TiB of origin (both maps, 8 KiB per bit" in html
    assert "The bench&#39;s ram origin (512 MiB): 32 KiB, 4 KiB per bit." in html
    assert "cbt/ram/rand4k/write_bw" in html and "cbt/ssd/seq1m/write_p99_us" in html
    # one note per target row, not one per device
    assert html.count("each repetition: the tracked run next to") == 2


def test_plans_pair_each_tracked_run_with_a_no_snapshot_run():
    for name, mode in modes.MODES.items():
        r = runner.Runner(mode, Path("/nonexistent"), ctl=object(), argv=["cblb", "bench"])
        steps = r.plan()
        assert steps[0].label.startswith("changed-block tracking: kernel memory of a 1 TiB")
        assert steps[0].device == ""      # never skipped with a device set
        labels = [s.label for s in steps]
        reps = min(mode.reps, mode.cbt_reps)
        for kind in mode.devices:
            for rep in range(reps):
                for wl in mode.cbt_workloads:
                    cbt = [i for i, lab in enumerate(labels) if lab.startswith(
                        f"[{kind}] changed-block tracking rep {rep + 1}/") and wl in lab]
                    none = [i for i, lab in enumerate(labels) if lab.startswith(
                        f"[{kind}] compare rep {rep + 1}/{mode.reps} none  {wl} ")]
                    assert len(cbt) == 1 and len(none) == 1, (name, kind, rep, wl)
                    # side by side, the tracked run second in even repetitions
                    assert cbt[0] - none[0] == (1 if rep % 2 == 0 else -1), (name, rep)
                    assert steps[none[0]].fn.args[-1] is True   # the record is marked
        assert sum("changed-block tracking rep" in lab for lab in labels) == \
            reps * len(mode.cbt_workloads) * len(mode.devices)
    # tiny runs inside make test: the tracking runs add well under a minute there
    tiny = runner.Runner(modes.MODES["tiny"], Path("/nonexistent"), ctl=object(),
                         argv=["cblb", "bench"]).plan()
    assert sum(s.weight for s in tiny if "changed-block tracking" in s.label) < 60


class _FakeLoop:
    """A loop device of the bench (devices.Loop) that the fake module knows."""

    def __init__(self, device: str, size: int) -> None:
        self.device, self.size, self.image, self.detached = device, size, Path("/x.img"), False

    def detach(self) -> None:
        self.detached = True


def test_runner_cbt_steps_over_the_fake_module(tmp_path: Path, monkeypatch):
    """cbt_one tracks the origin for one run and untracks it; cbt_memory reads a 1 TiB
    origin's maps (cbt.c's sizing, as the fake models it); a snapshot's create leaves its
    origin tracked after remove, and the runner's cleanup ends that."""
    from cblb.bench.workloads import FioResult
    from cblb.control import Controller
    from cblb.fake import FakeSystem

    fake = FakeSystem(tmp_path / "fake", loaded=True, origin_bytes=64 * MiB)
    ctl = Controller(system=fake)
    r = runner.Runner(modes.MODES["tiny"], tmp_path / "out", ctl=ctl, argv=["cblb", "bench"])
    origin = _FakeLoop("/dev/vdb1", 64 * MiB)
    r.rig.dev = devices.DeviceSet("ssd", origin, origin, None, {})  # type: ignore[arg-type]

    def fio(wl, filename, size, **kw):
        fake.write_origin(filename, 0, b"x" * (3 * 4096))   # three map blocks
        return FioResult(write_bytes=3 * 4096, write_bw=1e6, runtime_s=2.0, argv=["fio"])

    monkeypatch.setattr(cbt, "run_fio", fio)
    cbt.cbt_one(r.rig, WORKLOADS["rand4k"], 1)
    (run,) = [x for x in r.results["runs"] if x["experiment"] == "cbt"]
    assert (run["target"], run["phase"], run["rep"], run["device"]) == ("tracked", "base", 1,
                                                                       "ssd")
    m = run["metrics"]
    assert m["changed_blocks"] == 3 and m["block_size"] == 4096 and m["write_bw"] == 1e6
    assert m["memory_bytes"] == 2 * (64 * MiB // 4096 // 8) and m["size_bytes"] == 64 * MiB
    assert ctl.tracking() == []                          # untracked afterwards

    fake.sizes["/dev/vdb2"] = TiB
    big = _FakeLoop("/dev/vdb2", TiB)
    monkeypatch.setattr(devices, "make_loop", lambda size, tag, sparse=False: big)
    cbt.cbt_memory(r.rig)
    mem = r.results["runs"][-1]
    assert (mem["phase"], mem["device"]) == ("memory", "ram")
    assert mem["metrics"]["cbt_memory_per_tib_bytes"] == 32 * MiB
    assert mem["metrics"]["block_size"] == 8192
    assert big.detached and ctl.tracking() == []

    ctl.create("s", "/dev/vdb1")
    ctl.remove("s")
    assert [t.disk for t in ctl.tracking()] == ["vdb1"]   # create tracks, remove does not end it
    r.rig.cleanup_snapshots()
    assert ctl.tracking() == []


def test_cblb_cat_against_dd_in_the_full_plan_only():
    """Issue 24: `cblb cat` throughput as a ratio to dd of the origin, full mode only."""
    for name, mode in modes.MODES.items():
        r = runner.Runner(mode, Path("/nonexistent"), ctl=object(), argv=["cblb", "bench"])
        labels = [s.label for s in r.plan() if "cblb cat vs dd" in s.label]
        assert len(labels) == (len(mode.devices) * 3 if name == "full" else 0), name


def test_catstream_ratios_to_dd_of_the_origin(tmp_path: Path):
    runs = []
    for rep in range(3):
        for phase, bw in (("dd_origin", 400.0), ("dd_snapshot", 380.0), ("cat", 360.0 + rep),
                          ("cat_pipe", 200.0)):
            runs.append({"experiment": "catstream", "target": "cblb", "workload": "seqread",
                         "phase": phase, "rep": rep, "warmup": False, "device": "ram",
                         "metrics": {"read_bw": bw}, "info": {}})
    got = an.by_name(an.all_ratios(runs))
    assert got["catstream/ram/cat"]["value"] == pytest.approx(361 / 400)
    assert got["catstream/ram/cat_pipe"]["value"] == pytest.approx(0.5)
    assert got["catstream/ram/dd_snapshot"]["value"] == pytest.approx(0.95)
