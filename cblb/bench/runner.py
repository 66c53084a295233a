"""The benchmark plan: the experiments' steps, run one at a time with progress and ETA.

Every raw figure lands in ``results["runs"]`` as one flat record::

    {"experiment": "compare", "target": "cblb", "workload": "rand4k", "phase": "first",
     "rep": 0, "warmup": false, "metrics": {"write_bw": ..., "write_p99_us": ...},
     "info": {"fio_args": [...], ...}}

plus experiment parameters as top-level keys (``device``, ``frac``, ``total``, ``variant``,
``file_size``, ``max_files``). :mod:`.analysis` turns them into summaries and ratios.
The comparison, changed-block tracking's cost and the snapshot reads run on each device set
of :mod:`.devices` in turn (``ssd``, then ``ram``); the sweeps on ``ram``. Repetitions are
interleaved (rep 0 of every target, then rep 1, ...) and the target order rotates, so drift
of a shared, busy machine spreads over all targets alike. Every measured run lasts
``runtime`` seconds or moves 512 MiB (see :mod:`.workloads`). Changed-block tracking
(experiment ``cbt``) pairs a run with the origin tracked with the no-snapshot run of the
same repetition (``cbt_paired``), and reads the kernel memory of a tracked 1 TiB origin.

This module holds the plan and the loop only, over the rest of the bench: the experiments
(:mod:`.experiments`, one module each), the rig they stand on (:mod:`.rig`: the module,
the device sets, the targets), the probes of the machine (:mod:`.probes`) and the modes
(:mod:`.modes`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..control import Controller
from ..errors import CblbError
from . import SCHEMA_VERSION
from . import devices as dv
from .experiments import (
    catorigin,
    catstream,
    cbt,
    compare,
    filesize,
    maxfiles,
    snapread,
    start,
    totals,
    tracer,
)
from .modes import MIN_BYTES, ModeConfig
from .probes import cpu_calibration, kernel_info, machine_info
from .rig import Rig
from .workloads import WORKLOADS, MiB, fio_version


def fmt_s(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 60:02d}:{s % 60:02d}"


@dataclass
class Step:
    label: str
    weight: float
    fn: Callable[[], None]
    device: str = ""      # the device set it needs ("" for none)


class Progress:
    """One line per step: elapsed time, ETA (weighted by the steps' expected cost)."""

    def __init__(self, steps: list[Step], stream: Any = None) -> None:
        self.total_w = sum(s.weight for s in steps) or 1.0
        self.n = len(steps)
        self.done_w = 0.0
        self.t0 = time.monotonic()
        self.stream = stream or sys.stdout

    def line(self, i: int, step: Step) -> None:
        el = time.monotonic() - self.t0
        eta = "--:--" if self.done_w <= 0 else fmt_s(el / self.done_w * (self.total_w - self.done_w))
        print(f"[bench {i + 1:3d}/{self.n}] {fmt_s(el)} elapsed, ETA {eta}  {step.label}",
              file=self.stream, flush=True)


class Runner:
    """One ``cblb bench`` run: the results' ``meta`` (the probes), the plan of steps over
    the rig (:attr:`rig`), run one by one; a step that fails is a note, not the end."""

    def __init__(self, mode: ModeConfig, out: Path, ctl: Controller | None = None,
                 argv: list[str] | None = None, kernel_note: str = "",
                 stream: Any = None) -> None:
        self.mode = mode
        self.out = out
        self.ctl = ctl or Controller()
        self.stream = stream or sys.stdout
        self.logs = out / "logs"
        self.results: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "meta": {
                "command_line": " ".join(shlex.quote(a) for a in (argv or sys.argv)),
                "mode": mode.name,
                "kernel": kernel_info(kernel_note),
                "machine": machine_info(),
                "cblb_version": __version__,
                "fio_version": fio_version(),
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "storage": "; ".join(f"{k}: {dv.DEVICE_LABEL[k]}" for k in mode.devices),
                "devices": {},
                "min_runtime_s": mode.runtime,
                "min_bytes": MIN_BYTES,
                "notes": [],
            },
            "config": {k: v for k, v in mode.__dict__.items()},
            "runs": [],
        }
        self.rig = Rig(mode, self.ctl, self.results, self.logs, self.stream)

    # ---- the plan -------------------------------------------------------------------
    def plan(self) -> list[Step]:
        """The steps, each weighted by its expected seconds under emulation (for the ETA).
        The ram set goes last: its sweeps are the least needed if a run runs out of time."""
        m, rig = self.mode, self.rig
        steps: list[Step] = []
        run = m.runtime + 3.5                 # one fio run, its start-up and bookkeeping
        open_w = {"none": 0.0, "cblb": 5.0, "dm4k": 7.0, "dm64k": 7.0}
        wls = [WORKLOADS[n] for n in m.workloads]

        def add(label: str, w: float, fn: Callable[[], None], kind: str = "") -> None:
            steps.append(Step(label, w, fn, kind))

        add("changed-block tracking: kernel memory of a 1 TiB origin (sparse loop device)", 5,
            partial(cbt.cbt_memory, rig))
        kinds = sorted(m.devices, key=lambda k: k == "ram")
        for kind in kinds:
            add(f"[{kind}] set up the {dv.DEVICE_LABEL[kind]} devices", 12,
                partial(rig.open_set, kind), kind)
            if m.warmup:
                # One short first pass per target (1 s, random writes: the most code paths).
                for t in m.warmup_targets:
                    add(f"[{kind}] warm-up {t}", 4.5 + open_w[t],
                        partial(compare.compare_one, rig, t, wls[-1], -1, True), kind)
            for rep in range(m.reps):
                order = list(m.targets[rep % len(m.targets):] + m.targets[:rep % len(m.targets)])
                for t in order:
                    passes = 1 if t == "none" else 1 if t.startswith("dm") and \
                        not m.dm_rewrite else 2
                    what = {1: "time-based" if t == "none" else "first pass",
                            2: "first + rewrite"}[passes]
                    for wl in wls:
                        if (t, wl.name) in m.skip:
                            continue
                        pair = t == "none" and rep < m.cbt_reps and wl.name in m.cbt_workloads
                        tracked = (f"[{kind}] changed-block tracking rep {rep + 1}/"
                                   f"{min(m.reps, m.cbt_reps)}: origin tracked, {wl.name} "
                                   "(time-based)", run + 1, partial(cbt.cbt_one, rig, wl, rep),
                                   kind)
                        if pair and rep % 2:
                            add(*tracked)
                        fill = 6.0 if passes == 2 and wl.rw != "write" else 0.0
                        add(f"[{kind}] compare rep {rep + 1}/{m.reps} {t:5s} {wl.name} ({what})",
                            passes * run + open_w[t] + fill,
                            partial(compare.compare_one, rig, t, wl, rep, False, pair), kind)
                        if pair and not rep % 2:
                            add(*tracked)
            for frac in m.fracs:
                for rep in range(m.snapread_reps):
                    for t in m.snapread_targets:
                        add(f"[{kind}] snapshot reads {t} {int(frac * 100)}% changed "
                            f"rep {rep + 1}", 2 * run + open_w[t] + 4 + 10 * frac,
                            partial(snapread.snapread_one, rig, t, frac, rep), kind)
            for rep in range(m.catstream_reps):
                add(f"[{kind}] cblb cat vs dd of the origin rep {rep + 1}/{m.catstream_reps}",
                    4 * run, partial(catstream.catstream_one, rig, rep), kind)
            if kind == "ram":
                self.plan_ram_sweeps(add, run)
            add(f"[{kind}] tear down", 4, rig.close_set, kind)
        return steps

    def plan_ram_sweeps(self, add: Callable[..., None], run: float) -> None:
        m, rig = self.mode, self.rig
        for pair in range(m.tracer_pairs):
            for variant in ("unloaded", "loaded") if pair % 2 == 0 else ("loaded", "unloaded"):
                add(f"[ram] module write hook cost: module {variant} pair {pair + 1}/"
                    f"{m.tracer_pairs}", run + 5, partial(tracer.tracer_one, rig, variant, pair), "ram")
        for rep in range(m.sweep_reps):
            for total in m.totals:
                for variant in ("one", "several") if m.totals_several else ("one",):
                    if variant == "several" and total < 2:
                        continue
                    add(f"[ram] total={total} {variant} snapshot(s) rep {rep + 1}", run + 8,
                        partial(totals.totals_one, rig, total, variant, rep), "ram")
        add("[ram] reload total=4", 5, lambda: rig.reload(4), "ram")
        for rep in range(m.sweep_reps):
            for fsz in m.file_sizes:
                add(f"[ram] file size {fsz} blocks ({fsz * 512 // MiB or fsz * 512 // 1024} "
                    f"{'MiB' if fsz * 512 >= MiB else 'KiB'}) rep {rep + 1}", run + 5,
                    partial(filesize.filesize_one, rig, fsz, rep), "ram")
        for mf in m.max_files:
            add(f"[ram] max files {mf} (1 MiB files)", run + 5,
                partial(maxfiles.maxfiles_one, rig, mf), "ram")
        add("[ram] mounted origin: start latency per file size"
            + (", catalog on origin" if m.catalog_on_origin else ""),
            10 + 5 * len(m.file_sizes) * m.sweep_reps + (6 * run * m.sweep_reps
                                                    if m.catalog_on_origin else 0),
            self.mounted_suite, "ram")

    def mounted_suite(self) -> None:
        """Start latency per file size, and the catalog on the origin, on one mounted ext4
        origin (:meth:`Rig.mounted_origin`)."""
        m, rig = self.mode, self.rig
        with rig.mounted_origin() as (fs, mnt):
            for rep in range(m.sweep_reps):
                for fsz in m.file_sizes:
                    start.start_mounted_one(rig, fsz, rep, fs, mnt)
            if m.catalog_on_origin:
                for rep in range(m.sweep_reps):
                    for t in ("none", "cblb", "cblb-catalog-on-origin"):
                        catorigin.catorigin_one(rig, t, rep, fs, mnt)

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        print(f"[bench] mode {self.mode.name}; kernel {os.uname().release}; "
              f"cpu {self.results['meta']['machine']['cpu']}; "
              f"command: {self.results['meta']['command_line']}", file=self.stream, flush=True)
        self.rig.setup()
        steps = self.plan()
        prog = Progress(steps, self.stream)
        try:
            for i, st in enumerate(steps):
                if st.device in self.rig.failed_sets:
                    prog.done_w += st.weight
                    continue   # its device set could not be set up: noted once
                prog.line(i, st)
                try:
                    st.fn()
                except (CblbError, OSError, subprocess.SubprocessError, ValueError,
                        KeyError, AssertionError) as e:
                    self.rig.note(f"step '{st.label}' failed: {type(e).__name__}: {e}")
                    try:
                        self.rig.cleanup_snapshots()
                        if not self.ctl.loaded():
                            self.ctl.load(4)
                    except CblbError:
                        pass
                prog.done_w += st.weight
                self.results["meta"].setdefault("cpu_calibration", []).append(
                    round(cpu_calibration()))
                self.save_partial()
        finally:
            self.rig.teardown()
            try:
                if not self.ctl.loaded():
                    self.ctl.load(4)
            except CblbError:
                pass
        meta = self.results["meta"]
        meta["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        meta["duration_s"] = round(time.monotonic() - t0, 1)
        print(f"[bench] done in {fmt_s(meta['duration_s'])}", file=self.stream, flush=True)
        return self.results

    def save_partial(self) -> None:
        p = self.out / "results.partial.json"
        p.write_text(json.dumps(self.results, indent=1, default=str))
