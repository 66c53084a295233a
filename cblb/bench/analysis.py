"""From raw runs to summaries, ratios, targets and a recommendation (pure functions).

A *selector* is a dict of run keys (experiment, target, workload, phase, frac, total,
variant, file_size, ...). The figure of a selector for a metric is the MEDIAN of that
metric over the matching non-warm-up runs. A ratio is figure(num) / figure(den); its
spread [lo, hi] is min(num)/max(den) .. max(num)/min(den), the widest the repetitions allow.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any, Iterable

SEL_KEYS = ("experiment", "target", "workload", "phase", "frac", "total", "variant",
            "file_size", "max_files")


def matches(run: dict[str, Any], sel: dict[str, Any]) -> bool:
    return all(run.get(k) == v for k, v in sel.items())


def values(runs: Iterable[dict[str, Any]], sel: dict[str, Any], metric: str) -> list[float]:
    return [r["metrics"][metric] for r in runs
            if not r.get("warmup") and matches(r, sel) and metric in r["metrics"]]


def stats(vals: list[float]) -> dict[str, Any]:
    if not vals:
        return {"n": 0, "min": None, "median": None, "max": None, "stdev": None, "cv": None,
                "values": []}
    med = statistics.median(vals)
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {"n": len(vals), "min": min(vals), "median": med, "max": max(vals), "stdev": sd,
            "cv": (sd / med) if med else None, "values": list(vals)}


def summaries(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (selector of all SEL_KEYS present, metric) with min/median/max."""
    groups: dict[tuple, list[float]] = {}
    order: list[tuple] = []
    for r in runs:
        if r.get("warmup"):
            continue
        key = tuple((k, r[k]) for k in SEL_KEYS if k in r and r[k] not in ("", None))
        for m, v in r["metrics"].items():
            g = (key, m)
            if g not in groups:
                groups[g] = []
                order.append(g)
            groups[g].append(v)
    return [{"select": dict(k), "metric": m, **stats(groups[(k, m)])} for k, m in order]


def ratio(runs: list[dict[str, Any]], name: str, metric: str, num: dict[str, Any],
          den: dict[str, Any], den_metric: str | None = None,
          better: str = "higher") -> dict[str, Any] | None:
    nv = values(runs, num, metric)
    dvals = values(runs, den, den_metric or metric)
    if not nv or not dvals:
        return None
    n, d = statistics.median(nv), statistics.median(dvals)
    if not d:
        return None
    lo = min(nv) / max(dvals) if max(dvals) else None
    hi = max(nv) / min(dvals) if min(dvals) else None
    return {"name": name, "metric": metric, "den_metric": den_metric or metric,
            "num": num, "den": den, "num_median": n, "den_median": d, "value": n / d,
            "lo": lo, "hi": hi, "num_n": len(nv), "den_n": len(dvals), "better": better}


COMPARE_METRICS = (("write_bw", "higher"), ("write_iops", "higher"),
                   ("write_p50_us", "lower"), ("write_p99_us", "lower"))


def all_ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(r: dict[str, Any] | None) -> None:
        if r:
            out.append(r)

    targets = sorted({r["target"] for r in runs if r["experiment"] == "compare"})
    workloads = sorted({r["workload"] for r in runs if r["experiment"] == "compare"})
    for wl in workloads:
        for ph in ("first", "rewrite"):
            base = {"experiment": "compare", "target": "none", "workload": wl, "phase": ph}
            for t in targets:
                if t == "none":
                    continue
                sel = {**base, "target": t}
                for m, better in COMPARE_METRICS + (("read_bw", "higher"),):
                    if m == "read_bw" and wl != "db":
                        continue
                    add(ratio(runs, f"compare/{wl}/{ph}/{t}/{m}", m, sel, base, better=better))
            for t in targets:
                if t.startswith("dm"):
                    add(ratio(runs, f"compare/{wl}/{ph}/cblb_vs_{t}/write_bw", "write_bw",
                              {**base, "target": "cblb"}, {**base, "target": t}))
    fracs = sorted({r["frac"] for r in runs if r["experiment"] == "snapread"})
    for t in sorted({r["target"] for r in runs if r["experiment"] == "snapread"}):
        for f in fracs:
            sel = {"experiment": "snapread", "target": t, "frac": f}
            add(ratio(runs, f"snapread/{t}/{f:g}", "read_bw", {**sel, "phase": "snapshot"},
                      {**sel, "phase": "origin"}))
    totals = sorted({r["total"] for r in runs if r["experiment"] == "totals"})
    if totals:
        den = {"experiment": "totals", "total": totals[0], "variant": "one"}
        for n in totals:
            for v in ("one", "several"):
                add(ratio(runs, f"totals/{n}/{v}", "write_bw",
                          {"experiment": "totals", "total": n, "variant": v}, den))
    add(ratio(runs, "tracer/loaded_vs_unloaded", "write_bw",
              {"experiment": "tracer", "variant": "loaded"},
              {"experiment": "tracer", "variant": "unloaded"}))
    for t in ("cblb", "cblb-catalog-on-origin"):
        for ph in ("first", "rewrite"):
            add(ratio(runs, f"catorigin/{t}/{ph}", "write_bw",
                      {"experiment": "catorigin", "target": t, "phase": ph},
                      {"experiment": "catorigin", "target": "none", "phase": ph}))
    sizes = sorted({r["file_size"] for r in runs if r["experiment"] == "filesize"})
    if sizes:
        den = {"experiment": "filesize", "file_size": sizes[-1]}
        for s in sizes:
            add(ratio(runs, f"filesize/{s}", "write_bw",
                      {"experiment": "filesize", "file_size": s}, den))
    return out


def by_name(ratios: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in ratios}


def figure(runs: list[dict[str, Any]], sel: dict[str, Any], metric: str,
           agg: str = "median") -> float | None:
    v = values(runs, sel, metric)
    if not v:
        return None
    pick: dict[str, Callable[[list[float]], float]] = {"median": statistics.median, "max": max,
                                                       "min": min}
    return pick[agg](v)


def targets(runs: list[dict[str, Any]], ratios: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each beside its measured value (shown, never asserted)."""
    R = by_name(ratios)
    out: list[dict[str, Any]] = []

    def t(name: str, text: str, value: float | None, op: str, thr: float, peer: str = "",
          source: str = "", unit: str = "x") -> None:
        met = None
        if value is not None and not math.isnan(value):
            met = value >= thr if op == ">=" else value <= thr
        out.append({"name": name, "target": text, "value": value, "op": op,
                     "threshold": thr, "met": met, "peer": peer, "source": source,
                     "unit": unit})

    def rv(name: str) -> float | None:
        return R[name]["value"] if name in R else None

    t("rewrite_rand4k", "random overwrites of copied blocks: throughput vs no snapshot",
      rv("compare/rand4k/rewrite/cblb/write_bw"), ">=", 0.95, "LVM about 0.85x",
      "compare/rand4k/rewrite/cblb/write_bw")
    t("rewrite_seq1m", "sequential rewrites of copied blocks: throughput vs no snapshot",
      rv("compare/seq1m/rewrite/cblb/write_bw"), ">=", 0.95, "LVM about 0.85x",
      "compare/seq1m/rewrite/cblb/write_bw")
    t("first_rand4k_iops", "first-touch 4 KiB random writes: IOPS vs no snapshot",
      rv("compare/rand4k/first/cblb/write_iops"), ">=", 0.33, "LVM about 0.16x",
      "compare/rand4k/first/cblb/write_iops")
    t("first_rand4k_p99", "first-touch 4 KiB random writes: p99 latency vs no snapshot",
      rv("compare/rand4k/first/cblb/write_p99_us"), "<=", 4.0, "",
      "compare/rand4k/first/cblb/write_p99_us")
    t("first_rand4k_vs_dm", "first-touch 4 KiB random writes: cblb vs dm-snapshot, 4 KiB chunks "
      "(LVM's default)", rv("compare/rand4k/first/cblb_vs_dm4k/write_bw"), ">=", 2.0, "",
      "compare/rand4k/first/cblb_vs_dm4k/write_bw")
    t("first_seq1m", "first-touch 1 MiB sequential writes: throughput vs no snapshot",
      rv("compare/seq1m/first/cblb/write_bw"), ">=", 0.5, "LVM about 0.1x",
      "compare/seq1m/first/cblb/write_bw")
    tot = sorted({r["total"] for r in runs if r["experiment"] == "totals"})
    if tot:
        t("total_max", f"total={tot[-1]} vs total={tot[0]}, one snapshot (within 3%)",
          rv(f"totals/{tot[-1]}/one"), ">=", 0.97, "", f"totals/{tot[-1]}/one")
    for f, thr in ((0.1, 0.9), (0.5, 0.7)):
        t(f"snapread_{f:g}", f"snapshot sequential reads vs origin reads, {int(f * 100)}% "
          "changed", rv(f"snapread/cblb/{f:g}"), ">=", thr, "", f"snapread/cblb/{f:g}")
    starts = values(runs, {"experiment": "filesize"}, "start_latency_us") + \
        values(runs, {"experiment": "start"}, "start_latency_us")
    t("start_ms", "start latency, worst over every file size (ms)",
      max(starts) / 1000 if starts else None, "<=", 100.0, "", "filesize+start/start_latency_us",
      unit="ms")
    ipc = values(runs, {"experiment": "compare", "target": "cblb", "phase": "first"},
                 "index_per_chunk")
    t("index_bytes", "kernel index memory per copied 4 KiB chunk (bytes, worst run)",
      max(ipc) if ipc else None, "<=", 8.0, "", "compare/cblb/first/index_per_chunk",
      unit="B")
    tr = rv("tracer/loaded_vs_unloaded")
    t("tracer_cost", "the tracer's own cost on a device without snapshot (fraction of "
      "throughput)", (1 - tr) if tr is not None else None, "<=", 0.02, "",
      "tracer/loaded_vs_unloaded", unit="frac")
    return out


def recommend(runs: list[dict[str, Any]], ratios: list[dict[str, Any]]) -> dict[str, Any]:
    """A plain-language choice of file size, number of files and total=N."""
    sizes = sorted({r["file_size"] for r in runs if r["experiment"] == "filesize"})
    rec: dict[str, Any] = {"file_size": None, "text": []}
    if sizes:
        bw = {s: figure(runs, {"experiment": "filesize", "file_size": s}, "write_bw") or 0.0
              for s in sizes}
        st = {s: figure(runs, {"experiment": "filesize", "file_size": s}, "start_latency_us",
                        "max") or 0.0 for s in sizes}
        failed = {s: (figure(runs, {"experiment": "filesize", "file_size": s}, "failed",
                             "max") or 0.0) > 0 for s in sizes}
        best = max(bw.values()) or 1.0
        ok = [s for s in sizes if bw[s] >= 0.97 * best and st[s] < 100_000 and not failed[s]]
        choice = ok[0] if ok else max(sizes, key=lambda s: bw[s])
        rec["file_size"] = choice
        mib = choice * 512 / 2**20
        rec["text"].append(
            f"For first writes (4 KiB random, the costliest pattern), choose a temp-file size "
            f"of {choice} blocks ({mib:g} MiB): it is the smallest size whose throughput is "
            f"within 3% of the best size measured ({bw[choice] / best:.2f}x of the best), and "
            f"its start took {st[choice] / 1000:.1f} ms at worst. Larger files buy nothing "
            f"here but reserve more catalog space up front.")
        rec["text"].append(
            f"Number of files: expected changed data during the snapshot's life divided by "
            f"{mib:g} MiB, plus 50% headroom (for example 10% of a 100 GiB partition changed: "
            f"{math.ceil(10 * 1024 / mib * 1.5)} files). When the files run out, the snapshot "
            f"fails (origin writes go on); the max-files sweep shows it.")
    tot = sorted({r["total"] for r in runs if r["experiment"] == "totals"})
    R = by_name(ratios)
    if tot and f"totals/{tot[-1]}/one" in R:
        v = R[f"totals/{tot[-1]}/one"]["value"]
        rec["total_ratio"] = v
        rec["text"].append(
            f"total=N: total={tot[-1]} ran at {v:.2f}x of total={tot[0]} with one snapshot; "
            + ("set total to the most snapshots you will ever need at once: it costs nothing "
               "measurable." if v >= 0.97 else
               "keep total close to the number of snapshots you need."))
    return rec


def analyse(results: dict[str, Any]) -> dict[str, Any]:
    """Fill summaries, ratios, targets and the recommendation in place; return results."""
    runs = results["runs"]
    results["summaries"] = summaries(runs)
    results["ratios"] = all_ratios(runs)
    results["targets"] = targets(runs, results["ratios"])
    results["recommendation"] = recommend(runs, results["ratios"])
    return results


def check_consistency(results: dict[str, Any], rel: float = 1e-9) -> list[str]:
    """Problems found re-deriving every summary, ratio and target from the raw runs
    (empty when results.json is internally consistent). Used by the tests."""
    problems: list[str] = []
    runs = results.get("runs", [])
    for key in ("schema", "meta", "config", "runs", "summaries", "ratios", "targets",
                "recommendation"):
        if key not in results:
            problems.append(f"missing top-level key {key}")
    meta = results.get("meta", {})
    for key in ("command_line", "kernel", "machine", "mode", "started"):
        if not meta.get(key):
            problems.append(f"meta.{key} is empty")

    def close(a: float, b: float) -> bool:
        return abs(a - b) <= rel * max(1.0, abs(a), abs(b))

    for r in runs:
        for k in ("experiment", "target", "rep", "metrics", "warmup"):
            if k not in r:
                problems.append(f"run without {k}: {r}")
    for s in results.get("summaries", []):
        v = values(runs, s["select"], s["metric"])
        st = stats(v)
        if st["n"] != s["n"] or (v and not (close(st["median"], s["median"]) and
                                            close(st["min"], s["min"]) and
                                            close(st["max"], s["max"]))):
            problems.append(f"summary {s['select']} {s['metric']} does not match its runs")
    for r in results.get("ratios", []):
        nv = values(runs, r["num"], r["metric"])
        dvals = values(runs, r["den"], r["den_metric"])
        if not nv or not dvals:
            problems.append(f"ratio {r['name']}: no runs behind it")
            continue
        n, d = statistics.median(nv), statistics.median(dvals)
        if not (close(n, r["num_median"]) and close(d, r["den_median"])):
            problems.append(f"ratio {r['name']}: medians differ from the runs")
        if not close(r["value"], r["num_median"] / r["den_median"]):
            problems.append(f"ratio {r['name']}: value != num_median / den_median")
        if r["lo"] is not None and r["hi"] is not None and not (
                r["lo"] - 1e-12 <= r["value"] <= r["hi"] + 1e-12):
            problems.append(f"ratio {r['name']}: value outside its spread")
    R = by_name(results.get("ratios", []))
    for t in results.get("targets", []):
        src = t.get("source", "")
        if t["value"] is not None and src in R:
            want = R[src]["value"]
            if t["unit"] == "frac":
                want = 1 - want
            if not close(want, t["value"]):
                problems.append(f"target {t['name']} differs from ratio {src}")
        if t["value"] is not None and t["met"] is not (
                t["value"] >= t["threshold"] if t["op"] == ">=" else t["value"] <= t["threshold"]):
            problems.append(f"target {t['name']}: 'met' is wrong")
    return problems
