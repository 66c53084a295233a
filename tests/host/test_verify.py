"""verify, manifest and diff: differing-range detection on crafted files, the command line,
and the snapshot-versus-origin accounting (with a stand-in for the module's sysfs)."""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from cblb import cli
from cblb.commands import verify as verify_cmd
from cblb.errors import CblbError
from cblb.model import Snapshot, SnapshotState
from cblb.verify import (
    Comparison,
    account,
    count_outside,
    diff_snapshot,
    extents_to_blocks,
    format_ranges,
    make_manifest,
    verify_paths,
)

BS = 4096
SIZE = 37 * BS + 1234  # 38 blocks, the last one partial
ROOT = Path(__file__).resolve().parents[2]


def rnd(n: int, seed: int = 11) -> bytearray:
    return bytearray(random.Random(seed).randbytes(n))


def flip(data: bytearray, *offsets: int) -> bytearray:
    out = bytearray(data)
    for o in offsets:
        out[o] ^= 0x5A
    return out


@pytest.fixture
def pair(tmp_path):
    """write(b_data) -> (path A, path B) with A the 38-block original."""
    a = tmp_path / "a.img"
    data = rnd(SIZE)
    a.write_bytes(data)

    def write(b_data: bytes):
        b = tmp_path / "b.img"
        b.write_bytes(b_data)
        return str(a), str(b)
    write.data = data
    return write


CASES = {
    "equal": ([], []),
    "first block": ([0], [(0, 0)]),
    "first byte of block 1": ([BS], [(1, 1)]),
    "last partial block": ([SIZE - 1], [(37, 37)]),
    "first byte of the partial block": ([37 * BS], [(37, 37)]),
    "scattered": ([5, 3 * BS + 7, 4 * BS, 20 * BS + 4095, 30 * BS, 36 * BS, SIZE - 2],
                  [(0, 0), (3, 4), (20, 20), (30, 30), (36, 37)]),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("via_manifest", [False, True])
@pytest.mark.parametrize("threads", [1, 3])
def test_differing_ranges(pair, tmp_path, case, via_manifest, threads):
    offsets, ranges = CASES[case]
    a, b = pair(flip(pair.data, *offsets))
    against = b
    if via_manifest:
        against = str(tmp_path / "b.manifest")
        make_manifest(b, against, BS)
    c = verify_paths(a, against, threads=threads)
    assert c.ranges == ranges
    assert c.differing == sum(z - a_ + 1 for a_, z in ranges)
    assert c.equal == (not ranges)
    assert c.blocks == 38


def test_small_spans_find_ranges_across_span_borders(pair):
    """Ranges that cross the engine's span boundaries are merged into one."""
    from cblb import hashing as H
    from cblb.verify import compare
    a, b = pair(flip(pair.data, *[i * BS for i in range(6, 15)]))
    with H.Source.open(a) as sa, H.Source.open(b) as sb, \
            H.Engine(BS, threads=3, span=2 * BS) as eng:
        c = compare(eng, sa, sb)
    assert c.ranges == [(6, 14)]


def test_size_difference(pair):
    a, b = pair(bytes(pair.data) + b"more")
    c = verify_paths(a, b)
    assert not c.equal and c.size_a == SIZE and c.size_b == SIZE + 4
    assert c.ranges == [(37, 37)]  # the partial block grew
    a, b = pair(bytes(pair.data[:10 * BS]))
    c = verify_paths(a, b)
    assert c.ranges == [(10, 37)]


def test_empty_sources(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"")
    b.write_bytes(b"")
    c = verify_paths(str(a), str(b))
    assert c.equal and c.blocks == 0
    make_manifest(str(a), str(tmp_path / "m"))
    assert verify_paths(str(tmp_path / "m"), str(b)).equal


def test_other_block_size_and_128_bit(pair, tmp_path):
    a, b = pair(flip(pair.data, 1000, 9000))
    c = verify_paths(a, b, block_size=512, algorithm="xxh3_128")
    assert c.ranges == [(1, 1), (17, 17)] and c.algorithm == "xxh3_128"


def test_manifest_against_mismatched_settings(pair, tmp_path):
    a, _ = pair(pair.data)
    m = str(tmp_path / "a.manifest")
    make_manifest(a, m, BS, "xxh3_128")
    assert verify_paths(a, m).equal  # the manifest's own settings are used
    with pytest.raises(CblbError, match="made with 4096-byte blocks, not 512"):
        verify_paths(a, m, block_size=512)
    with pytest.raises(CblbError, match="holds xxh3_128 digests, not xxh3_64"):
        verify_paths(a, m, algorithm="xxh3_64")


def test_manifest_refuses_to_overwrite_its_source(pair):
    a, _ = pair(pair.data)
    with pytest.raises(CblbError, match="overwrite its own source"):
        make_manifest(a, a)


def test_format_ranges():
    assert format_ranges([(0, 0), (3, 9)]) == ["0", "3-9"]
    assert format_ranges([(i, i) for i in range(0, 10, 2)], 2)[-1].startswith("... and 3 more")


# ---- the command line ---------------------------------------------------------------------

def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cblb.cli", *argv], capture_output=True,
                          text=True, cwd=ROOT)


def test_cli_manifest_and_verify(pair, tmp_path):
    a, b = pair(flip(pair.data, 0, SIZE - 1))
    m = str(tmp_path / "a.manifest")
    r = run_cli("manifest", a, "-o", m, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["blocks"] == 38 and info["path"] == m

    r = run_cli("verify", a, "--against", m)
    assert r.returncode == 0 and r.stdout.startswith("equal:"), r.stdout + r.stderr

    r = run_cli("verify", b, "--against", m)
    assert r.returncode == 1
    assert "differ: 2 of 38 blocks" in r.stdout
    assert r.stdout.splitlines()[1:] == ["  0", "  37"]

    r = run_cli("verify", b, "--against", a, "--json")
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out["ranges"] == [[0, 0], [37, 37]] and out["equal"] is False
    assert out["differing_blocks"] == 2 and out["block_size"] == BS


def test_cli_trouble_is_one_line_exit_2(pair, tmp_path):
    """verify and manifest follow cmp(1): 2 for trouble (a bad manifest, a missing file)."""
    a, _ = pair(pair.data)
    bad = tmp_path / "bad.manifest"
    make_manifest(a, str(bad))
    raw = bytearray(bad.read_bytes())
    raw[-1] ^= 1
    bad.write_bytes(bytes(raw))
    for argv in (["verify", a, "--against", str(bad)],
                 ["verify", str(tmp_path / "missing"), "--against", a],
                 ["manifest", a, "-o", str(tmp_path / "no" / "such" / "dir" / "m")],
                 ["verify", a, "--against", str(tmp_path)]):
        r = run_cli(*argv)
        assert r.returncode == 2, argv
        assert r.stderr.startswith("cblb: ") and r.stderr.count("\n") == 1, r.stderr
        assert "Traceback" not in r.stderr
    assert "checksum mismatch" in run_cli("verify", a, "--against", str(bad)).stderr


def test_cli_usage_errors_exit_2(pair):
    a, _ = pair(pair.data)
    assert run_cli("verify", a).returncode == 2                      # --against missing
    assert run_cli("verify", a, "--against", a, "--block-size", "x").returncode == 2
    assert run_cli("manifest", a).returncode == 2                    # -o missing


# ---- snapshot versus origin: the module's accounting --------------------------------------

def test_extents_to_blocks():
    # sectors 8..15 = block 1; sectors 20..27 touch blocks 2 and 3; adjacent ones merge
    assert extents_to_blocks([(8, 8)], BS) == [(1, 1)]
    assert extents_to_blocks([(20, 8)], BS) == [(2, 3)]
    assert extents_to_blocks([(24, 8), (8, 8), (16, 8)], BS) == [(1, 3)]
    assert extents_to_blocks([(0, 0)], BS) == []


def test_count_outside():
    assert count_outside([(0, 9)], []) == 10
    assert count_outside([(0, 9)], [(2, 3), (8, 20)]) == 6
    assert count_outside([(0, 1), (5, 5), (7, 9)], [(1, 7)]) == 3
    assert count_outside([(4, 4)], [(0, 1), (6, 7)]) == 1


def cmp_with(ranges):
    c = Comparison("/dev/snap", "/dev/origin", BS, "xxh3_64", 100 * BS, 100 * BS, ranges)
    c.differing = sum(z - a + 1 for a, z in ranges)
    return c


def test_account_consistent_and_bug():
    c = cmp_with([(3, 5), (40, 40), (90, 99)])   # 14 chunks; 90..99 are temp files
    d = account("s", "/dev/o", c, BS, 1, 4, [(90 * 8, 80)])
    assert (d.differing_chunks, d.store_chunks, d.unexplained, d.consistent) == (14, 10, 0, True)
    d = account("s", "/dev/o", c, BS, 0, 3, [(90 * 8, 80)])
    assert d.unexplained == 1 and not d.consistent
    j = d.to_json()
    assert j["consistent"] is False and j["differing_outside_store"] == 4


@dataclass
class FakeSnap(Snapshot):
    dev_path: str = ""

    @property
    def device(self) -> str:  # the snapshot device is a file here
        return self.dev_path


class FakeController:
    """Stands in for Controller: each snapshot() read returns the next cow_chunks value."""

    def __init__(self, snap_path: str, origin: str, cow: list[int],
                 extents: list[tuple[int, int]] | None = None,
                 state: SnapshotState = SnapshotState.ACTIVE) -> None:
        self.snap_path, self.origin, self.cow = snap_path, origin, list(cow)
        self.extents = extents or []
        self.state = state

    def snapshot(self, name: str) -> FakeSnap:
        n = self.cow.pop(0) if len(self.cow) > 1 else self.cow[0]
        return FakeSnap(name=name, state=self.state, origin=self.origin, chunk_size=BS,
                        cow_chunks=n, store_extents=self.extents, dev_path=self.snap_path)


def test_diff_snapshot_consistent(pair):
    snap, origin = pair(flip(pair.data, 0, 10 * BS, 11 * BS))
    ctl = FakeController(snap, origin, [1, 3])
    d = diff_snapshot(ctl, "shadow", direct=False)
    assert d.comparison.ranges == [(0, 0), (10, 11)]
    assert (d.cow_chunks_before, d.cow_chunks, d.consistent) == (1, 3, True)


def test_diff_snapshot_excludes_store_extents(pair):
    snap, origin = pair(flip(pair.data, 0, 20 * BS, 21 * BS))
    ctl = FakeController(snap, origin, [1], extents=[(20 * 8, 16)])
    d = diff_snapshot(ctl, "shadow", direct=False)
    assert (d.store_chunks, d.unexplained, d.consistent) == (2, 0, True)


def test_diff_snapshot_reports_a_bug_with_exit_3(pair, capsys):
    snap, origin = pair(flip(pair.data, 0, 10 * BS, 11 * BS))
    d = diff_snapshot(FakeController(snap, origin, [2]), "shadow", direct=False)
    assert d.unexplained == 1 and not d.consistent

    args = argparse.Namespace(snapshot="shadow", buffered=True, threads=None, json=False,
                              max_ranges=50)
    rc = verify_cmd._diff(args, FakeController(snap, origin, [2]))
    out = capsys.readouterr()
    assert rc == 3
    assert "BUG" in out.err and "1 changed without a copy" in out.err
    args.json = True
    assert verify_cmd._diff(args, FakeController(snap, origin, [3])) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["consistent"] is True and j["differing_chunks"] == 3 and j["cow_chunks"] == 3


def test_diff_refuses_a_snapshot_that_is_not_active(pair):
    snap, origin = pair(pair.data)
    with pytest.raises(CblbError, match="only an active snapshot"):
        diff_snapshot(FakeController(snap, origin, [0], state=SnapshotState.FAILED), "s")


def test_cli_registers_the_commands():
    p = cli.build_parser()
    for argv in (["manifest", "x", "-o", "y"], ["verify", "x", "--against", "y"],
                 ["diff", "s"], ["backup", "s", "img"]):
        assert callable(p.parse_args(argv).func)
