"""results.json -> report.html with PNG figures (matplotlib, Agg backend).

Every figure carries the kernel, CPU and command line it was measured with, in the PNG's
footer and in its HTML caption. Ratios lead; raw figures follow in tables with
min / median / max and the coefficient of variation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import analysis as an
from .devices import DEVICE_LABEL, FIRST_WRITE_LIMIT
from .workloads import OVERWRITE_LABEL, WORKLOADS, read_lat_log

TARGET_LABEL = {"none": "no snapshot", "cblb": "cblb", "dm4k": "dm-snapshot 4 KiB chunks",
                "dm64k": "dm-snapshot 64 KiB chunks"}
COLORS = {"cblb": "#1f77b4", "dm4k": "#d62728", "dm64k": "#ff7f0e", "none": "#7f7f7f"}


def env_line(results: dict[str, Any]) -> str:
    m = results["meta"]
    k, mc = m["kernel"], m["machine"]
    note = f" ({k['note']})" if k.get("note") else ""
    return (f"kernel {k['release']}{note}; CPU {mc['cpu']} x{mc['cpus']}"
            f"{' (emulated)' if mc.get('emulated') else ''}; command: {m['command_line']}")


def noise_line(results: dict[str, Any]) -> str:
    """How noisy the run was: median CV of the compare throughputs, CPU speed range."""
    cvs = sorted(s["cv"] for s in results.get("summaries", [])
                 if s["select"].get("experiment") == "compare" and s["metric"] == "write_bw"
                 and s["cv"] is not None and s["n"] > 1)
    parts = []
    if cvs:
        parts.append(f"median coefficient of variation of write throughput over repetitions: "
                     f"{cvs[len(cvs) // 2] * 100:.0f}% (worst {cvs[-1] * 100:.0f}%)")
    cal = results["meta"].get("cpu_calibration") or []
    if len(cal) > 1:
        parts.append(f"CPU speed seen by the guest varied {min(cal) / max(cal):.2f}x..1x "
                     "during the run")
    if not parts:
        return ""
    return ("Noise: " + "; ".join(parts) + ". A ratio whose error bar crosses its target "
            "line is not conclusive.")


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig: Any, out: Path, name: str, results: dict[str, Any]) -> str:
    fig.text(0.01, 0.005, env_line(results)[:160], fontsize=6, color="#555")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(out / name, dpi=90)
    _plt().close(fig)
    return name


def _err(r: dict[str, Any]) -> tuple[float, float]:
    """Error bar of a ratio: min..max over the repetitions (the widest spread if they do
    not pair up)."""
    v = r["value"]
    lo, hi = an.spread(r)
    lo = v if lo is None else lo
    hi = v if hi is None else hi
    return max(0.0, v - lo), max(0.0, hi - v)


def _devices(results: dict[str, Any], experiment: str) -> list[str]:
    return an.devices_of(results["runs"], experiment)


def fig_compare(results: dict[str, Any], out: Path, metric: str, name: str, title: str,
                ylabel: str, lines: dict[str, float],
                device_lines: dict[str, dict[str, float]] | None = None) -> str | None:
    """One panel per device set, side by side, same y scale."""
    R = an.by_name(results["ratios"])
    devs = [d for d in _devices(results, "compare")
            if any(k.startswith(f"compare/{d}/") for k in R)]
    if not devs:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(devs), figsize=(6.5 * len(devs), 4), sharey=True,
                             squeeze=False)
    drawn = False
    for ax, d in zip(axes[0], devs):
        targets = [t for t in ("cblb", "dm4k", "dm64k")
                   if any(k.split("/")[4] == t for k in R if k.startswith(f"compare/{d}/"))]
        groups = [(wl, ph) for wl in WORKLOADS for ph in ("first", "rewrite")
                  if any(f"compare/{d}/{wl}/{ph}/{t}/{metric}" in R for t in targets)]
        w = 0.8 / max(1, len(targets))
        for i, t in enumerate(targets):
            xs, ys, el, eh = [], [], [], []
            for g, (wl, ph) in enumerate(groups):
                r = R.get(f"compare/{d}/{wl}/{ph}/{t}/{metric}")
                if r:
                    xs.append(g + i * w - 0.4 + w / 2)
                    ys.append(r["value"])
                    lo, hi = _err(r)
                    el.append(lo)
                    eh.append(hi)
            if xs:
                drawn = True
                ax.bar(xs, ys, w, yerr=[el, eh], capsize=3, label=TARGET_LABEL[t],
                       color=COLORS[t])
            for x, y in zip(xs, ys):
                ax.text(x, y, f"{y:.2f}", ha="center", va="bottom", fontsize=7)
        extra = (device_lines or {}).get(d, {})
        # a device line (the physical limit) replaces a target line at the same height
        dl = {**{lab: y for lab, y in lines.items() if y not in extra.values()}, **extra}
        for lab, y in dl.items():
            limit = lab.startswith("physical limit")
            ax.axhline(y, ls="-" if limit else "--", lw=1.4 if limit else 0.8,
                       color="#2ca02c" if limit else "#444")
            ax.text(max(len(groups), 1) - 0.5, y, lab, fontsize=7, ha="right", va="bottom",
                    color="#2ca02c" if limit else "#222")
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{wl}\n{ph}" for wl, ph in groups])
        ax.set_title(DEVICE_LABEL.get(d, d), fontsize=9)
        ax.set_ylim(top=max(ax.get_ylim()[1], 1.3 * max(dl.values(), default=1.0)))
        ax.legend(fontsize=7, loc="upper left", ncol=3)
    if not drawn:
        plt.close(fig)
        return None
    axes[0][0].set_ylabel(ylabel)
    fig.suptitle(title, fontsize=10)
    return _save(fig, out, name, results)


def fig_simple_bars(results: dict[str, Any], out: Path, name: str, title: str, ylabel: str,
                    items: list[tuple[str, dict[str, Any]]], lines: dict[str, float]) -> str | None:
    items = [(lab, r) for lab, r in items if r]
    if not items:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ys = [r["value"] for _, r in items]
    errs = [_err(r) for _, r in items]
    ax.bar(range(len(items)), ys, yerr=[[e[0] for e in errs], [e[1] for e in errs]], capsize=3,
           color="#1f77b4")
    for i, y in enumerate(ys):
        ax.text(i, y, f"{y:.3g}", ha="center", va="bottom", fontsize=7)
    for lab, y in lines.items():
        ax.axhline(y, ls="--", lw=0.8, color="#444")
        ax.text(len(items) - 0.5, y, lab, fontsize=7, ha="right", va="bottom")
    ax.set_xticks(range(len(items)))
    ax.set_xticklabels([lab for lab, _ in items], fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, out, name, results)


def fig_start(results: dict[str, Any], out: Path) -> str | None:
    runs = results["runs"]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    any_ = False
    for exp, lab, mk in (("filesize", "raw origin (unmounted)", "o"),
                         ("start", "mounted ext4 origin (freeze + thaw)", "s")):
        sizes = sorted({r["file_size"] for r in runs if r["experiment"] == exp})
        for s in sizes:
            v = an.values(runs, {"experiment": exp, "file_size": s}, "start_latency_us")
            if v:
                any_ = True
                ax.scatter([s * 512 / 2**20] * len(v), [x / 1000 for x in v], marker=mk,
                           color=COLORS["cblb"] if exp == "filesize" else "#2ca02c",
                           label=lab if s == sizes[0] else None, alpha=0.7)
    if not any_:
        plt.close(fig)
        return None
    ax.axhline(100, ls="--", lw=0.8, color="#444")
    ax.text(ax.get_xlim()[1], 100, "target 100 ms", fontsize=7, ha="right", va="bottom")
    ax.set_xscale("log")
    ax.set_xlabel("temp-file size (MiB, log scale)")
    ax.set_ylabel("start latency (ms)")
    ax.set_title("`start` latency (sysfs start_latency_us) vs temp-file size")
    ax.legend(fontsize=8, loc="upper right")
    return _save(fig, out, "start_latency.png", results)


def fig_growth(results: dict[str, Any], out: Path) -> str | None:
    runs = [r for r in results["runs"] if r["experiment"] == "filesize" and r["rep"] == 0]
    if not runs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for r in runs:
        g = r["info"].get("growth") or []
        if g:
            ax.step([x[2] / 2**20 for x in g], [x[1] for x in g], where="post",
                    label=f"{r['file_size'] * 512 / 2**20:g} MiB files")
    ax.set_xlabel("COW data copied (MiB)")
    ax.set_ylabel("temp files in use")
    ax.set_title("Temp-file count as copy-on-write data grows (first-touch 4 KiB random)")
    ax.legend(fontsize=8, loc="upper right")
    return _save(fig, out, "file_growth.png", results)


def fig_latlog(results: dict[str, Any], out: Path) -> str | None:
    devs = _devices(results, "compare") or ["ram"]
    plt = _plt()
    fig, axes = plt.subplots(len(devs), 2, figsize=(10, 3.2 * len(devs)), sharey=True,
                             squeeze=False)
    any_ = False
    for row, d in zip(axes, devs):
        for ax, ph in zip(row, ("first", "rewrite")):
            for r in results["runs"]:
                if (r["experiment"] == "compare" and r["workload"] == "rand4k"
                        and r.get("device", "ram") == d and r["phase"] in (ph, "base")
                        and r["rep"] == 0 and not r["warmup"] and r["info"].get("lat_log")):
                    rows = read_lat_log(r["info"]["lat_log"])
                    if rows:
                        any_ = True
                        ax.plot([x[0] for x in rows], [x[1] for x in rows], lw=0.9,
                                color=COLORS.get(r["target"]), label=TARGET_LABEL[r["target"]])
            ax.set_title(f"{d}: rand4k {ph} pass, mean latency per 100 ms", fontsize=9)
            ax.set_xlabel("seconds")
            ax.set_yscale("log")
            if ax.get_lines():
                ax.legend(fontsize=7, loc="upper right")
        row[0].set_ylabel("latency (us, log)")
    if not any_:
        plt.close(fig)
        return None
    return _save(fig, out, "latency_over_time.png", results)


# ---- HTML (templates/report.html, Jinja with autoescaping) ------------------------------
def _f(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _bar(label: str, values: list[float]) -> tuple[str, dict[str, float]]:
    """One bar of fig_simple_bars: the median of values, with their min..max."""
    st = an.stats(values)
    return label, {"value": st["median"], "lo": st["min"], "hi": st["max"]}


def _ratio_rows(ratios: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [r for r in ratios if r["name"].startswith(prefix)]


def _summary_rows(summ: list[dict[str, Any]], experiment: str,
                  metrics: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{**s, "select": ", ".join(f"{k}={v}" for k, v in s["select"].items()
                                       if k != "experiment")}
            for s in summ if s["select"].get("experiment") == experiment
            and s["metric"] in metrics]


UNIT_SUFFIX = {"x": "x", "ms": " ms", "B": " B", "MiB": " MiB"}


def _fmt_target(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "frac":
        return f"{v * 100:.1f}%"
    return f"{v:.3g}" + UNIT_SUFFIX[unit]


def _targets(targets: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """(device columns, one row per target with a cell per device: value, min..max over
    the repetitions, met or missed)."""
    devs: list[str] = []
    rows: dict[str, dict[str, Any]] = {}
    for t in targets:
        d = t.get("device", "ram")
        if d not in devs:
            devs.append(d)
        unit = t["unit"]
        goal = (f"{t['op']} {t['threshold'] * 100:g}%" if unit == "frac"
                else f"{t['op']} {t['threshold']:g}" + UNIT_SUFFIX[unit])
        row = rows.setdefault(t["name"], {"target": t["target"], "goal": goal,
                                          "peer": t["peer"], "cells": {}, "notes": []})
        spread = ""
        if t.get("lo") is not None and t.get("hi") is not None and t.get("n", 0) > 1:
            spread = f"{_fmt_target(t['lo'], unit)}..{_fmt_target(t['hi'], unit)}"
        row["cells"][d] = {"value": _fmt_target(t["value"], unit), "spread": spread,
                           "n": t.get("n", 0), "met": t["met"], "every_rep": t.get("every_rep")}
        if t.get("note") and t["note"] not in row["notes"]:
            row["notes"].append(t["note"])
    order = [d for d in an.DEVICES if d in devs] + [d for d in devs if d not in an.DEVICES]
    return order, list(rows.values())


def _cost(r: dict[str, Any]) -> dict[str, Any]:
    """A throughput ratio as the percentage lost (1 - ratio), with its min..max."""
    lo, hi = an.spread(r)
    return {"value": (1 - r["value"]) * 100, "lo": None if hi is None else (1 - hi) * 100,
            "hi": None if lo is None else (1 - lo) * 100}


def cbt_line(results: dict[str, Any]) -> str:
    """The report's line on changed-block tracking: kernel memory per TiB and of the
    bench's own origins, and how the cost was measured."""
    c = results.get("cbt") or an.cbt_summary(results["runs"])
    parts = []
    per_tib, bs = c.get("memory_per_tib_bytes"), c.get("block_size_per_tib")
    if per_tib is not None:
        parts.append(f"Kernel memory of changed-block tracking: {per_tib / 2**20:.3g} MiB per "
                     f"TiB of origin (both maps, {(bs or 0) / 1024:g} KiB per bit; read from "
                     f"the tracking of a sparse 1 TiB loop device; target <= "
                     f"{an.CBT_MEMORY_MIB:g} MiB).")
    else:
        parts.append("Kernel memory of changed-block tracking per TiB: not measured in this "
                     "run.")
    for dev, o in (c.get("origins") or {}).items():
        parts.append(f"The bench's {dev} origin ({o['size_bytes'] / 2**20:g} MiB): "
                     f"{o['memory_bytes'] / 1024:g} KiB, {o['block_size'] / 1024:g} KiB "
                     "per bit.")
    parts.append("Cost: each tracked run (the origin tracked, no snapshot) sits next to the "
                 "no-snapshot run of the same repetition and workload (the origin untracked), "
                 "both time-based over the same region, their order alternating.")
    return " ".join(parts)


def _copy_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Proof of the copies, per device, target and workload (first passes): chunks
    expected (where the workload tells) vs chunks copied, and one dmsetup status line."""
    out = []
    keys = sorted({(r.get("device", "ram"), r["target"], r["workload"]) for r in runs
                   if r["experiment"] == "compare" and r["phase"] == "first"
                   and not r["warmup"]},
                  key=lambda k: (an.DEVICES.index(k[0]) if k[0] in an.DEVICES else 9, k[1],
                                 k[2]))
    for d, t, wl in keys:
        sel = {"experiment": "compare", "device": d, "target": t, "workload": wl,
               "phase": "first"}
        rs = [r for r in runs if not r["warmup"] and an.matches(r, sel)]
        cpb = an.values(runs, sel, "cow_per_byte")
        ok = an.values(runs, sel, "copied_all")
        rew = an.values(runs, {**sel, "phase": "rewrite"}, "chunks_copied")
        status = next((r["info"]["dm_status"]["after"] for r in rs
                       if r["info"].get("dm_status")), "")
        out.append({"device": d, "target": t, "workload": wl, "runs": len(rs),
                    "cow_per_byte": (f"{min(cpb):.3g}..{max(cpb):.3g}" if cpb else "-"),
                    "copied_all": ("-" if not ok else f"{int(sum(ok))}/{len(ok)}"),
                    "rewrite_chunks": ("-" if not rew else f"{max(rew):g}"),
                    "status": status})
    return out


def _figure(title: str, img: str | None, ratio_tables: Sequence[list[dict[str, Any]]] = (),
            summary_tables: Sequence[list[dict[str, Any]]] = (),
            note: str = "") -> dict[str, Any]:
    return {"title": title, "img": img, "note": note,
            "ratio_tables": [t for t in ratio_tables if t],
            "summary_tables": [t for t in summary_tables if t]}


def _template() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
        autoescape=True, keep_trailing_newline=True)
    env.filters["fig"] = _f
    return env.get_template("report.html")


CSS = """body{font-family:sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
.warn{background:#fff4d6;border:1px solid #e0b84c;padding:0.6em}
.env{font-size:0.8em;color:#555;font-family:monospace}
.ok{color:#197a19;font-weight:bold}.no{color:#b51d1d;font-weight:bold}
figure{margin:1em 0}img{max-width:100%}"""


def write_results(results: dict[str, Any], out: Path) -> Path:
    """Analyse the raw runs and write results.json alone (no figures, no HTML)."""
    out.mkdir(parents=True, exist_ok=True)
    an.analyse(results)
    p = out / "results.json"
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str))
    tmp.replace(p)
    return p


def render(results: dict[str, Any], out: Path) -> Path:
    """Write report.html, the figures and results.json into ``out``; return report.html."""
    write_results(results, out)
    ratios, summ, runs = results["ratios"], results["summaries"], results["runs"]
    limit = {"ssd": {f"physical limit of first writes {FIRST_WRITE_LIMIT:g}x "
                     "= seq first target": FIRST_WRITE_LIMIT}}
    figs = [_figure("Origin write throughput, ratio to no snapshot",
                    fig_compare(results, out, "write_bw", "write_throughput.png",
                                "Origin write throughput / no snapshot (median; bars: min..max "
                                "over the repetitions)", "ratio to no snapshot",
                                {"rewrite target 0.97": 0.97, "seq first target 0.5": 0.5,
                                 "rand first target 0.35": 0.35}, limit),
                    [_ratio_rows(ratios, "compare/")],
                    [_summary_rows(summ, "compare", ("write_bw", "write_iops", "write_p50_us",
                                                     "write_p99_us", "read_bw"))]),
            _figure("Origin write latency p50, ratio to no snapshot",
                    fig_compare(results, out, "write_p50_us", "latency_p50.png",
                                "Write latency p50 / no snapshot (lower is better)",
                                "ratio to no snapshot", {"1x": 1.0})),
            _figure("Origin write latency p99, ratio to no snapshot",
                    fig_compare(results, out, "write_p99_us", "latency_p99.png",
                                "Write latency p99 / no snapshot (lower is better)",
                                "ratio to no snapshot", {"first rand4k target 3x": 3.0})),
            _figure("Latency over time: first-touch vs rewrite (fio latency logs, rep 1)",
                    fig_latlog(results, out))]
    sr = _ratio_rows(ratios, "snapread/")
    figs.append(_figure("Snapshot sequential reads, ratio to origin reads",
                        fig_simple_bars(results, out, "snapshot_reads.png",
                                        "Snapshot read throughput / origin read throughput",
                                        "ratio", [(f"{r['num'].get('device', 'ram')} "
                                                   f"{r['num']['target']}\n"
                                                   f"{r['num']['frac'] * 100:g}% changed", r)
                                                  for r in sr],
                                        {"target 0.9 (10%)": 0.9, "target 0.7 (50%)": 0.7}),
                        [sr], [_summary_rows(summ, "snapread", ("read_bw",))]))
    figs.append(_figure("`start` latency", fig_start(results, out), [],
                        [_summary_rows(summ, "filesize", ("start_latency_us", "start_wall_us")),
                         _summary_rows(summ, "start", ("start_latency_us", "start_wall_us"))]))
    cowrows = []
    for d in _devices(results, "compare"):
        for wl in WORKLOADS:
            for t in ("cblb", "dm4k", "dm64k"):
                v = an.values(runs, {"experiment": "compare", "device": d, "target": t,
                                     "workload": wl, "phase": "first"}, "cow_per_byte")
                if v:
                    cowrows.append(_bar(f"{d} {wl}\n{t}", v))
    figs.append(_figure("COW bytes per byte written (first-touch pass)",
                        fig_simple_bars(results, out, "cow_per_byte.png",
                                        "Bytes copied to the COW store per byte written "
                                        "(first pass)", "COW bytes / written bytes", cowrows,
                                        {"1.0": 1.0}),
                        [], [_summary_rows(summ, "compare", ("cow_per_byte", "cow_bytes"))],
                        note="dm-snapshot figures count exception data only (metadata apart), "
                             "from dmsetup status; 64 KiB chunks copy up to 16x a random 4 KiB "
                             "write. The rewrite pass copies nothing (table below)."))
    figs.append(_figure("Temp-file count and growth", fig_growth(results, out),
                        [_ratio_rows(ratios, "filesize/")],
                        [_summary_rows(summ, "filesize", ("write_bw", "files_used", "failed")),
                         _summary_rows(summ, "maxfiles", ("files_used", "failed", "fio_ok",
                                                          "write_bw"))]))
    idx = []
    for wl in WORKLOADS:
        for metric, label in (("index_per_chunk", "index_bytes"), ("slab_per_chunk",
                                                                   "slab delta")):
            v = an.values(runs, {"experiment": "compare", "target": "cblb", "workload": wl,
                                 "phase": "first"}, metric)
            if v:
                idx.append(_bar(f"{wl}\n{label}", v))
    figs.append(_figure("Kernel memory of the index per copied chunk",
                        fig_simple_bars(results, out, "index_memory.png",
                                        "Index memory per copied 4 KiB chunk (bytes)",
                                        "bytes / chunk", idx, {"target 8 B": 8.0}),
                        [], [_summary_rows(summ, "compare", ("index_per_chunk",
                                                             "slab_per_chunk"))],
                        note="index_bytes is the module's own estimate (sysfs); 'slab delta' "
                             "is the growth of the radix_tree_node slab cache over the run "
                             "(/proc/slabinfo), a noisy cross-check: other xarray users share "
                             "that cache."))
    tot = _ratio_rows(ratios, "totals/")
    figs.append(_figure("total=N sweep", fig_simple_bars(
        results, out, "totals.png", "First-touch 4 KiB random write throughput vs total=N "
        "(ratio to the smallest N, one snapshot)", "ratio",
        [(f"N={r['num']['total']}\n{r['num']['variant']}", r) for r in tot],
        {"target 0.97": 0.97}), [tot], [_summary_rows(summ, "totals", ("write_bw",))]))
    tr = [r for r in ratios if r["name"].startswith(("tracer/", "catorigin/"))]
    figs.append(_figure("Module write-hook cost and catalog placement", fig_simple_bars(
        results, out, "tracer_catalog.png", "Write-hook cost (module loaded, snapshot "
        "elsewhere; bars: min..max of the pairs) and catalog on the origin filesystem",
        "ratio to baseline",
        [(r["name"].replace("/", "\n", 1), r) for r in tr], {"0.98": 0.98}),
        [_ratio_rows(ratios, "tracer/"), _ratio_rows(ratios, "catorigin/")],
        [_summary_rows(summ, "tracer", ("write_bw",)),
         _summary_rows(summ, "catorigin", ("write_bw",))]))
    cat = _ratio_rows(ratios, "catstream/")
    if cat:
        figs.append(_figure("cblb cat: whole-device reads against dd of the origin", None,
                            [cat], [_summary_rows(summ, "catstream", ("read_bw",))],
                            note="cat: cblb cat of an unchanged snapshot to /dev/null; "
                            "cat_pipe: through a pipe into dd; dd_snapshot: dd of the "
                            "snapshot device; each a ratio to dd of the origin (4 MiB "
                            "O_DIRECT reads) in the same repetition."))
    cbt = [r for r in ratios if r["name"].startswith("cbt/") and r["metric"] == "write_bw"]
    figs.append(_figure("Changed-block tracking: cost on origin writes and kernel memory",
                        fig_simple_bars(results, out, "cbt_cost.png",
                                        "Write throughput lost to changed-block tracking "
                                        "(%; bars: min..max over the repetitions)",
                                        "throughput lost (%)",
                                        [(f"{r['num']['device']} {r['num']['workload']}",
                                          _cost(r)) for r in cbt],
                                        {"target 1%": 1.0}),
                        [_ratio_rows(ratios, "cbt/")],
                        [_summary_rows(summ, "cbt", ("write_bw", "write_iops", "write_p99_us",
                                                     "memory_bytes", "block_size",
                                                     "changed_blocks",
                                                     "cbt_memory_per_tib_bytes"))],
                        note=cbt_line(results)))
    ver = [r for r in runs if r["experiment"] == "verify"]
    verify = ({**ver[0]["metrics"], "engine": ver[0]["info"]["engine"]} if ver else None)
    tdevs, trows = _targets(results["targets"])
    page = _template().render(
        m=results["meta"], css=CSS, env=env_line(results), noise=noise_line(results),
        recommendation=results["recommendation"]["text"], targets=trows,
        target_devices=[(d, DEVICE_LABEL.get(d, d)) for d in tdevs],
        overwrite_label=OVERWRITE_LABEL, figures=figs, verify=verify,
        copies=_copy_rows(runs), short=an.short_runs(results),
        limit=FIRST_WRITE_LIMIT)
    p = out / "report.html"
    p.write_text(page)
    return p


def render_from_json(path: Path, out: Path | None = None) -> Path:
    results = json.loads(Path(path).read_text())
    return render(results, out or Path(path).parent)


