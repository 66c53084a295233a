"""cblb trace on the host: parsing, record shape, histogram maths, error messages.
No kernel, no BPF: the lab tests (tests/lab/test_trace_lab.py) cover the probes."""

from __future__ import annotations

import json
import random
import sys

import pytest

from cblb import trace
from cblb.cli import build_parser, main
from cblb.commands.trace import render
from cblb.errors import CblbError
from cblb.trace_compare import fio_argv, parse_fio, ratio


def lat_slot(us: int) -> int:
    """Python twin of trace_bpf.c's lat_slot()."""
    if us < 16:
        return us
    log = us.bit_length()          # bpf_log2l(us)
    return min(8 + (log - 4) * 8 + ((us >> (log - 4)) & 7), 255)


# ---- arguments ------------------------------------------------------------------------

def test_parse_interval_count_device_json() -> None:
    a = build_parser().parse_args(["trace", "-d", "loop0", "-j", "2", "5"])
    assert (a.device, a.json, a.interval, a.count, a.compare) == ("loop0", True, 2.0, 5, False)


def test_parse_defaults_and_compare() -> None:
    a = build_parser().parse_args(["trace"])
    assert (a.interval, a.count, a.device, a.json) == (1.0, None, None, False)
    a = build_parser().parse_args(["trace", "--compare", "--device", "/dev/loop1",
                                   "--snapshot-catalog", "/mnt/c", "--fio-args",
                                   "--rw=write --bs=64k"])
    assert a.compare and a.snapshot_catalog == "/mnt/c" and a.fio_args == "--rw=write --bs=64k"


def test_ebpf_is_hidden_and_prints_program(capsys: pytest.CaptureFixture[str]) -> None:
    p = build_parser()
    sub = p._subparsers._group_actions[0].choices["trace"]  # type: ignore[union-attr]
    assert "--ebpf" not in sub.format_help()
    assert "examples:" in sub.format_help()
    assert main(["trace", "--ebpf"]) == 0
    out = capsys.readouterr().out
    assert "#define WITH_CBLB" in out and "TRACEPOINT_PROBE(block, block_rq_issue)" in out


def test_compare_needs_device_and_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "--compare"]) == 1
    assert "--snapshot-catalog" in capsys.readouterr().err


# ---- error messages -------------------------------------------------------------------

def _run_err(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "Traceback" not in err and lines and lines[-1].startswith("cblb: "), err
    return lines[-1]


def test_not_root(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(trace.os, "geteuid", lambda: 1000)
    assert "root" in _run_err(capsys, ["trace", "1", "1"])
    assert capsys.readouterr().err == ""


def test_bcc_missing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(trace.os, "geteuid", lambda: 0)
    monkeypatch.setitem(sys.modules, "bcc", None)  # makes 'import bcc' raise ImportError
    assert "apt-get install python3-bpfcc" in _run_err(capsys, ["trace", "1", "1"])


def test_headers_missing(monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(trace.os, "geteuid", lambda: 0)
    monkeypatch.setattr(trace, "_import_bcc", lambda: object())
    monkeypatch.setattr(trace, "bpf_supported", lambda: True)
    monkeypatch.setattr(trace, "kernel_headers_present", lambda release=None: False)
    assert "apt-get install linux-headers-" in _run_err(capsys, ["trace", "1", "1"])


def test_kernel_without_bpf(monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(trace.os, "geteuid", lambda: 0)
    monkeypatch.setattr(trace, "_import_bcc", lambda: object())
    monkeypatch.setattr(trace, "bpf_supported", lambda: False)
    assert "CONFIG_BPF_SYSCALL" in _run_err(capsys, ["trace", "1", "1"])


def test_compare_not_root(monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(trace.os, "geteuid", lambda: 1000)
    monkeypatch.setattr("cblb.trace_compare.resolve_device",
                        lambda d: trace.DeviceFilter("loop0", "loop0", 7 << 20))
    monkeypatch.setattr("cblb.control.Controller.require_loaded", lambda self: None)
    monkeypatch.setattr("cblb.trace_compare.shutil.which", lambda n: "/usr/bin/fio")
    err = _run_err(capsys, ["trace", "--compare", "-d", "loop0", "--snapshot-catalog", "/x"])
    assert "root" in err


def test_bpf_load_refused(monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    class FakeBcc:
        @staticmethod
        def BPF(**kw: object) -> None:
            raise Exception("Failed to load BPF program: Operation not permitted")

    monkeypatch.setattr(trace, "check_environment", lambda: FakeBcc)
    assert "refused the BPF program" in _run_err(capsys, ["trace", "1", "1"])


def test_unknown_device(capsys: pytest.CaptureFixture[str]) -> None:
    assert "no such block device" in _run_err(capsys, ["trace", "-d", "nosuchdisk9", "1"])


# ---- devices --------------------------------------------------------------------------

def test_resolve_partition(tmp_path) -> None:
    devs = tmp_path / "devices" / "sda"
    (devs / "sda2").mkdir(parents=True)
    (devs / "dev").write_text("8:0\n")
    (devs / "sda2" / "dev").write_text("8:2\n")
    (devs / "sda2" / "partition").write_text("2\n")
    (devs / "sda2" / "start").write_text("2048\n")
    (devs / "sda2" / "size").write_text("1000\n")
    cls = tmp_path / "class"
    cls.mkdir()
    (cls / "sda").symlink_to(devs)
    (cls / "sda2").symlink_to(devs / "sda2")
    f = trace.resolve_device("sda2", sysfs=cls)
    assert (f.name, f.disk, f.kdev, f.lo, f.hi) == ("sda2", "sda", 8 << 20, 2048, 3048)
    assert "-DFILTER_DEV=8388608" in f.cflags()
    whole = trace.resolve_device("/dev/sda", sysfs=cls)
    assert (whole.kdev, whole.hi) == (8 << 20, 0)


# ---- histogram maths ------------------------------------------------------------------

@pytest.mark.parametrize("us", list(range(0, 300)) + [1023, 1024, 4095, 65537, 10**6, 10**8])
def test_slot_bounds_invert_lat_slot(us: int) -> None:
    lo, hi = trace.slot_bounds(lat_slot(us))
    assert lo <= us < hi
    assert trace.log2_index(lat_slot(us)) == us.bit_length()


def test_percentiles_close_to_exact() -> None:
    rnd = random.Random(5)
    values = [int(rnd.lognormvariate(4, 1)) + 1 for _ in range(20000)]
    fine: dict[int, int] = {}
    for v in values:
        fine[lat_slot(v)] = fine.get(lat_slot(v), 0) + 1
    values.sort()
    for q in (50, 99):
        exact = values[int(q / 100 * len(values)) - 1]
        got = trace.percentile(fine, q)
        assert got is not None and abs(got - exact) <= exact / 8 + 1, (q, got, exact)
    assert trace.percentile({}, 50) is None


def test_log2_hist_ranges_like_bcc() -> None:
    fine = {lat_slot(40): 3, lat_slot(200): 1}
    h = trace.log2_hist(fine)
    assert h[0] == [32, 63, 3] and h[-1] == [128, 255, 1] and h[1] == [64, 127, 0]


# ---- records --------------------------------------------------------------------------

def _reading(t: float, writes: int, reads: int, chunks: int, states=()) -> dict:
    r = trace.empty_reading(t)
    r["wall"] = 1_700_000_000.0 + t
    dev = trace.kernel_dev(7, 0)
    r["io"] = {(dev, trace.OP_WRITE): (writes, writes * 4096, writes * 50_000),
               (dev, trace.OP_READ): (reads, reads * 4096, reads * 20_000)}
    r["lat"] = {(dev, trace.OP_WRITE, lat_slot(50)): writes,
                (dev, trace.OP_READ, lat_slot(20)): reads}
    r["cow"] = {"snap0": (chunks // 8, chunks, chunks * 4096, chunks * 1000, 1, 16384)}
    r["states"] = list(states)
    return r


def test_record_shape_and_json() -> None:
    a = _reading(10.0, 1000, 10, 80)
    b = _reading(12.0, 3000, 30, 880, [{"ts": 1.0, "snapshot": "snap0", "old": "created",
                                        "new": "active"}])
    rec = trace.build_record(a, b, "loop0")
    rec = json.loads(json.dumps(rec))
    assert rec["device"] == "loop0" and rec["interval_s"] == 2.0
    assert rec["write_iops"] == 1000.0 and rec["write_count"] == 2000
    assert rec["write_mb_s"] == round(2000 * 4096 / 2 / 1e6, 3)
    assert 48 <= rec["p50_us"] <= 52 and 48 <= rec["p99_us"] <= 52
    assert rec["read_iops"] == 10.0 and 20 <= rec["read_p50_us"] <= 21
    assert rec["write_avg_us"] == 50.0
    assert sum(n for _l, _h, n in rec["write_hist_us"]) == 2000
    cow = rec["cow"]
    assert cow["chunks"] == 800 and cow["copies_per_s"] == 400.0
    assert cow["bytes"] == 800 * 4096 and cow["copy_ns"] == 800_000
    assert cow["files_created"] == 0
    assert cow["state_changes"][0]["new"] == "active"
    assert cow["snapshots"]["snap0"]["chunks"] == 880  # cumulative
    assert rec["totals"]["writes"] == 3000


def test_render_fits_80_columns() -> None:
    rec = trace.build_record(_reading(0.0, 0, 0, 0), _reading(1.0, 5000, 100, 512),
                             None, per_device=True)
    text = render(rec)
    assert max(len(line) for line in text.splitlines()) < 80, text
    assert "write" in text and "COW" in text


# ---- fio ------------------------------------------------------------------------------

FIO_JSON = {"fio version": "fio-3.33", "jobs": [{"write": {
    "bw": 10000, "iops": 2500.5, "total_ios": 25005,
    "clat_ns": {"mean": 390000.0, "percentile": {"50.000000": 350208,
                                                  "99.000000": 1204224}}}}]}


def test_parse_fio_and_ratio() -> None:
    f = parse_fio("fio: some warning\n" + json.dumps(FIO_JSON))
    assert f["clat_p50_us"] == 350.2 and f["clat_p99_us"] == 1204.2
    assert f["iops"] == 2500.5 and f["bw_mb_s"] == 10.24 and f["total_ios"] == 25005
    assert ratio(100.0, 150.0) == 1.5 and ratio(None, 1.0) is None
    with pytest.raises(CblbError):
        parse_fio("no json here")


def test_fio_args_come_last() -> None:
    argv = fio_argv("/mnt/x", 64, 10, ["--rw=write"])
    assert argv[-1] == "--rw=write" and argv.index("--rw=randwrite") < len(argv) - 1
