"""results.json -> report.html with PNG figures (matplotlib, Agg backend).

Every figure carries the kernel, CPU and command line it was measured with, in the PNG's
footer and in its HTML caption. Ratios lead; raw figures follow in tables with
min / median / max and the coefficient of variation.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from . import analysis as an
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
    v = r["value"]
    lo = r["lo"] if r["lo"] is not None else v
    hi = r["hi"] if r["hi"] is not None else v
    return max(0.0, v - lo), max(0.0, hi - v)


def fig_compare(results: dict[str, Any], out: Path, metric: str, name: str, title: str,
                ylabel: str, lines: dict[str, float]) -> str | None:
    R = an.by_name(results["ratios"])
    targets = [t for t in ("cblb", "dm4k", "dm64k")
               if any(k.split("/")[3] == t for k in R if k.startswith("compare/"))]
    groups = [(wl, ph) for wl in WORKLOADS for ph in ("first", "rewrite")
              if any(f"compare/{wl}/{ph}/{t}/{metric}" in R for t in targets)]
    if not groups:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4))
    w = 0.8 / max(1, len(targets))
    for i, t in enumerate(targets):
        xs, ys, el, eh = [], [], [], []
        for g, (wl, ph) in enumerate(groups):
            r = R.get(f"compare/{wl}/{ph}/{t}/{metric}")
            if r:
                xs.append(g + i * w - 0.4 + w / 2)
                ys.append(r["value"])
                lo, hi = _err(r)
                el.append(lo)
                eh.append(hi)
        ax.bar(xs, ys, w, yerr=[el, eh], capsize=3, label=TARGET_LABEL[t], color=COLORS[t])
        for x, y in zip(xs, ys):
            ax.text(x, y, f"{y:.2f}", ha="center", va="bottom", fontsize=7)
    for lab, y in lines.items():
        ax.axhline(y, ls="--", lw=0.8, color="#444")
        ax.text(len(groups) - 0.5, y, lab, fontsize=7, ha="right", va="bottom")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{wl}\n{ph}" for wl, ph in groups])
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper right")
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
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
    any_ = False
    for ax, ph in zip(axes, ("first", "rewrite")):
        for r in results["runs"]:
            if (r["experiment"] == "compare" and r["workload"] == "rand4k" and r["phase"] == ph
                    and r["rep"] == 0 and not r["warmup"] and r["info"].get("lat_log")):
                rows = read_lat_log(r["info"]["lat_log"])
                if rows:
                    any_ = True
                    ax.plot([x[0] for x in rows], [x[1] for x in rows], lw=0.9,
                            color=COLORS.get(r["target"]), label=TARGET_LABEL[r["target"]])
        ax.set_title(f"rand4k {ph} pass: mean latency per 100 ms")
        ax.set_xlabel("seconds")
        ax.set_yscale("log")
        if ax.get_lines():
            ax.legend(fontsize=7, loc="upper right")
    axes[0].set_ylabel("latency (us, log)")
    if not any_:
        plt.close(fig)
        return None
    return _save(fig, out, "latency_over_time.png", results)


# ---- HTML ---------------------------------------------------------------------------
def _f(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if unit == "MB/s":
            return f"{v / 1e6:.1f}"
        return f"{v:.3g}"
    return html.escape(str(v))


def _ratio_table(ratios: list[dict[str, Any]], prefix: str) -> str:
    rows = [r for r in ratios if r["name"].startswith(prefix)]
    if not rows:
        return ""
    out = ["<table><tr><th>ratio</th><th>value (median/median)</th><th>spread lo..hi</th>"
           "<th>numerator median</th><th>denominator median</th><th>n</th></tr>"]
    for r in rows:
        out.append(f"<tr><td>{html.escape(r['name'])}</td><td><b>{r['value']:.3f}</b></td>"
                   f"<td>{_f(r['lo'])}..{_f(r['hi'])}</td><td>{r['num_median']:.4g}</td>"
                   f"<td>{r['den_median']:.4g}</td><td>{r['num_n']}/{r['den_n']}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _summary_table(summ: list[dict[str, Any]], experiment: str, metrics: tuple[str, ...]) -> str:
    rows = [s for s in summ if s["select"].get("experiment") == experiment
            and s["metric"] in metrics]
    if not rows:
        return ""
    out = ["<details><summary>raw figures: min / median / max, coefficient of variation"
           "</summary><table><tr><th>run</th><th>metric</th><th>n</th><th>min</th>"
           "<th>median</th><th>max</th><th>CV</th></tr>"]
    for s in rows:
        sel = ", ".join(f"{k}={v}" for k, v in s["select"].items() if k != "experiment")
        cv = f"{s['cv'] * 100:.1f}%" if s["cv"] is not None else "-"
        out.append(f"<tr><td>{html.escape(sel)}</td><td>{s['metric']}</td><td>{s['n']}</td>"
                   f"<td>{s['min']:.4g}</td><td>{s['median']:.4g}</td><td>{s['max']:.4g}</td>"
                   f"<td>{cv}</td></tr>")
    out.append("</table></details>")
    return "\n".join(out)


def _target_table(targets: list[dict[str, Any]]) -> str:
    out = ["<table><tr><th>target</th><th>measured</th><th>goal</th><th>met?</th>"
           "<th>published peer figure</th></tr>"]
    for t in targets:
        unit = {"x": "x", "ms": " ms", "B": " B", "frac": ""}[t["unit"]]
        val = "-" if t["value"] is None else (
            f"{t['value'] * 100:.1f}%" if t["unit"] == "frac" else f"{t['value']:.3g}{unit}")
        goal = (f"{t['op']} {t['threshold'] * 100:g}%" if t["unit"] == "frac"
                else f"{t['op']} {t['threshold']:g}{unit}")
        met = {True: "<span class=ok>yes</span>", False: "<span class=no>no</span>",
               None: "not measured"}[t["met"]]
        out.append(f"<tr><td>{html.escape(t['target'])}</td><td><b>{val}</b></td>"
                   f"<td>{goal}</td><td>{met}</td><td>{html.escape(t['peer'])}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


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
    R = an.by_name(results["ratios"])
    env = html.escape(env_line(results))
    m = results["meta"]
    figs: list[tuple[str, str | None, str]] = []
    figs.append(("Origin write throughput, ratio to no snapshot",
                 fig_compare(results, out, "write_bw", "write_throughput.png",
                             "Origin write throughput / no snapshot (median; bars: min..max)",
                             "ratio to no snapshot",
                             {"rewrite target 0.95": 0.95, "seq first target 0.5": 0.5,
                              "rand first target 0.33": 0.33}),
                 _ratio_table(results["ratios"], "compare/") and
                 _summary_table(results["summaries"], "compare",
                                ("write_bw", "write_iops", "write_p50_us", "write_p99_us",
                                 "read_bw"))))
    figs.append(("Origin write latency p50, ratio to no snapshot",
                 fig_compare(results, out, "write_p50_us", "latency_p50.png",
                             "Write latency p50 / no snapshot (lower is better)",
                             "ratio to no snapshot", {"1x": 1.0}), ""))
    figs.append(("Origin write latency p99, ratio to no snapshot",
                 fig_compare(results, out, "write_p99_us", "latency_p99.png",
                             "Write latency p99 / no snapshot (lower is better)",
                             "ratio to no snapshot", {"first rand4k target 4x": 4.0}), ""))
    figs.append(("Latency over time: first-touch vs rewrite (fio latency logs, rep 1)",
                 fig_latlog(results, out), ""))
    sr = [r for r in results["ratios"] if r["name"].startswith("snapread/")]
    figs.append(("Snapshot sequential reads, ratio to origin reads",
                 fig_simple_bars(results, out, "snapshot_reads.png",
                                 "Snapshot read throughput / origin read throughput",
                                 "ratio", [(f"{r['num']['target']}\n{r['num']['frac'] * 100:g}% "
                                            "changed", r) for r in sr],
                                 {"target 0.9 (10%)": 0.9, "target 0.7 (50%)": 0.7}),
                 _ratio_table(results["ratios"], "snapread/") +
                 _summary_table(results["summaries"], "snapread", ("read_bw",))))
    figs.append(("`start` latency", fig_start(results, out),
                 _summary_table(results["summaries"], "filesize", ("start_latency_us",
                                                                   "start_wall_us")) +
                 _summary_table(results["summaries"], "start", ("start_latency_us",
                                                                "start_wall_us"))))
    cowrows = []
    for wl in WORKLOADS:
        for t in ("cblb", "dm4k", "dm64k"):
            v = an.values(results["runs"], {"experiment": "compare", "target": t, "workload": wl,
                                            "phase": "first"}, "cow_per_byte")
            if v:
                st = an.stats(v)
                cowrows.append((f"{wl}\n{t}", {"value": st["median"], "lo": st["min"],
                                               "hi": st["max"]}))
    figs.append(("COW bytes per byte written (first-touch pass)",
                 fig_simple_bars(results, out, "cow_per_byte.png",
                                 "Bytes copied to the COW store per byte written (first pass)",
                                 "COW bytes / written bytes", cowrows, {"1.0": 1.0}),
                 "<p>dm-snapshot figures count exception data only (metadata apart). The "
                 "rewrite pass copies nothing for either (see raw figures).</p>" +
                 _summary_table(results["summaries"], "compare", ("cow_per_byte", "cow_bytes"))))
    figs.append(("Temp-file count and growth", fig_growth(results, out),
                 _summary_table(results["summaries"], "filesize", ("write_bw", "files_used",
                                                                   "failed")) +
                 _ratio_table(results["ratios"], "filesize/") +
                 _summary_table(results["summaries"], "maxfiles", ("files_used", "failed",
                                                                   "fio_ok", "write_bw"))))
    idx = []
    for wl in WORKLOADS:
        v = an.values(results["runs"], {"experiment": "compare", "target": "cblb",
                                        "workload": wl, "phase": "first"}, "index_per_chunk")
        if v:
            st = an.stats(v)
            idx.append((f"{wl}\nindex_bytes", {"value": st["median"], "lo": st["min"],
                                               "hi": st["max"]}))
        v = an.values(results["runs"], {"experiment": "compare", "target": "cblb",
                                        "workload": wl, "phase": "first"}, "slab_per_chunk")
        if v:
            st = an.stats(v)
            idx.append((f"{wl}\nslab delta", {"value": st["median"], "lo": st["min"],
                                              "hi": st["max"]}))
    figs.append(("Kernel memory of the index per copied chunk",
                 fig_simple_bars(results, out, "index_memory.png",
                                 "Index memory per copied 4 KiB chunk (bytes)", "bytes / chunk",
                                 idx, {"target 8 B": 8.0}),
                 "<p>index_bytes is the module's own estimate (sysfs); 'slab delta' is the "
                 "growth of the radix_tree_node slab cache over the run (/proc/slabinfo), a "
                 "noisy cross-check: other xarray users share that cache.</p>" +
                 _summary_table(results["summaries"], "compare", ("index_per_chunk",
                                                                  "slab_per_chunk"))))
    tot = [r for r in results["ratios"] if r["name"].startswith("totals/")]
    figs.append(("total=N sweep", fig_simple_bars(
        results, out, "totals.png", "First-touch 4 KiB random write throughput vs total=N "
        "(ratio to the smallest N, one snapshot)", "ratio",
        [(f"N={r['num']['total']}\n{r['num']['variant']}", r) for r in tot],
        {"target 0.97": 0.97}),
        _ratio_table(results["ratios"], "totals/") +
        _summary_table(results["summaries"], "totals", ("write_bw",))))
    tr = [r for r in results["ratios"] if r["name"].startswith(("tracer/", "catorigin/"))]
    figs.append(("Tracer cost and catalog placement", fig_simple_bars(
        results, out, "tracer_catalog.png", "Tracer cost (module loaded, snapshot elsewhere) "
        "and catalog on the origin filesystem", "ratio to baseline",
        [(r["name"].replace("/", "\n", 1), r) for r in tr], {"0.98": 0.98}),
        _ratio_table(results["ratios"], "tracer/") + _ratio_table(results["ratios"], "catorigin/")
        + _summary_table(results["summaries"], "tracer", ("write_bw",))
        + _summary_table(results["summaries"], "catorigin", ("write_bw",))))
    ver = [r for r in results["runs"] if r["experiment"] == "verify"]
    vhtml = "<p>skipped: no hashing engine available (see notes).</p>"
    if ver:
        v = ver[0]
        vhtml = (f"<p>Hashing the snapshot device: <b>{v['metrics']['hash_bw'] / 1e6:.1f} MB/s"
                 f"</b> with {html.escape(v['info']['engine'])}; reading the same device with "
                 f"fio: {v['metrics']['read_bw'] / 1e6:.1f} MB/s (ratio "
                 f"{v['metrics']['hash_bw'] / v['metrics']['read_bw']:.2f}).</p>"
                 if v["metrics"].get("read_bw") else "")

    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>cblb benchmark "
             f"({html.escape(m['mode'])})</title><style>{CSS}</style></head><body>",
             f"<h1>cblb benchmark: {html.escape(m['mode'])} mode</h1>",
             f"<p class=env>{env}</p>",
             "<div class=warn><b>Read ratios, not absolute numbers.</b> "
             + ("This run used an emulated CPU (QEMU TCG, no KVM): absolute throughput and "
                "latency are 5-20x off real hardware and vary with the host's load. "
                if m["machine"].get("emulated") else "")
             + f"Storage: {html.escape(m['storage'])}. Every ratio compares targets measured "
             f"in the same run on the same device, repetitions interleaved. "
             f"{html.escape(noise_line(results))}</div>",
             "<h2>Recommendation</h2><ul>"
             + "".join(f"<li>{html.escape(t)}</li>" for t in results["recommendation"]["text"])
             + "</ul>",
             "<h2>Targets beside the measurements</h2>",
             f"<p class=env>{env}</p>", _target_table(results["targets"]),
             "<p>First-touch = the first write to each block after the snapshot (forces a "
             "copy); rewrite = the same blocks written again (already copied). "
             f"'{html.escape(OVERWRITE_LABEL)}' is the rand4k rewrite pass.</p>"]
    for title, img, extra in figs:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if img:
            parts.append(f"<figure><img src='{img}' alt='{html.escape(title)}'>"
                         f"<figcaption class=env>{env}</figcaption></figure>")
        else:
            parts.append("<p>not measured in this run.</p>")
        parts.append(extra or "")
    parts.append("<h2>Verification throughput</h2>" + vhtml + f"<p class=env>{env}</p>")
    parts.append("<h2>Method</h2><ul>"
                 f"<li>mode {html.escape(m['mode'])}, started {m.get('started')}, "
                 f"{m.get('duration_s', '?')} s; fio {html.escape(m.get('fio_version', ''))}; "
                 f"cblb {html.escape(m.get('cblb_version', ''))}</li>"
                 f"<li>kernel command line: <span class=env>"
                 f"{html.escape(m['kernel'].get('cmdline', ''))}</span></li>"
                 "<li>fio: direct=1, libaio, randrepeat=1, fixed seed; the first pass covers "
                 "the region once (capped in time for slow targets); the rewrite pass replays "
                 "exactly the bytes of the first pass (io_size).</li>"
                 "<li>Warm-up runs (quarter-size, every target and workload) are recorded "
                 "with warmup=true and left out of every figure.</li>"
                 "<li>dm-snapshot: snapshot-origin + snapshot target, persistent store, as LVM "
                 "sets it up.</li></ul>")
    if m.get("notes"):
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>"
                                                    for n in m["notes"]) + "</ul>")
    parts.append("<p><a href='results.json'>results.json</a> holds every raw figure.</p>"
                 "</body></html>")
    p = out / "report.html"
    p.write_text("\n".join(parts))
    return p


def render_from_json(path: Path, out: Path | None = None) -> Path:
    results = json.loads(Path(path).read_text())
    return render(results, out or Path(path).parent)


