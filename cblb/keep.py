"""Changed-block tracking kept across a clean restart, and never trusted otherwise.

Without this, every module unload (every reboot) begins a new generation, and the next
backup of every origin is a full one. With it, ``cblb tracking save`` at shutdown writes a
*record* per tracked origin, and ``cblb tracking resume`` at the next boot gives the
origin's new tracking the saved generation, sequence and map, so that ``backup --since``
goes on with the chain. The kernel side is in kmod/doc/CBT.md ("Across a restart").

Resume only when no write can have escaped. That is shown, or the origin gets a new
generation (its next ``--since`` refuses with its one line):

- at save: no snapshot of the origin (its maps rotate at start), the origin not mounted
  read-write (a later write would be missed), the keep folder not on the origin; the
  device's dirty page cache flushed, then the module's ``seal`` makes any write after it
  visible; the record is written to a temporary file and renamed into place only if,
  after a second flush, the ``sealed`` attribute still says ``yes``;
- at resume, after tracking began (so any write from then on is in the map): the record
  says ``saved`` (a boot that resumed rewrites it to ``live`` before it resumes, so a
  crash or power cut leaves ``live`` behind); the device is the same (size, the
  filesystem's UUID, the partition's PARTUUID, a loop device's backing file and inode);
  the filesystem's own record of its last write (:mod:`cblb.fsstamp`) is unchanged since
  the save; the device is not mounted; the record's checksum, version and map size hold.

Record format (``<keep folder>/<disk>.cbt``, version 1): the line ``CBLB-TRACKING 1``,
one line of JSON (state, device, identity, stamp, generation, sequence, block size, map
size, boot id, reason), the map compressed with zlib, and the SHA-256 of all of that
(32 bytes). Any fault in it is a new generation, never a crash.

Where the chain cannot survive: the root filesystem (its last write, the read-only
remount at the very end of shutdown, comes after every place a record could be written),
origins with no ext4 or xfs on them, and writes that bypass the filesystem while cblb is
not loaded (a raw ``dd`` to the unmounted device): see README, "Tracking across a restart".
"""

from __future__ import annotations

import errno as E
import hashlib
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .control import Controller
from .errors import CblbError
from .fsio import AtomicFile
from .fsstamp import Stamp, read_stamp
from .model import Tracking
from .system import devnum, devnum_of_fs

KEEP_DIR = "/var/lib/cblb/tracking"
MAGIC = b"CBLB-TRACKING 1\n"
SUFFIX = ".cbt"
DIGEST = 32


class RecordError(Exception):
    """A record that cannot be trusted: the message says why, for a person."""


@dataclass
class Record:
    state: str                          # "saved" (a map to resume) or "live"
    device: str                         # /dev/<disk>
    identity: dict[str, Any] = field(default_factory=dict)
    stamp: Stamp | None = None
    generation: str = ""
    sequence: int = 0
    block_size: int = 0
    bitmap: bytes = b""
    boot_id: str = ""
    reason: str = ""                    # why a live record is live

    def encode(self) -> bytes:
        head = {
            "state": self.state, "device": self.device, "identity": self.identity,
            "stamp": self.stamp.to_json() if self.stamp else None,
            "generation": self.generation, "sequence": self.sequence,
            "block_size": self.block_size, "map_bytes": len(self.bitmap),
            "boot_id": self.boot_id, "reason": self.reason,
        }
        body = MAGIC + json.dumps(head, sort_keys=True).encode() + b"\n" + \
            zlib.compress(self.bitmap, 1)
        return body + hashlib.sha256(body).digest()

    @classmethod
    def decode(cls, data: bytes) -> Record:
        if data and len(data) < len(MAGIC) and MAGIC.startswith(data):
            raise RecordError("it is truncated")
        if not data.startswith(MAGIC[:14]):
            raise RecordError("it is not a cblb tracking record")
        if not data.startswith(MAGIC):
            first = data[:data.find(b"\n")].decode(errors="replace")
            raise RecordError(f"it is of another format version ({first})")
        if len(data) < len(MAGIC) + DIGEST or \
                hashlib.sha256(data[:-DIGEST]).digest() != data[-DIGEST:]:
            raise RecordError("its checksum does not match (truncated or corrupted)")
        body = data[len(MAGIC):-DIGEST]
        nl = body.find(b"\n")
        try:
            head = json.loads(body[:nl])
            bitmap = zlib.decompress(body[nl + 1:])
            stamp = Stamp.from_json(head["stamp"]) if head.get("stamp") else None
            rec = cls(state=str(head["state"]), device=str(head["device"]),
                      identity=dict(head["identity"]), stamp=stamp,
                      generation=str(head["generation"]), sequence=int(head["sequence"]),
                      block_size=int(head["block_size"]), bitmap=bitmap,
                      boot_id=str(head.get("boot_id", "")), reason=str(head.get("reason", "")))
        except (ValueError, KeyError, TypeError, zlib.error) as e:
            raise RecordError(f"its contents do not parse ({e})") from None
        if len(rec.bitmap) != int(head["map_bytes"]):
            raise RecordError("its map has the wrong size")
        return rec


@dataclass
class Outcome:
    """What happened to one origin: for the CLI's line and its --json."""

    device: str
    done: bool                          # saved, or resumed
    generation: str = ""
    sequence: int = 0
    why: str = ""                       # when not done: the reason, for a person

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device, "done": self.done, "generation": self.generation,
                "sequence": self.sequence, "why": self.why}


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def identity(ctl: Controller, device: str) -> dict[str, Any]:
    """What makes ``device`` the same device at the next boot: its size, its PARTUUID
    (a partition), its backing file and inode (a loop device). Its filesystem's UUID is
    in the stamp, compared apart."""
    name = os.path.basename(os.path.realpath(device))
    ident: dict[str, Any] = {"size": ctl.system.device_size(device)}
    sysdir = Path("/sys/class/block") / name
    try:
        backing = (sysdir / "loop" / "backing_file").read_text().strip()
        ident["loop backing file"] = backing
        try:
            st = os.stat(backing)
            ident["loop backing inode"] = f"{st.st_dev}:{st.st_ino}"
        except OSError:
            ident["loop backing inode"] = ""
    except OSError:
        pass
    if (sysdir / "partition").exists():
        r = ctl.system.run(["blkid", "-p", "-o", "value", "-s", "PART_ENTRY_UUID", device])
        ident["partuuid"] = r.stdout.strip() if r.returncode == 0 else ""
    return ident


def _record_path(keep_dir: str, disk: str) -> str:
    return os.path.join(keep_dir, disk + SUFFIX)


def _write(keep_dir: str, disk: str, rec: Record,
           before_rename: Callable[[], None] | None = None) -> None:
    """The record, atomically; ``before_rename`` (run once it is written and before it
    replaces the old one) may raise to leave the old one in place."""
    os.makedirs(keep_dir, mode=0o700, exist_ok=True)
    with AtomicFile(_record_path(keep_dir, disk), perm=0o600) as f:
        f.write(rec.encode())
        if before_rename is not None:
            before_rename()


def _live(keep_dir: str, t: Tracking, reason: str) -> None:
    _write(keep_dir, t.disk, Record(state="live", device=f"/dev/{t.disk}",
                                    generation=t.generation, boot_id=boot_id(),
                                    reason=reason))


def forget(keep_dir: str, disk: str) -> None:
    """The origin is no longer tracked: no record, so no tracking at the next boot."""
    try:
        os.unlink(_record_path(keep_dir, disk))
    except FileNotFoundError:
        pass


# ---- save, at shutdown --------------------------------------------------------------

def _save_refusal(ctl: Controller, t: Tracking, keep_dir: str) -> str:
    snap = next((s for s in ctl.snapshots() if s.origin_dev == t.dev), None)
    if snap is not None:
        return f"a snapshot of it exists ({snap.name}); its maps rotate at every start"
    for m in ctl.system.mounts():
        if m.dev == t.dev and m.target == "/":
            return ("it is the root filesystem: its last write (the read-only remount at "
                    "the very end of shutdown) comes after every place a record could be "
                    "written")
        if m.dev == t.dev and "rw" in m.options.split(","):
            return (f"it is mounted read-write at {m.target}; a later write would be "
                    "missed (unmount it, or remount it read-only, first)")
    folder = Path(keep_dir)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the folder is made on the filesystem of its parent
    if devnum_of_fs(folder) == t.dev:
        return f"the keep folder {keep_dir} is on it"
    return ""


def flush_device(device: str) -> None:
    """Send the device's dirty page cache (buffered writes to the raw device) to it now,
    so that they are marked before the seal, or break it."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Unsealed(Exception):
    """Written while its map was saved: the record is not renamed into place."""


def save_one(ctl: Controller, t: Tracking, keep_dir: str) -> Outcome:
    """Save one origin; any failure leaves a live record (a new generation after the
    restart), with the reason."""
    device = f"/dev/{t.disk}"
    try:
        return _save_one(ctl, t, keep_dir, device)
    except (CblbError, OSError) as e:
        why = f"saving failed: {e}"
        try:
            _live(keep_dir, t, f"not saved at shutdown: {why}")
        except OSError:
            pass    # then the previous record, live since the boot, stays
        return Outcome(device, False, t.generation, t.sequence, why)


def _save_one(ctl: Controller, t: Tracking, keep_dir: str, device: str) -> Outcome:
    why = _save_refusal(ctl, t, keep_dir)
    stamp: Stamp | None = None
    if not why:
        try:
            flush_device(device)
            stamp = read_stamp(device)
        except OSError as e:
            why = f"it cannot be read ({os.strerror(e.errno or 0)})"
        else:
            if stamp is None:
                why = ("it holds no ext4 or xfs filesystem, whose own record of writes "
                       "would show a write made while cblb is not loaded")
    if why:
        _live(keep_dir, t, f"not saved at shutdown: {why}")
        return Outcome(device, False, t.generation, t.sequence, why)
    ctl.seal(device)
    now = next((x for x in ctl.tracking() if x.dev == t.dev), None)
    if now is None or now.generation != t.generation:
        return Outcome(device, False, t.generation, t.sequence, "untracked while saving")
    rec = Record(state="saved", device=device, identity=identity(ctl, device), stamp=stamp,
                 generation=now.generation, sequence=now.sequence,
                 block_size=now.block_size, bitmap=ctl.current_map(now), boot_id=boot_id())
    def seal_held() -> None:
        flush_device(device)
        if ctl.sealed(now) != "yes":
            raise _Unsealed

    try:
        # Renamed into place only once the seal held to here; a power loss before that
        # leaves the previous record, live since the boot.
        _write(keep_dir, t.disk, rec, before_rename=seal_held)
    except _Unsealed:
        why = "it was written while its map was saved"
        _live(keep_dir, t, f"not saved at shutdown: {why}")
        return Outcome(device, False, t.generation, t.sequence, why)
    return Outcome(device, True, now.generation, now.sequence)


def save(ctl: Controller, keep_dir: str = KEEP_DIR,
         devices: list[str] | None = None) -> list[Outcome]:
    """Save every tracked origin (or those of ``devices``) for the next boot."""
    ctl.require_loaded()
    tracked = ctl.tracking()
    if devices:
        want = {d: devnum(ctl.system.stat(d)) for d in devices}
        missing = [d for d, n in want.items() if n not in {t.dev for t in tracked}]
        if missing:
            raise CblbError(f"{', '.join(missing)}: not tracked ('cblb status' lists the "
                            "tracked origins)", E.ENOENT)
        tracked = [t for t in tracked if t.dev in want.values()]
    return [save_one(ctl, t, keep_dir) for t in tracked]


# ---- resume, at boot ----------------------------------------------------------------

def _resume_refusal(ctl: Controller, rec: Record, t: Tracking) -> str:
    if rec.state != "saved":
        return ("the boot that tracked it last ended without a save (a crash, a power cut, "
                "or the module unloaded without 'cblb tracking save')"
                + (f"; that boot's record: {rec.reason}" if rec.reason else ""))
    now = identity(ctl, rec.device)
    for k in sorted(set(rec.identity) | set(now)):
        if rec.identity.get(k) != now.get(k):
            return f"it is another device ({k}: {rec.identity.get(k)!r} -> {now.get(k)!r})"
    for m in ctl.system.mounts():
        if m.dev == t.dev:
            return f"it was mounted at {m.target} before its tracking began"
    try:
        stamp = read_stamp(rec.device)
    except OSError as e:
        return f"it cannot be read ({os.strerror(e.errno or 0)})"
    if rec.stamp is None or stamp is None:
        return "it holds no ext4 or xfs filesystem whose record of writes cblb reads"
    if stamp != rec.stamp:
        return rec.stamp.what_changed(stamp)
    if rec.block_size != t.block_size or len(rec.bitmap) != t.map_bytes:
        return (f"its saved map ({rec.block_size}-byte blocks, {len(rec.bitmap)} bytes) "
                f"does not fit its tracking ({t.block_size}-byte blocks)")
    return ""


def resume_one(ctl: Controller, path: str, keep_dir: str) -> Outcome:
    """Resume one origin, or give it a new generation; on every road but the resume the
    record is left live (or rewritten so), so that it is never trusted at a later boot."""
    disk = os.path.basename(path)[:-len(SUFFIX)]
    try:
        return _resume_one(ctl, path, keep_dir, disk)
    except (CblbError, OSError) as e:
        why = f"resuming failed: {e}"
        try:
            _write(keep_dir, disk, Record(state="live", device=f"/dev/{disk}",
                                          boot_id=boot_id(), reason=f"new generation: {why}"))
        except OSError:
            pass
        return Outcome(f"/dev/{disk}", False, why=why)


def _resume_one(ctl: Controller, path: str, keep_dir: str, disk: str) -> Outcome:
    rec: Record | None = None
    try:
        with open(path, "rb") as f:
            rec = Record.decode(f.read())
        device = rec.device
    except (OSError, RecordError) as e:
        why = f"its record {path} cannot be used: {e}"
        device = f"/dev/{disk}"
    else:
        why = ""
    if not os.path.exists(device):
        # Not tracked from boot on: a write made before it is tracked could not be seen.
        why = f"{device} was not there at boot"
        if rec is not None and rec.state == "saved":
            rec.state, rec.bitmap, rec.reason = "live", b"", f"new generation: {why}"
            _write(keep_dir, disk, rec)
        return Outcome(device, False, why=why)
    t = next((x for x in ctl.tracking() if x.disk == disk), None)
    if t is None:
        t = ctl.track(device)     # a refusal: resume_one leaves the record live
    if t.sequence:
        why = why or "it was started since its tracking began"
    if not why and rec is not None:
        why = _resume_refusal(ctl, rec, t)
    if why:
        _live(keep_dir, t, f"new generation at boot: {why}")
        return Outcome(device, False, t.generation, t.sequence, why)
    assert rec is not None
    # Live on disk before the resume: a crash from here on leaves no saved map behind.
    _live(keep_dir, t, f"resumed generation {rec.generation} at sequence {rec.sequence}")
    try:
        ctl.give_back_map(t, rec.bitmap)
        # names the generation the map went into: refused if it was re-made meanwhile
        ctl.resume(device, rec.generation, rec.sequence, rec.block_size, t.generation)
    except CblbError as e:
        return Outcome(device, False, t.generation, t.sequence, f"the module refused: {e}")
    return Outcome(device, True, rec.generation, rec.sequence)


def resume(ctl: Controller, keep_dir: str = KEEP_DIR,
           devices: list[str] | None = None) -> list[Outcome]:
    """Track every origin with a record (or those of ``devices``), resuming its saved
    generation where nothing can have escaped, a new generation otherwise."""
    ctl.require_loaded()
    try:
        names = sorted(n for n in os.listdir(keep_dir) if n.endswith(SUFFIX))
    except FileNotFoundError:
        names = []
    if devices:
        want = {d: os.path.basename(os.path.realpath(d)) + SUFFIX for d in devices}
        missing = [d for d, n in want.items() if n not in names]
        if missing:
            raise CblbError(f"{', '.join(missing)}: no tracking record in {keep_dir}",
                            E.ENOENT)
        names = [n for n in names if n in want.values()]
    return [resume_one(ctl, os.path.join(keep_dir, n), keep_dir) for n in names]
