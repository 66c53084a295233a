"""Block-level oracles for lab tests: raw comparisons, file checksums, fio loads."""

from __future__ import annotations

import hashlib
import mmap
import os
import signal
import subprocess
from pathlib import Path

BLOCK = 4096
SPAN = 1 << 20


def differing_blocks(a: str, b: str, size: int | None = None) -> list[int]:
    """4 KiB block numbers where a and b differ (devices or files), reading both in step."""
    out: list[int] = []
    with open(a, "rb", buffering=0) as fa, open(b, "rb", buffering=0) as fb:
        pos = 0
        while size is None or pos < size:
            want = SPAN if size is None else min(SPAN, size - pos)
            x, y = fa.read(want), fb.read(want)
            if not x and not y:
                break
            if x != y:
                for off in range(0, max(len(x), len(y)), BLOCK):
                    if x[off:off + BLOCK] != y[off:off + BLOCK]:
                        out.append((pos + off) // BLOCK)
            pos += max(len(x), len(y))
    return out


def read_direct(path: str, offset: int, size: int) -> bytes:
    """size bytes at offset, read with O_DIRECT (one request from the caller's view)."""
    buf = mmap.mmap(-1, size)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        assert os.preadv(fd, [buf], offset) == size
        return bytes(buf)
    finally:
        os.close(fd)
        buf.close()


def blocks_in_extents(extents: list[tuple[int, int]]) -> set[int]:
    """4 KiB blocks covered by (start sector, sectors) extents."""
    s: set[int] = set()
    for start, n in extents:
        s.update(range(start * 512 // BLOCK, ((start + n) * 512 + BLOCK - 1) // BLOCK))
    return s


def file_sha256(path: str | Path) -> str:
    """sha256 of a file or device, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(SPAN), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_checksums(root: Path) -> dict[str, str]:
    """sha256 of every regular file under root, by relative path."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if p.is_symlink() or not p.is_file():
                continue
            out[str(p.relative_to(root))] = file_sha256(p)
    return out


def fill_files(d: Path, count: int, size_mb: int) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        with open(d / f"f{i:03d}.bin", "wb") as f:
            f.write(os.urandom(size_mb << 20))
    subprocess.run(["sync"], check=True)


class FioLoad:
    """fio jobs writing to a mounted origin for as long as the test runs: random in-place
    overwrites of pre-existing files (buffered and O_DIRECT), and sequential new files."""

    def __init__(self, mnt: Path, static: Path, log: Path, rate_kib: int = 0) -> None:
        """``rate_kib``: cap each job at that many KiB/s (the random ones at a quarter and a
        half of it), for a load that leaves the emulated CPU to the test; 0: flat out."""
        files = sorted(static.glob("*.bin"))
        half = len(files) // 2
        direct = ":".join(str(f).replace(":", "\\:") for f in files[:half])
        buffered = ":".join(str(f).replace(":", "\\:") for f in files[half:])
        load = mnt / "load"
        load.mkdir(exist_ok=True)
        common = ["--time_based", "--runtime=7200", "--randrepeat=0", "--overwrite=1",
                  "--ioengine=psync", "--group_reporting"]

        def rate(kib: int) -> list[str]:
            return [f"--rate={max(kib, 4)}k"] if rate_kib else []
        self.argv = ["fio", "--output", str(log),
                     "--name=rand-direct", f"--filename={direct}", "--rw=randwrite",
                     "--bs=4k", "--direct=1", *common, *rate(rate_kib // 4),
                     "--name=rand-buffered", f"--filename={buffered}", "--rw=randwrite",
                     "--bs=16k", "--direct=0", "--fsync=32", *common, *rate(rate_kib // 2),
                     "--name=seq", f"--directory={load}", "--rw=write", "--bs=1m",
                     "--size=24m", "--direct=0", "--time_based", "--runtime=7200",
                     "--ioengine=psync", *rate(rate_kib)]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "FioLoad":
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
