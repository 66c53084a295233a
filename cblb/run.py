"""``cblb run ORIGIN... [--mount DIR] -- COMMAND``: a snapshot (one origin, or a set) for the
life of one command, released whatever happens to the command or to cblb.

What a run does, in order:

1. Under ``/run/cblb/runs/.lock`` (flock): every marker ``/run/cblb/runs/<id>.json`` of a run
   that is gone (its flock is free) is cleaned up (below); a live run of one of the same
   origins refuses this one, naming it (pid, snapshots, command); then this run's marker is
   written and flocked (``LOCK_EX``) for as long as cblb lives. The lock, not a pid, says a
   run is alive: the kernel drops it when the process dies, however it dies.
2. The snapshot: ``cblb snapshot``'s code (cblb/oneshot.py), mounted read-only at DIR
   (a set: DIR/<name> each); the marker records the names, origins, the folders the run
   made and, once started, each snapshot's point in time.
3. COMMAND runs with ``CBLB_ORIGINS``, ``CBLB_SNAPSHOTS``, ``CBLB_DEVICES``, ``CBLB_MOUNTS``
   (space-separated, in the order the origins were given), ``CBLB_SET``,
   ``CBLB_START_TIME_NS`` and, when the module tracks the origins' changes,
   ``CBLB_GENERATION``, ``CBLB_SEQUENCE`` and ``CBLB_CHANGED_FILE`` (the record of
   cblb/changes.py, one file per snapshot, under ``/run/cblb/runs/<id>/``). Its own process
   group (unless standard input is a terminal: then it stays in the terminal's, so that
   prompts and Ctrl-C reach it), and SIGTERM if cblb dies (``PR_SET_PDEATHSIG``).
   SIGINT, SIGTERM and SIGHUP sent to cblb are passed to it (SIGINT not when it shares
   the terminal's group: Ctrl-C reached it already); cblb waits for it to end.
4. Release, always: the command's group is ended if anything of it is left, every snapshot
   unmounted and removed, the folders the run made removed (only when empty), the run's
   files and marker deleted. A signal during steps 1-2 undoes what was done.

A run killed with SIGKILL leaves its marker unlocked: the next ``cblb run`` or ``cblb
release --stale`` ends what is left of its command (the process group or pid it recorded,
checked against the process's start time), then unmounts and removes each snapshot it
recorded whose name *and* origin match (and point in time, when recorded), and deletes the
folders it made and its files.

Exit status: COMMAND's; 128+N when COMMAND was killed by signal N; 127 when COMMAND is not
found, 126 when it cannot be run; 1 (cli.py) when the run is refused before COMMAND starts,
or when COMMAND succeeded but the release failed (the marker stays, so ``cblb release
--stale`` retries).
"""

from __future__ import annotations

import ctypes
import errno as E
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Iterator, Sequence

from . import changes, oneshot
from .control import Controller
from .errors import CblbError
from .model import Snapshot
from .system import check_block_device, devnum

RUNS = "runs"
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1
END_WAIT_S = 3.0             # a leftover command: SIGTERM, this long, then SIGKILL
RELEASE_TRIES = 3


class Interrupted(BaseException):
    """A signal arrived before COMMAND started: undo, then exit 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def process_start(pid: int) -> str:
    """The start time of process ``pid`` (/proc/<pid>/stat field 22), '' if it is gone:
    with the pid it names one process, never a later one that got the same pid."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return text.rpartition(")")[2].split()[19]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_processes(pgid: int, pid: int, pid_start: str) -> bool:
    """End what is left of a command: its process group ``pgid`` (when it had one of its
    own), else process ``pid`` if it is still the one that started at ``pid_start``.
    SIGTERM, then SIGKILL after END_WAIT_S. True if something had to be ended."""
    def alive() -> bool:
        if pgid:
            return _group_alive(pgid)
        return bool(pid) and process_start(pid) == pid_start != ""

    def send(sig: int) -> None:
        try:
            if pgid:
                os.killpg(pgid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass

    if not alive():
        return False
    send(signal.SIGTERM)
    deadline = time.monotonic() + END_WAIT_S
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive():
        send(signal.SIGKILL)
        deadline = time.monotonic() + END_WAIT_S
        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)
    return True


def _rmdir(path: str) -> bool:
    try:
        os.rmdir(path)          # only when empty: nothing of anyone's is lost
        return True
    except OSError:
        return False


@dataclass
class Marker:
    """One run's marker file, flocked while the run lives."""

    path: Path
    data: dict[str, Any]
    fd: int = -1

    @property
    def files(self) -> Path:
        """The run's own folder (the changed-extent records)."""
        return self.path.with_suffix("")

    def save(self) -> None:
        tmp = json.dumps(self.data, indent=1, sort_keys=True).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, tmp, 0)

    def describe(self) -> str:
        d = self.data
        snaps = ", ".join(m["name"] for m in d.get("members", []))
        since = time.strftime("%H:%M:%S", time.localtime(d.get("started_ns", 0) / 1e9))
        return (f"pid {d.get('pid')}, since {since}, snapshot {snaps}, command: "
                f"{shlex.join(d.get('command', []))[:120]}")


@dataclass
class Cleaned:
    """What cleaning up after one dead run did."""

    marker: str
    pid: int
    removed: list[str] = field(default_factory=list)
    unmounted: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    ended_command: bool = False
    left: list[str] = field(default_factory=list)     # what could not be cleaned, and why

    def to_json(self) -> dict[str, Any]:
        return {"marker": self.marker, "pid": self.pid, "removed": self.removed,
                "unmounted": self.unmounted, "folders": self.folders,
                "ended_command": self.ended_command, "left": self.left}


class Runs:
    """The markers of ``cblb run`` under the machine's run folder (/run/cblb/runs)."""

    def __init__(self, ctl: Controller) -> None:
        self.ctl = ctl
        self.dir = ctl.system.run_dir / RUNS

    def _ensure(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise CblbError(f"cannot create {self.dir}: {e.strerror}; run as root",
                            e.errno or 0) from None

    @contextmanager
    def locked(self) -> Iterator[None]:
        """The lock every run holds while it checks the others and writes its marker."""
        self._ensure()
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def markers(self) -> list[tuple[Marker, bool]]:
        """Every marker and whether its run is alive (holds its flock)."""
        out: list[tuple[Marker, bool]] = []
        if not self.dir.is_dir():
            return out
        for p in sorted(self.dir.glob("*.json")):
            try:
                fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    alive = False
                    fcntl.flock(fd, fcntl.LOCK_UN)
                except BlockingIOError:
                    alive = True
                raw = os.pread(fd, 1 << 20, 0)
            finally:
                os.close(fd)
            try:
                data = json.loads(raw) if raw else {}
            except ValueError:
                data = {}
            out.append((Marker(p, data if isinstance(data, dict) else {}), alive))
        return out

    def save(self, m: Marker) -> None:
        """Rewrite a live run's marker under the lock, so that no other run reads it half
        written."""
        with self.locked():
            m.save()

    def create(self, data: dict[str, Any]) -> Marker:
        """This run's marker, written and flocked (call with :meth:`locked` held)."""
        self._ensure()
        path = self.dir / f"{os.getpid()}-{time.time_ns()}.json"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        m = Marker(path, data, fd)
        m.save()
        return m

    def clean(self, m: Marker) -> Cleaned:
        """Release what the dead run of marker ``m`` left (the module docstring)."""
        d = m.data
        out = Cleaned(m.path.name, int(d.get("pid", 0)))
        out.ended_command = end_processes(int(d.get("pgid", 0)), int(d.get("child", 0)),
                                          str(d.get("child_start", "")))
        snaps = {s.name: s for s in self.ctl.snapshots()} if self.ctl.loaded() else {}
        for mem in d.get("members", []):
            s = snaps.get(mem.get("name", ""))
            if s is None or s.origin_dev != mem.get("origin_dev"):
                continue                   # gone already, or someone else's of that name
            t = int(mem.get("start_time_ns", 0))
            if t and s.start_time_ns != t:
                continue                   # taken again since, by someone else
            try:
                if s.mountpoint:
                    self.ctl.umount(s.mountpoint)
                    out.unmounted.append(s.mountpoint)
                self.ctl.remove(s.name)
                out.removed.append(s.name)
            except CblbError as e:
                out.left.append(f"{s.name}: {e}")
        for folder in reversed(d.get("made", [])):
            if _rmdir(folder):
                out.folders.append(folder)
        if not out.left:
            shutil.rmtree(m.files, ignore_errors=True)
            m.path.unlink(missing_ok=True)
        return out

    def release_stale(self) -> list[Cleaned]:
        """Clean up after every run that is gone; live runs are left alone."""
        with self.locked():
            return [self.clean(m) for m, alive in self.markers() if not alive]


def _child_setup(parent: int) -> Callable[[], None]:
    """What the command's process does before exec: SIGTERM when cblb dies."""
    libc = ctypes.CDLL(None, use_errno=True)

    def setup() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:           # cblb died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
    return setup


class _Signals:
    """SIGINT, SIGTERM and SIGHUP during a run: before COMMAND starts they interrupt the
    setup (:class:`Interrupted`), while it runs they are passed on to it, during the
    release they are only noted."""

    def __init__(self) -> None:
        self.child: subprocess.Popen[bytes] | None = None
        self.group = False
        self.releasing = False
        self.received: list[int] = []
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        for s in SIGNALS:
            self._old[s] = signal.signal(s, self._handle)

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signum)
        if self.releasing:
            return
        if self.child is None:
            raise Interrupted(signum)
        if signum == signal.SIGINT and not self.group:
            return      # Ctrl-C: the terminal sent it to the command too; twice may force it
        try:
            if self.group:
                os.killpg(self.child.pid, signum)
            else:
                self.child.send_signal(signum)
        except ProcessLookupError:
            pass


@dataclass
class RunResult:
    exit_code: int
    snapshots: list[str]
    released: bool


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(f"cblb run: {text}", file=sys.stderr, flush=True)


def _member_names(ctl: Controller, origins: Sequence[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for o in origins:
        st = check_block_device(o, ctl.system.stat)
        out.append({"origin": o, "origin_dev": devnum(st),
                    "name": oneshot.default_name(o, ctl.system.resolve), "start_time_ns": 0})
    return out


def _mount_targets(mount: str | None, members: list[dict[str, Any]], one: bool) -> list[str]:
    """Each member's mount folder, checked by the page's rule (cblb/folders.py): an empty or
    new folder, so that a mount never hides files; and without blanks, since CBLB_MOUNTS is
    a space-separated list."""
    if not mount:
        return []
    from .folders import check_mount_dir

    targets = [mount] if one else [os.path.join(mount, m["name"]) for m in members]
    out = []
    for t in targets:
        real = check_mount_dir(os.path.abspath(t), ("/",))
        if any(c.isspace() for c in real):
            raise CblbError(f"mount folder {real!r} contains blanks, which CBLB_MOUNTS (a "
                            "space-separated list) cannot carry: use a path without them",
                            E.EINVAL)
        out.append(real)
    return out


def _new_folders(mount: str | None, targets: list[str], catalog: str | None,
                 members: list[dict[str, Any]], as_set: bool) -> list[str]:
    """The folders the run is about to make (mount folders, catalogs), parents first: the
    release removes them, children first, each only when empty."""
    want = ([os.path.realpath(mount)] if mount else []) + targets
    if catalog is None:
        want += [str(oneshot.DEFAULT_CATALOG_ROOT / m["name"]) for m in members]
    else:
        cat = os.path.abspath(catalog)
        want += [cat] + ([os.path.join(cat, m["name"]) for m in members] if as_set and
                         len(members) > 1 else [])
    out: list[str] = []
    for p in want:
        if p not in out and not os.path.lexists(p):
            out.append(p)
    return out


def environment(snaps: list[Snapshot], set_name: str, origins: Sequence[str],
                changed_files: list[str]) -> dict[str, str]:
    """The CBLB_* variables COMMAND gets (the module docstring)."""
    env = {
        "CBLB_ORIGINS": " ".join(origins),
        "CBLB_SNAPSHOTS": " ".join(s.name for s in snaps),
        "CBLB_DEVICES": " ".join(s.device for s in snaps),
        "CBLB_MOUNTS": " ".join(s.mountpoint for s in snaps if s.mountpoint),
        "CBLB_SET": set_name,
        "CBLB_START_TIME_NS": str(snaps[0].start_time_ns if snaps else 0),
    }
    if snaps and all(s.has_cbt for s in snaps):
        env["CBLB_GENERATION"] = " ".join(s.cbt_generation for s in snaps)
        env["CBLB_SEQUENCE"] = " ".join(str(s.cbt_sequence) for s in snaps)
        env["CBLB_CHANGED_FILE"] = " ".join(changed_files)
    return env


def run(ctl: Controller, origins: Sequence[str], command: Sequence[str], *,
        mount: str | None = None, set_name: str | None = None, catalog: str | None = None,
        file_blocks: int | None = None, max_files: int | None = None, total: int = 4,
        allow_exec: bool = False, quiet: bool = False) -> RunResult:
    """The whole run (the module docstring); raises CblbError when refused before COMMAND."""
    if not command:
        raise CblbError("no command given: cblb run ORIGIN... -- COMMAND [ARGS]", E.EINVAL)
    if not origins:
        raise CblbError("no origin given: cblb run ORIGIN... -- COMMAND [ARGS]", E.EINVAL)
    members = _member_names(ctl, origins)
    devs = [m["origin_dev"] for m in members]
    if len(set(devs)) != len(devs):
        raise CblbError("an origin is given twice; give each once", E.EINVAL)
    as_set = len(origins) > 1 or set_name is not None
    targets = _mount_targets(mount, members, len(origins) == 1)
    runs = Runs(ctl)
    sig = _Signals()
    sig.install()
    marker: Marker | None = None
    result = RunResult(1, [m["name"] for m in members], False)
    try:
        with runs.locked():
            for m, alive in runs.markers():
                if alive:
                    theirs = {x.get("origin_dev") for x in m.data.get("members", [])}
                    both = [x["origin"] for x in members if x["origin_dev"] in theirs]
                    if both:
                        raise CblbError(f"{', '.join(both)} is in another cblb run ("
                                        f"{m.describe()}); wait for it to end, or stop it "
                                        f"with: kill {m.data.get('pid')}", E.EBUSY)
                else:
                    c = runs.clean(m)
                    if c.removed or c.ended_command:
                        _say(quiet, f"cleaned up after run {c.pid}, which was killed: removed "
                             f"{', '.join(c.removed) or 'no snapshot'}")
            made = _new_folders(mount, targets, catalog, members, as_set)
            marker = runs.create({"pid": os.getpid(), "pid_start": process_start(os.getpid()),
                                  "started_ns": time.time_ns(), "command": list(command),
                                  "members": members, "made": made, "pgid": 0, "child": 0,
                                  "child_start": ""})
        snaps = _take(ctl, origins, targets, mount, set_name, catalog, file_blocks,
                      max_files, total, allow_exec, as_set)
        for mem, s in zip(members, snaps):
            mem["start_time_ns"] = s.start_time_ns
        runs.save(marker)
        files = _changed_files(ctl, marker, snaps)
        env = dict(os.environ) | environment(snaps, snaps[0].set_name if as_set else "",
                                             origins, files)
        where = (f"mounted at {' '.join(targets)}" if targets
                 else f"devices {' '.join(s.device for s in snaps)}")
        _say(quiet, f"{', '.join(s.name for s in snaps)} ({where}); running "
             f"{shlex.join(command)[:200]}")
        result.exit_code = _run_command(command, env, sig, runs, marker)
    except Interrupted as e:
        _say(quiet, f"interrupted by signal {e.signum} before the command started; undoing")
        result.exit_code = 128 + e.signum
    finally:
        sig.releasing = True
        try:
            if marker is not None:
                result.released = _release(ctl, runs, marker, quiet)
                if not result.released and result.exit_code == 0:
                    result.exit_code = 1
        finally:
            sig.restore()
    return result


def _take(ctl: Controller, origins: Sequence[str], targets: list[str], mount: str | None,
          set_name: str | None, catalog: str | None, file_blocks: int | None,
          max_files: int | None, total: int, allow_exec: bool, as_set: bool) -> list[Snapshot]:
    if not as_set:
        return [oneshot.snapshot(ctl, origins[0], targets[0] if targets else None,
                                 catalog=catalog, file_blocks=file_blocks,
                                 max_files=max_files, total=total, allow_exec=allow_exec)]
    if len(origins) == 1:
        return [oneshot.snapshot(ctl, origins[0], targets[0] if targets else None,
                                 catalog=catalog, file_blocks=file_blocks,
                                 max_files=max_files, total=total, allow_exec=allow_exec,
                                 set_name=set_name)]
    r = oneshot.snapshot_set(ctl, origins, mount, set_name, catalog, file_blocks, max_files,
                             total, allow_exec)
    return r.snapshots


def _changed_files(ctl: Controller, marker: Marker, snaps: list[Snapshot]) -> list[str]:
    """One changes record per tracked snapshot, in the run's own folder."""
    if not all(s.has_cbt for s in snaps):
        return []
    marker.files.mkdir(mode=0o700, exist_ok=True)
    out = []
    for s in snaps:
        snap, size, ext = changes.changed_extents(ctl, s.name)
        p = marker.files / f"{s.name}.changes.json"
        p.write_text(json.dumps(changes.record(snap, size, ext)) + "\n")
        out.append(str(p))
    return out


def _run_command(command: Sequence[str], env: dict[str, str], sig: _Signals, runs: Runs,
                 marker: Marker) -> int:
    sig.group = not os.isatty(0)
    try:
        child = subprocess.Popen(list(command), env=env, preexec_fn=_child_setup(os.getpid()),
                                 process_group=0 if sig.group else None)
    except FileNotFoundError:
        print(f"cblb run: {command[0]}: command not found", file=sys.stderr)
        return 127
    except PermissionError:
        print(f"cblb run: {command[0]}: permission denied", file=sys.stderr)
        return 126
    sig.child = child
    marker.data.update(pgid=child.pid if sig.group else 0, child=child.pid,
                       child_start=process_start(child.pid))
    runs.save(marker)
    if sig.received:            # a signal between Popen and sig.child: pass it on now
        try:
            os.killpg(child.pid, sig.received[-1]) if sig.group else child.send_signal(
                sig.received[-1])
        except ProcessLookupError:
            pass
    rc = child.wait()
    return 128 - rc if rc < 0 else rc


def _release(ctl: Controller, runs: Runs, marker: Marker, quiet: bool) -> bool:
    """Release the run: end what is left of the command, then clean as for a dead run."""
    d = marker.data
    if end_processes(int(d.get("pgid", 0)), 0, ""):
        _say(quiet, "ended what was left of the command's process group")
    d.update(pgid=0, child=0, child_start="")
    for attempt in range(RELEASE_TRIES):
        c = runs.clean(marker)
        if not c.left:
            break
        time.sleep(0.5 * (attempt + 1))
    if c.left:
        _say(quiet, f"could not release {'; '.join(c.left)}; 'cblb release --stale' retries "
             "once this cblb has ended")
        os.close(marker.fd)
        return False
    os.close(marker.fd)
    if c.removed:
        _say(quiet, f"released {', '.join(c.removed)}")
    return True
