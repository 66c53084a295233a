"""Incremental backups over the fake module (cblb/fake/ models cbt.c: kmod/doc/CBT.md):
the fake's tracking itself, full backup -> writes -> snapshot -> `backup --since` ->
`restore` -> `verify --against SNAPSHOT` over several chained cycles, manifest blocks smaller
and larger than map blocks, every refusal (generation, sequence, origin, missing or wrong
link, damaged data), `status`, and the incremental's size against the data written."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import uuid
from pathlib import Path

import pytest

from cblb import hashing as H
from cblb import incremental as I
from cblb.cli import main
from cblb.control import Controller
from cblb.errors import CblbError
from cblb.fake import FakeSystem
from cblb.manifest import Manifest

BS = 4096
SIZE = 12 * (1 << 20) + 1536          # not a whole number of 4 KiB blocks
ORIGIN = "/dev/vdb1"


@pytest.fixture
def fake(tmp_path: Path) -> FakeSystem:
    return FakeSystem(tmp_path / "fake", loaded=True, origin_bytes=SIZE)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    cat, bk = tmp_path / "catalog", tmp_path / "backups"
    cat.mkdir()
    bk.mkdir()
    return cat, bk


def take(ctl: Controller, cat: Path, name: str = "s", origin: str = ORIGIN):
    ctl.create(name, origin)
    return ctl.start(name, str(cat), 2048, 8)


def snap_bytes(fake: FakeSystem, name: str = "s") -> bytes:
    return Path(fake.device_file(f"/dev/{name}")).read_bytes()


def scribble(fake: FakeSystem, rnd: random.Random, n: int, origin: str = ORIGIN,
             size: int = SIZE, maxlen: int = 20000) -> set[int]:
    """n random writes; the 4 KiB blocks they touched."""
    blocks: set[int] = set()
    for _ in range(n):
        ln = rnd.randrange(1, maxlen)
        off = rnd.randrange(0, size - ln)
        fake.write_origin(origin, off, rnd.randbytes(ln))
        blocks |= set(range(off // BS, (off + ln - 1) // BS + 1))
    return blocks


def run(argv: list[str], ctl: Controller, capsys: pytest.CaptureFixture[str]):
    rc = main(argv, ctl)
    out, err = capsys.readouterr()
    return rc, out, err


def run_json(argv: list[str], ctl: Controller, capsys: pytest.CaptureFixture[str]) -> dict:
    rc, out, err = run(argv + ["--json"], ctl, capsys)
    assert rc == 0, err
    return json.loads(out)


def refused(argv: list[str], ctl: Controller, capsys: pytest.CaptureFixture[str]) -> str:
    """Exit 1 with one line on stderr and no traceback; that line."""
    rc, out, err = run(argv, ctl, capsys)
    assert rc == 1, (out, err)
    assert err.count("\n") == 1 and err.startswith("cblb: "), err
    assert "Traceback" not in err
    return err


def full_backup(ctl, fake, cat, bk, rnd, capsys, name="full.img", fill=True) -> str:
    if fill:
        fake.write_origin(ORIGIN, 0, rnd.randbytes(SIZE))
    take(ctl, cat)
    img = str(bk / name)
    j = run_json(["backup", "s", img], ctl, capsys)
    assert j["kind"] == "full" and j["chain"] == img + ".chain" and j["sequence"] == 1
    ctl.remove("s")
    return img


# ---- the fake models cbt.c ---------------------------------------------------------------

def test_tracking_begins_at_create_and_lives_across_snapshots(fake, ctl, dirs, capsys):
    cat, _ = dirs
    assert ctl.tracking() == []
    s = ctl.create("s", ORIGIN)
    assert not s.has_cbt and s.cbt_generation == ""     # the null UUID reads as none
    (t,) = ctl.tracking()
    assert (t.disk, t.dev, t.sequence, t.block_size, t.size_sectors) == \
        ("vdb1", "254:17", 0, BS, SIZE // 512)
    gen = t.generation
    uuid.UUID(gen)
    with pytest.raises(CblbError, match="only a started snapshot"):
        ctl.changed_blocks("s")
    fake.write_origin(ORIGIN, 5 * BS + 100, b"x" * BS)      # blocks 5 and 6
    fake.write_origin(ORIGIN, SIZE - 10, b"y" * 10)        # the last, short block
    assert ctl.tracking()[0].changed_blocks == 3
    s = ctl.start("s", str(cat), 2048, 8)
    assert (s.cbt_generation, s.cbt_sequence, s.cbt_block_size, s.cbt_changed_blocks) == \
        (gen, 1, BS, 3)
    bs, bitmap = ctl.changed_blocks("s")
    nbits = -(-SIZE // BS)
    assert bs == BS and len(bitmap) == -(-nbits // 64) * 8
    assert I.changed_runs(bitmap, nbits) == [(5, 7), (nbits - 1, nbits)]
    t = ctl.tracking()[0]
    assert (t.sequence, t.changed_blocks, t.memory_bytes) == (1, 0, 2 * len(bitmap))
    fake.write_origin(ORIGIN, 0, b"z")                       # after the point in time
    assert ctl.changed_blocks("s")[1] == bitmap              # the frozen map does not move
    assert ctl.tracking()[0].changed_blocks == 1
    ctl.remove("s")
    fake.write_origin(ORIGIN, 9 * BS, b"w")                  # no snapshot: still tracked
    s = take(ctl, cat)
    assert (s.cbt_generation, s.cbt_sequence, s.cbt_changed_blocks) == (gen, 2, 2)
    assert I.changed_runs(ctl.changed_blocks("s")[1], nbits) == [(0, 1), (9, 10)]
    j = run_json(["status"], ctl, capsys)
    assert j["tracking"][0]["generation"] == gen and j["tracking"][0]["sequence"] == 2
    assert j["snapshots"][0]["cbt_sequence"] == 2


def test_set_members_each_advance_their_origin(fake, ctl, dirs):
    from cblb.model import SetMember

    cat, _ = dirs
    ctl.create("a", "/dev/vdb1")
    ctl.create("b", "/dev/vdb2")
    fake.write_origin("/dev/vdb2", 0, b"q" * 3 * BS)
    a, b = ctl.start_set("db", [SetMember("a", str(cat), 2048, 4),
                                SetMember("b", str(cat), 2048, 4)])
    assert (a.cbt_sequence, b.cbt_sequence) == (1, 1)
    assert (a.cbt_changed_blocks, b.cbt_changed_blocks) == (0, 3)
    assert a.cbt_generation != b.cbt_generation
    assert {t.disk: t.sequence for t in ctl.tracking()} == {"vdb1": 1, "vdb2": 1}


def test_track_untrack_and_their_refusals(fake, ctl, dirs, capsys):
    cat, _ = dirs
    t = ctl.track("/dev/vdb2")
    assert t.disk == "vdb2" and t.sequence == 0
    assert fake.commands[-1] == "track /dev/vdb2"
    with pytest.raises(CblbError, match="already tracked") as e:
        ctl.track("/dev/vdb2")
    assert e.value.errno == errno.EEXIST
    with pytest.raises(CblbError, match="is not tracked") as e:
        ctl.untrack("/dev/vdb1")
    assert e.value.errno == errno.ENOENT
    take(ctl, cat, "s2", "/dev/vdb2")
    assert ctl.snapshot("s2").cbt_generation == t.generation   # create found it tracked
    with pytest.raises(CblbError, match="a snapshot of it exists .s2.; remove it first") as e:
        ctl.untrack("/dev/vdb2")
    assert e.value.errno == errno.EBUSY
    ctl.remove("s2")
    ctl.untrack("/dev/vdb2")
    assert ctl.tracking() == []
    ctl.create("s2", "/dev/vdb2")                          # tracking begins again: new gen
    assert ctl.tracking()[0].generation != t.generation
    rc, out, err = run(["track", "/dev/vdb2"], ctl, capsys)
    assert rc == 1 and "already tracked" in err


def test_module_errnos_of_track_and_untrack(fake, ctl, monkeypatch):
    """What the module answers when the checks before it could not see it coming (a
    snapshot made by another program in between)."""
    ctl.track("/dev/vdb2")

    def refuse(line: str) -> None:
        raise OSError(errno.EBUSY if line.startswith("untrack") else errno.EEXIST, line)

    monkeypatch.setattr(fake, "write_command", refuse)
    with pytest.raises(CblbError, match="^/dev/vdb2: a snapshot of it exists; remove it "
                       "first$") as e:
        ctl.untrack("/dev/vdb2")
    assert e.value.errno == errno.EBUSY
    with pytest.raises(CblbError, match="^/dev/vdb1 is already tracked$"):
        ctl.track("/dev/vdb1")


def test_track_command_json_and_status_table(fake, ctl, dirs, capsys):
    cat, _ = dirs
    j = run_json(["track", "/dev/vdb2"], ctl, capsys)
    assert j["disk"] == "vdb2" and j["memory_bytes"] > 0 and j["changed_bytes"] == 0
    fake.write_origin("/dev/vdb2", 0, b"x" * (3 * BS))
    rc, out, _ = run(["status"], ctl, capsys)
    assert rc == 0
    line = next(ln for ln in out.splitlines() if ln.startswith("/dev/vdb2"))
    assert j["generation"][:8] in line and "12.0 KiB" in line
    assert "TRACKED" in out and "GENERATION" in out and "SEQUENCE" in out
    j = run_json(["status"], ctl, capsys)
    assert j["tracking"][0]["changed_bytes"] == 3 * BS
    j = run_json(["untrack", "/dev/vdb2"], ctl, capsys)
    assert j == {"partition": "/dev/vdb2", "tracked": False}
    rc, out, _ = run(["status"], ctl, capsys)
    assert "TRACKED" not in out


def test_reload_resize_and_untrack_begin_new_generations(fake, ctl, dirs):
    cat, _ = dirs
    gens = [take(ctl, cat).cbt_generation]
    ctl.remove("s")
    ctl.unload()
    ctl.load(4)
    assert ctl.tracking() == []                            # tracking ended with the module
    gens.append(take(ctl, cat).cbt_generation)
    ctl.remove("s")
    fake.resize_origin(ORIGIN, SIZE + 8 * BS)
    s = take(ctl, cat)
    gens.append(s.cbt_generation)
    assert s.cbt_sequence == 1 and ctl.tracking()[0].size_sectors == (SIZE + 8 * BS) // 512
    ctl.remove("s")
    ctl.untrack(ORIGIN)
    gens.append(take(ctl, cat).cbt_generation)
    assert len(set(gens)) == 4


# ---- the chain ----------------------------------------------------------------------------

def test_cycles_full_then_incrementals_restore_and_verify(fake, ctl, dirs, tmp_path, capsys):
    cat, bk = dirs
    rnd = random.Random(12)
    prev = full_backup(ctl, fake, cat, bk, rnd, capsys)
    truth = {prev: Path(prev).read_bytes()}
    target = str(tmp_path / "restored.img")
    j = run_json(["restore", prev, target], ctl, capsys)
    assert j["links"] == 1 and Path(target).read_bytes() == truth[prev]
    later: set[int] = set()
    for cycle in range(4):
        changed = later | scribble(fake, rnd, 25)          # since the last point in time
        s = take(ctl, cat)
        assert s.cbt_sequence == cycle + 2
        later = scribble(fake, rnd, 5)                     # after its point in time
        img = str(bk / f"inc{cycle}.img")
        j = run_json(["backup", "s", img, "--since", prev], ctl, capsys)
        want_blocks = len(changed)
        assert j["kind"] == "incremental" and j["base"] == prev
        assert j["changed_blocks"] == want_blocks == s.cbt_changed_blocks
        nbytes = sum(min(BS, SIZE - b * BS) for b in changed)
        assert j["bytes_copied"] == nbytes
        assert j["image_bytes"] == os.path.getsize(img) <= nbytes + 8192   # header + table
        # changed blocks, and the unchanged ones read between changes at most READ_GAP apart
        assert want_blocks <= j["manifest_blocks_rehashed"] <= \
            want_blocks + j["extents"] * I.READ_GAP // 4096
        assert j["bytes_read"] == j["manifest_blocks_rehashed"] * 4096
        assert {"seconds", "mb_per_s", "extents", "generation", "sequence"} <= j.keys()
        assert j["sequence"] == cycle + 2 and j["bytes"] == SIZE
        data = snap_bytes(fake)
        truth[img] = data
        with Manifest.open(img + ".manifest") as m:        # the whole device's manifest
            assert m.digests() == H.reference_hash_blocks(data, BS)
        j = run_json(["restore", img, target], ctl, capsys)
        assert j["links"] == cycle + 2 and j["verified"]
        assert [c["sequence"] for c in j["chain"]] == list(range(1, cycle + 3))
        assert Path(target).read_bytes() == data
        rc, out, err = run(["verify", target, "--against", "s"], ctl, capsys)
        assert rc == 0, out + err
        ctl.remove("s")
        prev = img
    # the verify above can fail: the origin has moved on since the last snapshot
    take(ctl, cat)
    scribble(fake, rnd, 3)
    ctl.remove("s")
    s = take(ctl, cat)
    rc, out, _ = run(["verify", target, "--against", "s"], ctl, capsys)
    assert rc == 1 and "differ" in out
    # every link restores its own cycle's snapshot
    for img, data in truth.items():
        out_path = str(tmp_path / "again.img")
        run_json(["restore", img, out_path], ctl, capsys)
        assert Path(out_path).read_bytes() == data


def test_incremental_with_nothing_changed(fake, ctl, dirs, tmp_path, capsys):
    cat, bk = dirs
    rnd = random.Random(3)
    full = full_backup(ctl, fake, cat, bk, rnd, capsys)
    take(ctl, cat)
    j = run_json(["backup", "s", str(bk / "i.img"), "--since", full], ctl, capsys)
    assert (j["changed_blocks"], j["bytes_copied"], j["extents"]) == (0, 0, 0)
    assert j["image_bytes"] == 4096
    run_json(["restore", str(bk / "i.img"), str(tmp_path / "r")], ctl, capsys)
    assert (tmp_path / "r").read_bytes() == snap_bytes(fake)


@pytest.mark.parametrize("manifest_bs,max_bits", [
    (1024, None),         # manifest blocks smaller than map blocks
    (65536, None),        # larger: one manifest block spans 16 map blocks
    (3000, None),         # not aligned with them at all
    (4096, 256),          # map blocks of 64 KiB (a big origin's), manifest of 4 KiB
])
def test_manifest_and_map_block_sizes_differ(tmp_path, capsys, manifest_bs, max_bits):
    kw = {"cbt_max_bits": max_bits} if max_bits else {}
    fake = FakeSystem(tmp_path / "fake", loaded=True, origin_bytes=SIZE, **kw)
    ctl = Controller(system=fake)
    cat, bk = tmp_path / "c", tmp_path / "b"
    cat.mkdir()
    bk.mkdir()
    rnd = random.Random(manifest_bs)
    fake.write_origin(ORIGIN, 0, rnd.randbytes(SIZE))
    s = take(ctl, cat)
    cbs = s.cbt_block_size
    assert cbs == (65536 if max_bits else BS)             # 2^8 bits cover 12 MiB in 64 KiB
    nbits = -(-SIZE // cbs)
    full = str(bk / "full.img")
    run_json(["backup", "s", full, "--block-size", str(manifest_bs)], ctl, capsys)
    ctl.remove("s")
    prev = full
    for cycle in range(3):
        scribble(fake, rnd, 12, maxlen=3000)
        fake.write_origin(ORIGIN, SIZE - 7, b"tail!!!")
        take(ctl, cat)
        img = str(bk / f"i{cycle}.img")
        j = run_json(["backup", "s", img, "--since", prev], ctl, capsys)
        data = snap_bytes(fake)
        with Manifest.open(img + ".manifest") as m:
            assert m.header.block_size == manifest_bs
            assert m.digests() == H.reference_hash_blocks(data, manifest_bs)
        # only the changed map blocks are stored, whatever the manifest's blocks (the
        # last one, always written here, ends with the device)
        assert j["changed_blocks"] == ctl.snapshot("s").cbt_changed_blocks > 1
        assert j["bytes_copied"] == j["changed_blocks"] * cbs - (nbits * cbs - SIZE)
        assert j["bytes_read"] >= j["bytes_copied"]
        if manifest_bs > cbs:
            assert j["bytes_read"] > j["bytes_copied"]    # whole manifest blocks are hashed
        run_json(["restore", img, str(tmp_path / "r.img")], ctl, capsys)
        assert (tmp_path / "r.img").read_bytes() == data
        rc, _, err = run(["verify", str(tmp_path / "r.img"), "--against", "s"], ctl, capsys)
        assert rc == 0, err
        ctl.remove("s")
        prev = img


def test_incremental_size_follows_the_data_written(fake, ctl, dirs, capsys):
    cat, bk = dirs
    rnd = random.Random(5)
    full = full_backup(ctl, fake, cat, bk, rnd, capsys)
    for i in range(64):                                    # 64 scattered 4 KiB writes
        fake.write_origin(ORIGIN, (i * 37 % 3000) * BS, rnd.randbytes(BS))
    take(ctl, cat)
    j = run_json(["backup", "s", str(bk / "i.img"), "--since", full], ctl, capsys)
    written = 64 * BS
    assert j["bytes_copied"] == written
    assert written <= j["image_bytes"] <= 2 * written
    assert os.path.getsize(full) == SIZE                   # the full one holds everything


def test_full_backup_restart_drops_a_stale_chain_record(fake, ctl, dirs, tmp_path, capsys):
    cat, bk = dirs
    src = tmp_path / "plain.img"
    src.write_bytes(b"p" * 8192)
    img = bk / "x.img"
    full_backup(ctl, fake, cat, bk, random.Random(1), capsys, name="x.img")
    assert (bk / "x.img.chain").exists()
    rc, _, err = run(["backup", str(src), str(img), "--restart"], ctl, capsys)
    assert rc == 0, err
    assert not (bk / "x.img.chain").exists()               # a plain file has no generation


# ---- refusals of --since ------------------------------------------------------------------

def test_refused_when_the_generation_differs(fake, ctl, dirs, capsys):
    cat, bk = dirs
    full = full_backup(ctl, fake, cat, bk, random.Random(1), capsys)
    ctl.unload()
    ctl.load(4)                                            # module reload: continuity lost
    take(ctl, cat)
    err = refused(["backup", "s", str(bk / "i.img"), "--since", full], ctl, capsys)
    assert "generation" in err and "take a full backup" in err
    assert not (bk / "i.img").exists() and not (bk / "i.img.manifest").exists()
    assert [p.name for p in bk.iterdir() if p.name.startswith(".")] == []


def test_refused_after_a_resize(fake, ctl, dirs, capsys):
    cat, bk = dirs
    full = full_backup(ctl, fake, cat, bk, random.Random(1), capsys)
    fake.resize_origin(ORIGIN, SIZE + 64 * BS)
    take(ctl, cat)
    err = refused(["backup", "s", str(bk / "i.img"), "--since", full], ctl, capsys)
    assert "generation" in err and "take a full backup" in err


def test_refused_after_untrack(fake, ctl, dirs, capsys):
    cat, bk = dirs
    full = full_backup(ctl, fake, cat, bk, random.Random(1), capsys)
    ctl.untrack(ORIGIN)
    take(ctl, cat)
    assert "take a full backup" in refused(["backup", "s", str(bk / "i.img"), "--since", full],
                                           ctl, capsys)


def test_refused_when_a_sequence_is_missing(fake, ctl, dirs, capsys):
    cat, bk = dirs
    full = full_backup(ctl, fake, cat, bk, random.Random(1), capsys)
    take(ctl, cat)                                         # start 2: not backed up
    ctl.remove("s")
    s = take(ctl, cat)
    assert s.cbt_sequence == 3
    err = refused(["backup", "s", str(bk / "i.img"), "--since", full], ctl, capsys)
    assert "sequence 1" in err and "sequence 3" in err and "start 2" in err
    assert "take a full backup" in err


def test_refused_when_previous_is_not_older(fake, ctl, dirs, capsys):
    cat, bk = dirs
    full = full_backup(ctl, fake, cat, bk, random.Random(1), capsys)
    take(ctl, cat)
    i2 = str(bk / "i2.img")
    run_json(["backup", "s", i2, "--since", full], ctl, capsys)
    err = refused(["backup", "s", str(bk / "again.img"), "--since", i2], ctl, capsys)
    assert "not older" in err and "take a full backup" in err


def test_refused_for_another_origin(fake, ctl, dirs, capsys):
    cat, bk = dirs
    full = full_backup(ctl, fake, cat, bk, random.Random(1), capsys)
    take(ctl, cat)
    rec = json.loads(Path(full + ".chain").read_text())
    rec["origin"], rec["origin_dev"] = "/dev/vdb2", "254:18"  # same generation, other disk
    Path(full + ".chain").write_text(json.dumps(rec))
    err = refused(["backup", "s", str(bk / "i.img"), "--since", full], ctl, capsys)
    assert "/dev/vdb2" in err and "not of /dev/vdb1" in err and "take a full backup" in err
    ctl.remove("s")
    take(ctl, cat, "o", "/dev/vdb2")                       # a snapshot of the other origin
    err = refused(["backup", "o", str(bk / "j.img"), "--since", full], ctl, capsys)
    assert "take a full backup" in err


def test_refused_without_a_chain_record(fake, ctl, dirs, tmp_path, capsys):
    cat, bk = dirs
    src = tmp_path / "plain.img"
    src.write_bytes(b"a" * SIZE)
    plain = str(bk / "plain.img")
    run_json(["backup", str(src), plain], ctl, capsys)     # a path: no generation
    take(ctl, cat)
    err = refused(["backup", "s", str(bk / "i.img"), "--since", plain], ctl, capsys)
    assert "records no changed-block generation" in err and "take a full backup" in err
    err = refused(["backup", "s", str(bk / "i.img"), "--since", str(bk / "nope.img")], ctl,
                  capsys)
    assert "no such backup" in err
    err = refused(["backup", str(src), str(bk / "i.img"), "--since", plain], ctl, capsys)
    assert "needs a snapshot name" in err


def test_refused_options_and_existing_image(fake, ctl, dirs, capsys):
    cat, bk = dirs
    full = full_backup(ctl, fake, cat, bk, random.Random(1), capsys)
    take(ctl, cat)
    img = str(bk / "i.img")
    assert "--block-size" in refused(["backup", "s", img, "--since", full, "--block-size",
                                      "64k"], ctl, capsys)
    assert "cblb restore" in refused(["backup", "s", img, "--since", full, "--verify"], ctl,
                                     capsys)
    assert "rests on" in refused(["backup", "s", full, "--since", full, "--restart"], ctl,
                                 capsys)
    run_json(["backup", "s", img, "--since", full], ctl, capsys)
    assert "--restart" in refused(["backup", "s", img, "--since", full], ctl, capsys)
    j = run_json(["backup", "s", img, "--since", full, "--restart"], ctl, capsys)
    assert j["sequence"] == 2


def test_interrupted_incremental_leaves_nothing(fake, ctl, dirs, capsys):
    cat, bk = dirs
    rnd = random.Random(9)
    full = full_backup(ctl, fake, cat, bk, rnd, capsys)
    scribble(fake, rnd, 30)
    take(ctl, cat)
    job = I.IncrementalBackup(ctl, "s", str(bk / "i.img"), full)

    def boom(n: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        job.run(boom)
    assert sorted(p.name for p in bk.iterdir()) == ["full.img", "full.img.chain",
                                                    "full.img.manifest"]


def test_failed_snapshot_during_the_backup_keeps_nothing(fake, ctl, dirs, capsys):
    cat, bk = dirs
    rnd = random.Random(9)
    full = full_backup(ctl, fake, cat, bk, rnd, capsys)
    scribble(fake, rnd, 30)
    take(ctl, cat)
    job = I.IncrementalBackup(ctl, "s", str(bk / "i.img"), full)
    with pytest.raises(CblbError, match="became failed"):
        job.run(lambda n: fake.copy("s", 1 << 40))         # the store fills meanwhile
    assert not (bk / "i.img").exists()


# ---- restore refusals ---------------------------------------------------------------------

@pytest.fixture
def chain(fake, ctl, dirs, capsys) -> list[str]:
    """full (1) <- i2 <- i3 <- i4, the snapshot of start 4 still there."""
    cat, bk = dirs
    rnd = random.Random(77)
    imgs = [full_backup(ctl, fake, cat, bk, rnd, capsys)]
    for seq in (2, 3, 4):
        scribble(fake, rnd, 10)
        take(ctl, cat)
        img = str(bk / f"i{seq}.img")
        run_json(["backup", "s", img, "--since", imgs[-1]], ctl, capsys)
        if seq != 4:
            ctl.remove("s")
        imgs.append(img)
    return imgs


def test_restore_missing_link(chain, ctl, tmp_path, capsys):
    os.rename(chain[2], str(tmp_path / "elsewhere.img"))
    err = refused(["restore", chain[3], str(tmp_path / "t")], ctl, capsys)
    assert f"the chain needs {chain[2]}, which is missing" in err
    assert not (tmp_path / "t").exists()


def test_restore_missing_manifest_of_a_link(chain, ctl, tmp_path, capsys):
    os.unlink(chain[1] + ".manifest")
    err = refused(["restore", chain[3], str(tmp_path / "t")], ctl, capsys)
    assert f"the chain needs {chain[1]}.manifest, which is missing" in err


def test_restore_wrong_order(chain, ctl, tmp_path, capsys):
    for suffix in ("", ".manifest"):                       # i2 where i3 should be
        shutil.copyfile(chain[1] + suffix, chain[2] + suffix)
    err = refused(["restore", chain[3], str(tmp_path / "t")], ctl, capsys)
    assert "wrong order" in err and "sequence 2" in err


def test_restore_link_from_another_generation(chain, fake, ctl, dirs, tmp_path, capsys):
    cat, bk = dirs
    ctl.remove("s")
    ctl.unload()
    ctl.load(4)
    other = full_backup(ctl, fake, cat, bk, random.Random(5), capsys, name="other.img",
                        fill=False)
    for suffix in ("", ".manifest", ".chain"):             # another generation's full one
        shutil.copyfile(other + suffix, chain[0] + suffix)
    err = refused(["restore", chain[1], str(tmp_path / "t")], ctl, capsys)
    assert "another generation" in err


def test_restore_base_replaced_by_another_backup(chain, fake, ctl, dirs, tmp_path, capsys):
    cat, bk = dirs
    twin = str(bk / "i4-twin.img")          # same generation and sequence, another backup
    run_json(["backup", "s", twin, "--since", chain[2]], ctl, capsys)
    ctl.remove("s")
    scribble(fake, random.Random(4), 5)
    take(ctl, cat)
    i5 = str(bk / "i5.img")
    run_json(["backup", "s", i5, "--since", chain[3]], ctl, capsys)
    for suffix in ("", ".manifest"):
        shutil.copyfile(twin + suffix, chain[3] + suffix)
    err = refused(["restore", i5, str(tmp_path / "t")], ctl, capsys)
    assert "is not the backup" in err and chain[3] in err


def test_restore_follows_a_moved_chain(chain, ctl, fake, tmp_path, capsys):
    moved = tmp_path / "moved"
    shutil.move(str(Path(chain[0]).parent), moved)
    target = str(tmp_path / "t")
    j = run_json(["restore", str(moved / "i4.img"), target], ctl, capsys)
    assert j["chain"][0]["image"] == str(moved / "full.img")
    assert Path(target).read_bytes() == snap_bytes(fake)


def test_restore_detects_damaged_data(chain, ctl, tmp_path, capsys):
    link = I.read_link(chain[2])
    off, _n = link.extents[0]
    with open(chain[2], "r+b") as f:                       # one byte of i3's data
        f.seek(link.data_offset)
        b = f.read(1)
        f.seek(link.data_offset)
        f.write(bytes([b[0] ^ 0xFF]))
    err = refused(["restore", chain[3], str(tmp_path / "t")], ctl, capsys)
    assert "does not match" in err and f"blocks {off // BS}" in err


def test_restore_detects_a_damaged_header(chain, ctl, tmp_path, capsys):
    with open(chain[3], "r+b") as f:
        f.seek(70)
        b = f.read(1)
        f.seek(70)
        f.write(bytes([b[0] ^ 0x01]))
    err = refused(["restore", chain[3], str(tmp_path / "t")], ctl, capsys)
    assert "checksum mismatch" in err


def test_restore_refuses_a_target_of_the_chain(chain, ctl, capsys):
    err = refused(["restore", chain[3], chain[0]], ctl, capsys)
    assert "a file of the chain" in err
    assert I.read_link(chain[0]).kind == "full"


def test_restore_into_a_larger_existing_file_truncates_it(chain, ctl, fake, tmp_path, capsys):
    target = tmp_path / "t"
    target.write_bytes(b"\xaa" * (SIZE + 12345))
    run_json(["restore", chain[3], str(target)], ctl, capsys)
    assert target.read_bytes() == snap_bytes(fake)


# ---- the format itself --------------------------------------------------------------------

def test_changed_runs_reads_bits_lsb_first():
    assert I.changed_runs(bytes([0b00000001]), 8) == [(0, 1)]
    assert I.changed_runs(bytes([0b10000000, 0b00000001]), 16) == [(7, 9)]
    assert I.changed_runs(b"\xff\xff\x0f" + bytes(5), 64) == [(0, 20)]
    assert I.changed_runs(b"\xff", 5) == [(0, 5)]          # bits past the end ignored
    assert I.changed_runs(bytes([0b01010101]), 8) == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert I.changed_runs(bytes(8), 64) == []


def test_group_extents_merges_shared_manifest_blocks():
    ext = [(0, 4096), (8192, 4096), (65536 * 3, 4096)]
    g = I.group_extents(ext, 65536, 1 << 20, gap=0)
    assert [(x.first, x.end, len(x.extents)) for x in g] == [(0, 1, 2), (3, 4, 1)]
    g = I.group_extents(ext, 1024, 1 << 20, gap=0)
    assert [(x.first, x.end) for x in g] == [(0, 4), (8, 12), (192, 196)]
    # extents up to `gap` bytes apart share one read
    g = I.group_extents(ext, 1024, 1 << 20, gap=4096)
    assert [(x.first, x.end, len(x.extents)) for x in g] == [(0, 12, 2), (192, 196, 1)]
    g = I.group_extents(ext, 1024, 1 << 20)            # the default, 64 KiB
    assert [(x.first, x.end, len(x.extents)) for x in g] == [(0, 12, 2), (192, 196, 1)]
    g = I.group_extents(ext, 1024, 1 << 20, gap=1 << 20)
    assert [(x.first, x.end, len(x.extents)) for x in g] == [(0, 196, 3)]


def test_incremental_header_is_self_describing(chain):
    link = I.read_link(chain[3])
    raw = Path(chain[3]).read_bytes()
    assert raw[:8] == b"CBLBINCR" and link.data_offset % 4096 == 0
    assert len(raw) == link.data_offset + link.data_bytes
    assert link.kind == "incremental" and link.sequence == 4
    assert link.base["relative"] == "i3.img" and link.base["sequence"] == 3
    assert link.base["manifest_checksum"] == \
        f"{Manifest.open(chain[2] + '.manifest').header.checksum:016x}"


def test_newest_pieces_write_each_byte_once_from_its_newest_link():
    """Random chains: applying newest_pieces gives what applying every link in order gives,
    and no byte is written by two incrementals."""
    rng = random.Random(7)
    size = 1 << 16
    for _trial in range(200):
        links, expect = [], bytearray(size)
        for k in range(rng.randint(1, 6)):
            cuts = sorted(rng.sample(range(0, size, 512), rng.randint(0, 12) * 2))
            extents = [(a, b - a) for a, b in zip(cuts[::2], cuts[1::2])]
            links.append(I.Link(f"/l{k}", {}, extents, data_offset=4096 * k))
            for off, n in extents:
                expect[off:off + n] = bytes([k + 1]) * n
        got, owner = bytearray(size), [None] * size
        for link, pieces in I.newest_pieces(links):
            k = int(link.path[2:])
            file_pos = {}
            pos = link.data_offset
            for off, n in link.extents:
                for b in range(n):
                    file_pos[pos + b] = off + b     # file byte -> device byte
                pos += n
            for off, n, p in pieces:
                assert all(file_pos[p + b] == off + b for b in range(0, n, 97))
                for b in range(off, off + n):
                    assert owner[b] is None, "a byte written twice"
                    owner[b] = k
                got[off:off + n] = bytes([k + 1]) * n
        assert got == expect
