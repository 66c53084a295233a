"""File writes that survive a crash, and reads and writes that do not stop short.

- :class:`AtomicFile`: a file written whole or not at all (a temporary file beside it,
  fsynced, renamed over it, its folder fsynced), as a ``with`` block;
  :func:`write_json_atomic` writes a JSON object that way.
- :func:`sync_dir`: fsync a folder, so a rename in it is on disk.
- :func:`pread_full` and :func:`pwrite_full`: read or write again after a short transfer;
  a failure says at which byte (:class:`IOErrorAt`).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import IO, Any


def umask() -> int:
    """The process's umask (reading it means setting it: set back at once)."""
    m = os.umask(0)
    os.umask(m)
    return m


def sync_dir(folder: str) -> None:
    fd = os.open(folder or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_if_there(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class AtomicFile:
    """A file written whole or not at all: ``with AtomicFile(path) as f:`` writes a temporary
    file in the same folder (made by the constructor: an OSError there is the caller's to
    word); leaving the block normally fsyncs it, gives it ``perm`` less the umask, renames it
    over ``path`` and fsyncs the folder. An exception removes the temporary file and leaves
    ``path`` as it was."""

    def __init__(self, path: str, perm: int = 0o644, text: bool = False) -> None:
        self.path = os.path.abspath(path)
        self.perm = perm
        fd, self.tmp = tempfile.mkstemp(dir=os.path.dirname(self.path), suffix=".tmp",
                                        prefix=f".{os.path.basename(self.path)}.")
        self.file: IO[Any] = os.fdopen(fd, "w" if text else "wb")

    def __enter__(self) -> IO[Any]:
        return self.file

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            try:
                self.file.flush()
                os.fsync(self.file.fileno())
                os.fchmod(self.file.fileno(), self.perm & ~umask())
                self.file.close()
                os.replace(self.tmp, self.path)
                sync_dir(os.path.dirname(self.path))
                return
            except BaseException:
                self._discard()
                raise
        self._discard()

    def _discard(self) -> None:
        self.file.close()
        unlink_if_there(self.tmp)


def write_json_atomic(path: str, obj: dict[str, Any]) -> None:
    """``obj`` as indented JSON, atomically (the mode open() would give: 0666 less umask)."""
    with AtomicFile(path, perm=0o666, text=True) as f:
        json.dump(obj, f, indent=1, sort_keys=True)


class IOErrorAt(OSError):
    """A pread or pwrite that failed, with the byte offset it failed at."""

    def __init__(self, err: OSError, offset: int) -> None:
        super().__init__(err.errno, err.strerror)
        self.offset = offset


def pread_full(fd: int, n: int, off: int) -> bytes:
    """``n`` bytes of ``fd`` at ``off``, reading on after a short read: fewer only where the
    file ends."""
    parts, got = [], 0
    while got < n:
        try:
            chunk = os.pread(fd, n - got, off + got)
        except OSError as e:
            raise IOErrorAt(e, off + got) from None
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def pwrite_full(fd: int, data: bytes | memoryview, off: int) -> None:
    """All of ``data`` to ``fd`` at ``off``, writing on after a short write."""
    mv = memoryview(data)
    while mv:
        try:
            n = os.pwrite(fd, mv, off)
        except OSError as e:
            raise IOErrorAt(e, off) from None
        mv, off = mv[n:], off + n
