"""A snapshot device's bytes to a file descriptor, for tools with their own formats:
``cblb cat`` (the whole device, e.g. into ``restic backup --stdin``) and ``cblb changes``
(only the extents the module's change map names, cblb/changes.py).

Reads are large (4 MiB) and aligned, into one page-aligned buffer, with ``O_DIRECT`` when
the device takes it (the snapshot's blocks do not push the page cache of a busy server
out; a file that refuses ``O_DIRECT``, such as one on tmpfs, is read through the cache with
sequential read-ahead advised). Writes loop until every byte is taken, so a pipe that
accepts less at a time is fine; a pipe is widened to 1 MiB first (F_SETPIPE_SZ).

Where the output goes (``out_kind``):

- a pipe, socket or terminal: a *stream*; ``cblb changes`` writes zeros for the unchanged
  ranges, so the stream is the device's size and a receiver that makes holes of zeros
  (``dd conv=sparse``, ``cp --sparse=always``) or deduplicates them (restic, borg) gets a
  sparse image;
- a regular file or a block device: *seekable*; ``cblb changes`` writes each extent at its
  offset and leaves the rest untouched: a new file (``> delta.img``) becomes a sparse file
  of the device's size, an existing image of the previous start opened without truncation
  (``1<> image``) is brought to this start in place.
"""

from __future__ import annotations

import errno as E
import fcntl
import mmap
import os
import stat
from typing import Iterable

from .errors import CblbError

READ_SIZE = 4 << 20          # bytes per read: large enough for disk speed, aligned
ALIGN = 4096                 # O_DIRECT: offsets, lengths and the buffer on 4 KiB
PIPE_SIZE = 1 << 20          # the default /proc/sys/fs/pipe-max-size


def open_source(path: str) -> tuple[int, bool]:
    """``path`` opened for reading, with ``O_DIRECT`` when it takes it: (fd, direct)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECT), True
    except OSError as e:
        if e.errno != E.EINVAL:
            raise
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    return fd, False


def out_kind(fd: int) -> str:
    """'seekable' for a regular file or block device, else 'stream'. Refuses a terminal
    (binary data on a screen) and a file opened for appending (offsets would be lost)."""
    if os.isatty(fd):
        raise CblbError("standard output is a terminal; redirect it to a file or a pipe "
                        "(cblb cat shadow-sda2 | restic backup --stdin ...)", E.EINVAL)
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:
            raise CblbError("standard output is opened for appending (>>): offsets would be "
                            "lost; use > for a new file or 1<> to update an image in place",
                            E.EINVAL)
        return "seekable"
    return "stream"


def widen_pipe(fd: int) -> None:
    """A pipe on ``fd`` holds 1 MiB (when the system allows), not 64 KiB: a 4 MiB read is
    written in 4 wake-ups of the reader instead of 64."""
    if stat.S_ISFIFO(os.fstat(fd).st_mode):
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass        # above /proc/sys/fs/pipe-max-size for this user: keep the default


def write_all(fd: int, data: memoryview) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


class Reader:
    """Aligned reads of one device into one reusable page-aligned buffer."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd, self.direct = open_source(path)
        self.size = os.lseek(self.fd, 0, os.SEEK_END)
        self.buf = mmap.mmap(-1, READ_SIZE)          # anonymous: page-aligned
        self.view = memoryview(self.buf)

    def close(self) -> None:
        os.close(self.fd)       # the buffer goes with the last view of it

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, offset: int, length: int) -> memoryview:
        """``length`` bytes (at most READ_SIZE) at ``offset``; short only at the end."""
        a = offset - offset % ALIGN
        n = min(-(-(offset + length - a) // ALIGN) * ALIGN, READ_SIZE)
        got = 0
        while got < n:
            k = os.preadv(self.fd, [self.view[got:n]], a + got)
            if k == 0:
                break
            got += k
        lo = offset - a
        return self.view[lo:max(lo, min(got, lo + length))]


def cat(path: str, out: int) -> int:
    """Write the whole device ``path`` to ``out``; the bytes written."""
    with Reader(path) as r:
        seekable = out_kind(out) == "seekable"
        widen_pipe(out)
        off = 0
        while off < r.size:
            data = r.read(off, min(READ_SIZE, r.size - off))
            if not data:
                raise CblbError(f"{path} ended at {off} bytes, before its size {r.size}",
                                E.EIO)
            if seekable:
                pwrite_all(out, data, off)
            else:
                write_all(out, data)
            off += len(data)
        return off


def write_extents(path: str, extents: Iterable[tuple[int, int]], out: int) -> int:
    """Write the extents (offset, length) of device ``path`` to ``out``, in place when it
    is seekable, as a stream of the device's size with zeros between them when not
    (the module docstring); the data bytes written."""
    kind = out_kind(out)
    widen_pipe(out)
    zeros = memoryview(bytes(READ_SIZE)) if kind == "stream" else memoryview(b"")
    done = 0
    with Reader(path) as r:
        if stat.S_ISBLK(os.fstat(out).st_mode) and os.lseek(out, 0, os.SEEK_END) < r.size:
            raise CblbError(f"standard output is a device smaller than {path} ({r.size} "
                            "bytes)", E.ENOSPC)
        pos = 0
        for off, n in extents:
            if kind == "stream":
                while pos < off:
                    k = min(READ_SIZE, off - pos)
                    write_all(out, zeros[:k])
                    pos += k
            end = off + n
            while off < end:
                data = r.read(off, min(READ_SIZE, end - off))
                if not data:
                    raise CblbError(f"{path} ended at {off} bytes, before its size {r.size}",
                                    E.EIO)
                if kind == "stream":
                    write_all(out, data)
                else:
                    pwrite_all(out, data, off)
                off += len(data)
                done += len(data)
            pos = end
        if kind == "stream":
            while pos < r.size:
                k = min(READ_SIZE, r.size - pos)
                write_all(out, zeros[:k])
                pos += k
        elif stat.S_ISREG(os.fstat(out).st_mode) and os.fstat(out).st_size < r.size:
            os.ftruncate(out, r.size)          # a new file: the device's size, holes between
    return done
