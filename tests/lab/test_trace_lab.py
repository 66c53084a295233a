"""cblb trace against the real module and block layer (run inside the lab guest).

Tolerance for the write counts: only the probe runs the kernel says it skipped (the
record's ``missed``: a BPF program does not run while another runs on its CPU, so an I/O
completion interrupting a probe goes uncounted). fio writes a raw loop device with O_DIRECT, 4 KiB
blocks, iodepth 1 and the psync engine: every write is one bio and one request (4 KiB is
never split, and with one write in flight nothing can merge), and nothing else writes a
loop device that holds no filesystem. So the histogram must count exactly fio's
total_ios. The same holds for COW: every 4 KiB-aligned write to a distinct chunk of a
fresh snapshot copies exactly one chunk, so the tracepoint sums must equal both fio's
count and the module's sysfs cow_chunks.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from cblb.control import Controller
from cblb.trace import Tracer
from cblb.trace_compare import parse_fio
from conftest import make_loop, sh

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
N_WRITES = 2000


def fio_write(target: str, n: int, rw: str = "write") -> dict:
    """n 4 KiB O_DIRECT writes, one at a time. udev probes a device that was open for
    writing once it is closed; those reads could share a sector with the next phase's
    writes, which the tracer (keyed by device and sector) cannot tell apart: wait for
    them before and after."""
    sh("udevadm settle 2>/dev/null || true")
    out = sh(f"fio --name=cnt --filename={target} --rw={rw} --bs=4k --direct=1 "
             f"--ioengine=psync --iodepth=1 --size={n * 4}k --output-format=json")
    sh("udevadm settle 2>/dev/null || true")
    return parse_fio(out)


@pytest.fixture(scope="module")
def tracer() -> Iterator[Tracer]:
    """One compiled program for the whole module (30-40 s under TCG). It needs the cblb
    tracepoints at compile time, so the module is loaded here; it is detached between
    tests so the cblb_module fixture can rmmod/insmod."""
    ctl = Controller()
    ctl.load(4)
    t = Tracer(None, with_cblb=True)
    t.compile()
    t.stop()
    yield t
    t.close()


@pytest.fixture
def attached(tracer: Tracer, cblb_module: Controller) -> Iterator[Tracer]:
    tracer.start()
    yield tracer
    tracer.stop()


@pytest.fixture
def raw_origin() -> Iterator[str]:
    loop = make_loop(128, "trace-origin")
    yield loop.device
    loop.detach()


def test_histogram_counts_fio_writes_and_cow_matches_sysfs(attached: Tracer, raw_origin: str,
                                                           scratch_fs, cblb_module: Controller,
                                                           lab_out: Path) -> None:
    dev = Path(raw_origin).name
    attached.sample()
    fio = fio_write(raw_origin, N_WRITES)
    rec = attached.sample()
    d = rec["per_device"][dev]
    assert fio["total_ios"] == N_WRITES
    assert N_WRITES - rec["missed"] <= d["write_count"] <= N_WRITES, (d, rec["missed"])
    assert sum(n for _lo, _hi, n in d["write_hist_us"]) == d["write_count"]
    assert d["write_bytes"] == d["write_count"] * 4096
    assert d["write_iops"] > 0 and d["write_mb_s"] > 0
    assert 0 < d["p50_us"] <= d["p99_us"]
    assert rec["cow"]["chunks"] == 0

    # Now with an active snapshot: every write copies its chunk first.
    cblb_module.create("trace-t1", raw_origin)
    cblb_module.start("trace-t1", str(scratch_fs.catalog_dir), 16384, 8)
    attached.sample()
    fio2 = fio_write(raw_origin, N_WRITES)
    rec2 = attached.sample()
    snap = cblb_module.snapshot("trace-t1")
    d2 = rec2["per_device"][dev]
    assert fio2["total_ios"] == N_WRITES
    print(f"probe runs the kernel skipped: {rec['missed']} without, {rec2['missed']} with "
          "the snapshot")
    assert N_WRITES - rec2["missed"] <= d2["write_count"] <= N_WRITES, (d2, rec2["missed"])
    cow_total = rec2["cow"]["snapshots"]["trace-t1"]
    assert snap.cow_chunks == N_WRITES
    # One cblb_cow event per batch: a skipped run loses at most a batch of chunks.
    assert snap.cow_chunks - 256 * rec2["missed"] <= cow_total["chunks"] <= snap.cow_chunks
    assert cow_total["bytes"] == cow_total["chunks"] * snap.chunk_size
    assert cow_total["files"] == snap.files_used >= 1
    assert rec2["cow"]["copy_ns"] > 0
    assert d2["read_count"] > 0  # the copies read the origin
    cblb_module.remove("trace-t1")
    rec3 = attached.sample()
    changes = [(c["snapshot"], c["old"], c["new"]) for c in rec3["cow"]["state_changes"]]
    assert ("trace-t1", "active", "removed") in changes, changes
    (lab_out / "trace_counts.json").write_text(json.dumps(
        {"kernel": os.uname().release, "fio_ios": [fio["total_ios"], fio2["total_ios"]],
         "no_snapshot": d, "snapshot": d2, "cow": rec2["cow"],
         "sysfs_cow_chunks": snap.cow_chunks}, indent=1, sort_keys=True))


def _read_lines(proc: subprocess.Popen, deadline: float, want: int) -> list[str]:
    lines: list[str] = []
    assert proc.stdout is not None
    while len(lines) < want and time.time() < deadline:
        r, _, _ = select.select([proc.stdout], [], [], 1.0)
        if r:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
    return lines


def test_cli_json_stream_filters_one_device(raw_origin: str, scratch_fs,
                                            cblb_module: Controller) -> None:
    dev = Path(raw_origin).name
    proc = subprocess.Popen([sys.executable, "-m", "cblb.cli", "trace", "-d", dev, "-j",
                             "1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        first = _read_lines(proc, time.time() + 400, 1)  # compile, then the first interval
        assert first, proc.stderr.read() if proc.poll() is not None else "no output"
        noise = scratch_fs.catalog_mnt / "noise"
        sh(f"dd if=/dev/zero of={noise} bs=4k count=500 oflag=direct status=none")
        fio = fio_write(raw_origin, N_WRITES, rw="randwrite")
        time.sleep(2.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    recs = [json.loads(line) for line in first + out.splitlines() if line.strip()]
    assert len(recs) >= 3
    for r in recs:
        assert r["device"] == dev
        assert {"ts", "write_mb_s", "write_iops", "p50_us", "p99_us", "read_mb_s",
                "cow"} <= set(r)
        assert "per_device" not in r
    assert sum(r["write_count"] for r in recs) == fio["total_ios"] == N_WRITES


def test_compare_reports_ratios(scratch_fs, cblb_module: Controller, lab_out: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "cblb.cli", "trace", "--compare", "-d",
                        scratch_fs.device, "--snapshot-catalog", str(scratch_fs.catalog_dir),
                        "--size", "32", "--runtime", "4", "--file-size", "65536", "-j"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    (lab_out / "trace_compare.json").write_text(json.dumps(res, indent=1, sort_keys=True))
    for phase in ("without", "with"):
        assert res[phase]["fio"]["total_ios"] > 0
        assert res[phase]["bcc"]["write_count"] > 0
    assert res["with"]["bcc"]["cow"]["chunks"] > 0
    assert res["snapshot"]["cow_chunks"] >= res["with"]["bcc"]["cow"]["chunks"] > 0
    for k in ("clat_p50_us", "clat_p99_us", "bw_mb_s", "iops"):
        assert res["ratios"][k] is not None and res["ratios"][k] > 0
    assert not cblb_module.snapshots()  # --compare removed its snapshot
