"""Origin write throughput and latency for the charts, when `cblb trace` is not wired in.

A sampler is any callable returning the newest per-interval samples (a list, maybe empty) of
the shape `cblb trace` produces::

    {"ts": 1700000000.0, "device": "loop0", "write_mb_s": 12.5, "write_iops": 310.0,
     "p50_us": 80.0, "p99_us": 900.0}

:class:`DiskstatsSampler` is the cheap fallback: it reads ``/proc/diskstats`` (no root, no
BPF) and turns the deltas of each origin's counters into throughput and IOPS. diskstats keeps
no latency distribution, only the total time spent writing, so it reports the mean write
latency as ``avg_us`` and leaves ``p50_us`` / ``p99_us`` out.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

SECTOR = 512
DISKSTATS = "/proc/diskstats"

Sample = dict[str, float | str]


def read_diskstats(path: str = DISKSTATS) -> dict[str, tuple[str, int, int, int]]:
    """major:minor -> (name, writes completed, sectors written, ms spent writing)."""
    out = {}
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) < 11:
                continue
            out[f"{p[0]}:{p[1]}"] = (p[2], int(p[7]), int(p[9]), int(p[10]))
    return out


class DiskstatsSampler:
    """Callable sampler over /proc/diskstats for the devices ``devices()`` names.

    ``devices`` returns the ``major:minor`` of each origin (``Snapshot.origin_dev``), so the
    sampler never has to open anything under /dev. The first call for a device only sets
    its baseline; each later call yields one sample per device.
    """

    def __init__(self, devices: Callable[[], Iterable[str]], path: str = DISKSTATS,
                 clock: Callable[[], float] = time.time) -> None:
        self.devices = devices
        self.path = path
        self.clock = clock
        self._last: dict[str, tuple[float, int, int, int]] = {}

    def __call__(self) -> list[Sample]:
        want = {d for d in self.devices() if d}
        if not want:
            self._last.clear()
            return []
        try:
            stats = read_diskstats(self.path)
        except OSError:
            return []
        now = self.clock()
        out: list[Sample] = []
        for majmin in sorted(want):
            if majmin not in stats:
                continue
            name, writes, sectors, ms = stats[majmin]
            prev = self._last.get(majmin)
            self._last[majmin] = (now, writes, sectors, ms)
            if prev is None or now <= prev[0]:
                continue
            dt = now - prev[0]
            dw = max(0, writes - prev[1])
            sample: Sample = {
                "ts": now, "device": name,
                "write_mb_s": max(0, sectors - prev[2]) * SECTOR / dt / 1e6,
                "write_iops": dw / dt,
            }
            if dw:
                sample["avg_us"] = max(0, ms - prev[3]) * 1000.0 / dw
            out.append(sample)
        for gone in set(self._last) - want:
            del self._last[gone]
        return out
