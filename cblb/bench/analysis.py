"""From raw runs to summaries, ratios, targets and a recommendation (pure functions).

A *selector* is a dict of run keys (experiment, device, target, workload, phase, frac,
total, variant, file_size, ...). The figure of a selector for a metric is the MEDIAN of
that metric over the matching non-warm-up runs. A ratio is figure(num) / figure(den); its
spread [lo, hi] is min(num)/max(den) .. max(num)/min(den), the widest the repetitions allow,
and [rep_lo, rep_hi] the min..max of the per-repetition ratios (numerator and denominator
of the same repetition, measured minutes apart): the "min..max over the repetitions" the
targets table shows.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any, Iterable

SEL_KEYS = ("experiment", "device", "target", "workload", "phase", "frac", "total",
            "variant", "file_size", "max_files")
DEVICES = ("ram", "ssd")
MiB = 1 << 20
TiB = 1 << 40


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


def by_rep(runs: Iterable[dict[str, Any]], sel: dict[str, Any],
           metric: str) -> dict[int, float]:
    """Median of the metric per repetition (rep -> value), warm-ups left out."""
    groups: dict[int, list[float]] = {}
    for r in runs:
        if not r.get("warmup") and matches(r, sel) and metric in r["metrics"]:
            groups.setdefault(int(r.get("rep", 0)), []).append(r["metrics"][metric])
    return {k: statistics.median(v) for k, v in sorted(groups.items())}


def per_rep_ratios(runs: list[dict[str, Any]], num: dict[str, Any], den: dict[str, Any],
                   metric: str, den_metric: str) -> list[float]:
    nr, dr = by_rep(runs, num, metric), by_rep(runs, den, den_metric)
    return [nr[k] / dr[k] for k in sorted(set(nr) & set(dr)) if dr[k]]


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
    per = per_rep_ratios(runs, num, den, metric, den_metric or metric)
    return {"name": name, "metric": metric, "den_metric": den_metric or metric,
            "num": num, "den": den, "num_median": n, "den_median": d, "value": n / d,
            "lo": lo, "hi": hi, "per_rep": per, "rep_lo": min(per) if per else None,
            "rep_hi": max(per) if per else None,
            "num_n": len(nv), "den_n": len(dvals), "better": better}


def spread(r: dict[str, Any]) -> tuple[float | None, float | None]:
    """The min..max shown beside a ratio: over the repetitions when they pair up, else
    the widest spread."""
    if r.get("rep_lo") is not None:
        return r["rep_lo"], r["rep_hi"]
    return r.get("lo"), r.get("hi")


COMPARE_METRICS = (("write_bw", "higher"), ("write_iops", "higher"),
                   ("write_p50_us", "lower"), ("write_p99_us", "lower"))


def devices_of(runs: list[dict[str, Any]], experiment: str) -> list[str]:
    found = {r.get("device", "ram") for r in runs if r["experiment"] == experiment}
    return [d for d in DEVICES if d in found] + sorted(found - set(DEVICES))


def all_ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(r: dict[str, Any] | None) -> None:
        if r:
            out.append(r)

    targets = sorted({r["target"] for r in runs if r["experiment"] == "compare"})
    workloads = sorted({r["workload"] for r in runs if r["experiment"] == "compare"})
    for dev in devices_of(runs, "compare"):
        for wl in workloads:
            # No snapshot has no first/rewrite: one time-based baseline (older results
            # have both phases; the selector pools them).
            base = {"experiment": "compare", "device": dev, "target": "none", "workload": wl}
            for ph in ("first", "rewrite"):
                for t in targets:
                    if t == "none":
                        continue
                    sel = {**base, "target": t, "phase": ph}
                    for m, better in COMPARE_METRICS + (("read_bw", "higher"),):
                        if m == "read_bw" and wl != "db":
                            continue
                        add(ratio(runs, f"compare/{dev}/{wl}/{ph}/{t}/{m}", m, sel, base,
                                  better=better))
                cblb = {**base, "target": "cblb", "phase": ph}
                for t in targets:
                    if t.startswith("dm"):
                        add(ratio(runs, f"compare/{dev}/{wl}/{ph}/cblb_vs_{t}/write_bw",
                                  "write_bw", cblb, {**cblb, "target": t}))
    for dev in devices_of(runs, "snapread"):
        fracs = sorted({r["frac"] for r in runs if r["experiment"] == "snapread"})
        for t in sorted({r["target"] for r in runs if r["experiment"] == "snapread"}):
            for f in fracs:
                sel = {"experiment": "snapread", "device": dev, "target": t, "frac": f}
                add(ratio(runs, f"snapread/{dev}/{t}/{f:g}", "read_bw",
                          {**sel, "phase": "snapshot"}, {**sel, "phase": "origin"}))
    totals = sorted({r["total"] for r in runs if r["experiment"] == "totals"})
    if totals:
        den = {"experiment": "totals", "total": totals[0], "variant": "one"}
        for n in totals:
            for v in ("one", "several"):
                add(ratio(runs, f"totals/{n}/{v}", "write_bw",
                          {"experiment": "totals", "total": n, "variant": v}, den))
    # changed-block tracking: the origin tracked (no snapshot) vs the comparison's
    # no-snapshot run of the same repetition, run next to it (marked cbt_paired)
    for dev in devices_of(runs, "cbt"):
        for wl in sorted({r["workload"] for r in runs if r["experiment"] == "cbt"
                          and r.get("phase") == "base" and r.get("device", "ram") == dev}):
            num = {"experiment": "cbt", "device": dev, "target": "tracked", "workload": wl,
                   "phase": "base"}
            den = {"experiment": "compare", "device": dev, "target": "none", "workload": wl,
                   "cbt_paired": True}
            for m, better in COMPARE_METRICS:
                add(ratio(runs, f"cbt/{dev}/{wl}/{m}", m, num, den, better=better))
    add(ratio(runs, "tracer/loaded_vs_unloaded", "write_bw",
              {"experiment": "tracer", "variant": "loaded"},
              {"experiment": "tracer", "variant": "unloaded"}))
    for t in ("cblb", "cblb-catalog-on-origin"):
        for ph in ("first", "rewrite"):
            add(ratio(runs, f"catorigin/{t}/{ph}", "write_bw",
                      {"experiment": "catorigin", "target": t, "phase": ph},
                      {"experiment": "catorigin", "target": "none", "phase": ph}))
    # cblb cat (issue 24): whole-device reads against dd of the origin, same repetition
    for dev in devices_of(runs, "catstream"):
        base = {"experiment": "catstream", "device": dev, "phase": "dd_origin"}
        for ph in ("cat", "cat_pipe", "dd_snapshot"):
            add(ratio(runs, f"catstream/{dev}/{ph}", "read_bw", {**base, "phase": ph}, base))
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


def cbt_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Kernel memory of changed-block tracking: per TiB of origin (the sparse 1 TiB loop
    device, worst run) with its map block size, and of each device set's own origin."""
    sel = {"experiment": "cbt", "phase": "memory"}
    per_tib = values(runs, sel, "cbt_memory_per_tib_bytes")
    bs = values(runs, sel, "block_size")
    origins: dict[str, dict[str, float]] = {}
    for dev in devices_of(runs, "cbt"):
        o = {"experiment": "cbt", "device": dev, "phase": "base"}
        mem = values(runs, o, "memory_bytes")
        if mem:
            origins[dev] = {"memory_bytes": max(mem),
                            "block_size": max(values(runs, o, "block_size") or [0.0]),
                            "size_bytes": max(values(runs, o, "size_bytes") or [0.0])}
    return {"memory_per_tib_bytes": max(per_tib) if per_tib else None,
            "block_size_per_tib": max(bs) if bs else None, "origins": origins}


def _met(value: float | None, op: str, thr: float) -> bool | None:
    if value is None or math.isnan(value):
        return None
    return {">=": value >= thr, ">": value > thr, "<=": value <= thr, "<": value < thr}[op]


def median_interval_confidence(n: int) -> float:
    """Confidence that min..max of n independent samples holds their median (sign test):
    1 - 2 / 2**n, for example 0.94 for 5 pairs."""
    return 1 - 2 * 0.5 ** n if n > 1 else 0.0


# The targets (issue 11), evaluated on every device: (name, text, ratio source
# under compare/<device>/ or snapread/<device>/, op, threshold, published peer figure).
DEVICE_TARGETS = (
    ("first_seq1m", "sequential 1 MiB first writes: throughput vs no snapshot",
     "compare/{d}/seq1m/first/cblb/write_bw", ">=", 0.5, "LVM about 0.1x"),
    ("first_seq1m_vs_dm4k", "sequential 1 MiB first writes: cblb ahead of dm-snapshot, "
     "4 KiB chunks (same run)", "compare/{d}/seq1m/first/cblb_vs_dm4k/write_bw", ">", 1.0, ""),
    ("first_seq1m_vs_dm64k", "sequential 1 MiB first writes: cblb ahead of dm-snapshot, "
     "64 KiB chunks (same run)", "compare/{d}/seq1m/first/cblb_vs_dm64k/write_bw", ">", 1.0,
     ""),
    ("first_rand4k", "random 4 KiB first writes: IOPS vs no snapshot",
     "compare/{d}/rand4k/first/cblb/write_iops", ">=", 0.35, "LVM about 0.16x"),
    ("first_rand4k_vs_dm4k", "random 4 KiB first writes: cblb vs dm-snapshot, 4 KiB chunks "
     "(LVM's default)", "compare/{d}/rand4k/first/cblb_vs_dm4k/write_bw", ">=", 2.5, ""),
    ("first_rand4k_p99", "random 4 KiB first writes: p99 latency vs no snapshot",
     "compare/{d}/rand4k/first/cblb/write_p99_us", "<=", 3.0, ""),
    ("rewrite_seq1m", "sequential 1 MiB rewrites of copied chunks: throughput vs no snapshot",
     "compare/{d}/seq1m/rewrite/cblb/write_bw", ">=", 0.97, "LVM about 0.85x"),
    ("rewrite_rand4k", "random 4 KiB rewrites of copied chunks: throughput vs no snapshot",
     "compare/{d}/rand4k/rewrite/cblb/write_bw", ">=", 0.97, "LVM about 0.85x"),
    ("snapread_0.1", "snapshot sequential 1 MiB reads vs origin reads, 10% changed",
     "snapread/{d}/cblb/0.1", ">=", 0.9, ""),
    ("snapread_0.5", "snapshot sequential 1 MiB reads vs origin reads, 50% changed",
     "snapread/{d}/cblb/0.5", ">=", 0.7, ""),
)
# Issue 12: changed-block tracking's cost on origin writes, on every device: (name, text,
# ratio source under cbt/<device>/, threshold on the fraction of throughput lost).
CBT_TARGETS = (
    ("cbt_seq1m", "changed-block tracking costs <= 1% of origin write bandwidth: "
     "sequential 1 MiB writes (origin tracked vs untracked, no snapshot)",
     "cbt/{d}/seq1m/write_bw", 0.01),
    ("cbt_rand4k", "changed-block tracking costs <= 1% of origin write bandwidth: "
     "random 4 KiB O_DIRECT writes (origin tracked vs untracked, no snapshot)",
     "cbt/{d}/rand4k/write_bw", 0.01),
)
CBT_MEMORY_MIB = 32.0   # issue 12: kernel memory per TiB of tracked origin


def targets(runs: list[dict[str, Any]], ratios: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each beside its measured value on each device (shown, never
    asserted). ``lo``/``hi`` are min..max over the repetitions; ``every_rep`` says whether
    each repetition alone meets the target."""
    R = by_name(ratios)
    out: list[dict[str, Any]] = []

    def t(name: str, device: str, text: str, value: float | None, op: str, thr: float,
          peer: str = "", source: str = "", unit: str = "x", lo: float | None = None,
          hi: float | None = None, n: int = 0, note: str = "") -> None:
        met = _met(value, op, thr)
        every = None
        if met is not None and lo is not None and hi is not None:
            every = bool(_met(lo, op, thr) and _met(hi, op, thr))
        out.append({"name": name, "device": device, "target": text, "value": value,
                    "lo": lo, "hi": hi, "n": n, "op": op, "threshold": thr, "met": met,
                    "every_rep": every, "peer": peer, "source": source, "unit": unit,
                    "note": note})

    def from_ratio(name: str, device: str, text: str, src: str, op: str, thr: float,
                   peer: str = "") -> None:
        r = R.get(src)
        lo, hi = spread(r) if r else (None, None)
        n = len(r["per_rep"]) if r and r.get("per_rep") else (r["num_n"] if r else 0)
        t(name, device, text, r["value"] if r else None, op, thr, peer, src, lo=lo, hi=hi,
          n=n)

    def cost_from_ratio(name: str, device: str, text: str, src: str, thr: float,
                        note: str = "") -> None:
        """A target on the fraction of throughput lost (1 - ratio, unit "frac")."""
        r = R.get(src)
        lo, hi = spread(r) if r else (None, None)
        n = len(r["per_rep"]) if r and r.get("per_rep") else (r["num_n"] if r else 0)
        t(name, device, text, 1 - r["value"] if r else None, "<=", thr, "", src,
          unit="frac", lo=None if hi is None else 1 - hi, hi=None if lo is None else 1 - lo,
          n=n, note=note if r else "")

    cbt_devs = {r.get("device", "ram") for r in runs
                if r["experiment"] == "cbt" and r.get("phase") == "base"}
    devs = sorted(set(devices_of(runs, "compare")) | set(devices_of(runs, "snapread"))
                  | cbt_devs,
                  key=lambda d: (d not in DEVICES, DEVICES.index(d) if d in DEVICES else 0, d))
    for name, text, src, op, thr, peer in DEVICE_TARGETS:
        for d in devs:
            from_ratio(name, d, text, src.format(d=d), op, thr, peer)
    for name, text, src, thr in CBT_TARGETS:
        for d in devs:
            cost_from_ratio(name, d, text, src.format(d=d), thr,
                            "each repetition: the tracked run next to the untracked "
                            "no-snapshot run, order alternating")
    mem = values(runs, {"experiment": "cbt", "phase": "memory"}, "cbt_memory_per_tib_bytes")
    bs = values(runs, {"experiment": "cbt", "phase": "memory"}, "block_size")
    t("cbt_memory_tib", "ram", "changed-block tracking: kernel memory per TiB of tracked "
      "origin (both maps, a sparse 1 TiB loop device)", max(mem) / MiB if mem else None, "<=",
      CBT_MEMORY_MIB, "", "cbt/memory/cbt_memory_per_tib_bytes", unit="MiB",
      lo=min(mem) / MiB if mem else None, hi=max(mem) / MiB if mem else None, n=len(mem),
      note=f"{max(bs) / 1024:g} KiB per map bit at 1 TiB" if bs else "")
    tot = sorted({r["total"] for r in runs if r["experiment"] == "totals"})
    if tot:
        from_ratio("total_max", "ram", f"total={tot[-1]} vs total={tot[0]}, one snapshot "
                   "(within 3%)", f"totals/{tot[-1]}/one", ">=", 0.97)
    starts = values(runs, {"experiment": "filesize"}, "start_latency_us") + \
        values(runs, {"experiment": "start"}, "start_latency_us")
    t("start_ms", "ram", "start latency, worst over every file size (ms)",
      max(starts) / 1000 if starts else None, "<=", 100.0, "",
      "filesize+start/start_latency_us", unit="ms",
      lo=min(starts) / 1000 if starts else None, hi=max(starts) / 1000 if starts else None,
      n=len(starts))
    ipc = values(runs, {"experiment": "compare", "target": "cblb", "phase": "first"},
                 "index_per_chunk")
    t("index_bytes", "ram", "kernel index memory per copied 4 KiB chunk (bytes, worst run)",
      max(ipc) if ipc else None, "<=", 8.0, "", "compare/cblb/first/index_per_chunk",
      unit="B", lo=min(ipc) if ipc else None, hi=max(ipc) if ipc else None, n=len(ipc))
    tr = R.get("tracer/loaded_vs_unloaded")
    if tr is None:
        t("tracer_cost", "ram", "the module's write hook on a device without snapshot "
          "(fraction of throughput lost)", None, "<=", 0.02, "", "tracer/loaded_vs_unloaded",
          unit="frac")
    else:
        lo, hi = spread(tr)
        n = len(tr.get("per_rep") or [])
        conf = median_interval_confidence(n)
        t("tracer_cost", "ram", "the module's write hook on a device without snapshot "
          "(fraction of throughput lost)", 1 - tr["value"], "<=", 0.02, "",
          "tracer/loaded_vs_unloaded", unit="frac",
          lo=None if hi is None else 1 - hi, hi=None if lo is None else 1 - lo, n=n,
          note=(f"min..max of {n} back-to-back pairs: a {conf * 100:.0f}% interval for the "
                "median cost" if n > 1 else ""))
    return out


def short_runs(results: dict[str, Any]) -> list[str]:
    """Measured runs that lasted less than the mode's runtime and moved less than its
    minimum bytes (512 MiB): each figure must come from one or the other."""
    meta = results.get("meta", {})
    tmin = float(meta.get("min_runtime_s") or 0)
    bmin = float(meta.get("min_bytes") or 0)
    if not tmin:
        return []
    bad = []
    for r in results.get("runs", []):
        m = r["metrics"]
        if r.get("warmup") or "runtime_s" not in m:
            continue
        moved = m.get("write_bytes", 0) + m.get("read_bytes", 0)
        # fio counts runtime in whole milliseconds and stops at the cap: allow 2%.
        if m["runtime_s"] < 0.98 * tmin and moved < bmin:
            bad.append(f"{r['experiment']} {r.get('device', '')} {r['target']} "
                       f"{r.get('workload', '')} {r.get('phase', '')} rep {r.get('rep')}: "
                       f"{m['runtime_s']:.2f} s, {moved / 2**20:.0f} MiB")
    return bad


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
    """Fill summaries, ratios, targets and the recommendation in place; return results.
    Runs from before the device sets (no ``device``) were measured on RAM."""
    runs = results["runs"]
    for r in runs:
        r.setdefault("device", "ram")
    results["summaries"] = summaries(runs)
    results["ratios"] = all_ratios(runs)
    results["targets"] = targets(runs, results["ratios"])
    results["recommendation"] = recommend(runs, results["ratios"])
    results["cbt"] = cbt_summary(runs)
    return results


def check_consistency(results: dict[str, Any], rel: float = 1e-9) -> list[str]:
    """Problems found re-deriving every summary, ratio and target from the raw runs
    (empty when results.json is internally consistent). Used by the tests."""
    problems: list[str] = []
    runs = results.get("runs", [])
    for key in ("schema", "meta", "config", "runs", "summaries", "ratios", "targets",
                "recommendation", "cbt"):
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
        if "per_rep" in r:
            per = per_rep_ratios(runs, r["num"], r["den"], r["metric"], r["den_metric"])
            if len(per) != len(r["per_rep"]) or not all(
                    close(a, b) for a, b in zip(per, r["per_rep"])):
                problems.append(f"ratio {r['name']}: per-repetition ratios differ from the runs")
    R = by_name(results.get("ratios", []))
    for t in results.get("targets", []):
        src = t.get("source", "")
        if t["value"] is not None and src in R:
            want = R[src]["value"]
            if t["unit"] == "frac":
                want = 1 - want
            if not close(want, t["value"]):
                problems.append(f"target {t['name']} differs from ratio {src}")
        if t["value"] is not None and t["met"] is not _met(t["value"], t["op"], t["threshold"]):
            problems.append(f"target {t['name']} ({t.get('device', '')}): 'met' is wrong")
    # changed-block tracking: its memory figures and target, re-derived from the runs
    if "cbt" in results:
        if results["cbt"] != cbt_summary(runs):
            problems.append("cbt: memory figures differ from the runs")
        per_tib = results["cbt"].get("memory_per_tib_bytes")
        for t in results.get("targets", []):
            if t["name"] != "cbt_memory_tib":
                continue
            if (t["value"] is None) != (per_tib is None) or (
                    per_tib is not None and not close(t["value"], per_tib / MiB)):
                problems.append("target cbt_memory_tib differs from cbt.memory_per_tib_bytes")
    for r in results.get("ratios", []):
        if r["name"].startswith("cbt/") and not r["den"].get("cbt_paired"):
            problems.append(f"ratio {r['name']}: its baseline is not the paired "
                            "no-snapshot runs")
    return problems
