"""The background worker behind the charts: samples the module and the origins over time.

Views never wait on sampling; they read :meth:`History.view`, a copy taken under the lock.
create_app starts one :class:`History` thread (not under TESTING, where tests call
:meth:`History.tick` themselves).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from cblb.errors import CblbError

Sampler = Callable[[], list[dict[str, Any]]]


@dataclass(frozen=True)
class GrowthPoint:
    ts: float
    cow_bytes: int
    files_used: int
    max_files: int
    store_bytes: int


@dataclass
class Projection:
    """Where the temp-file store runs out if the origin keeps changing at the recent rate."""

    rate: float            # bytes of copy-on-write per second (recent)
    full_ts: float | None  # when cow_bytes reaches store_bytes; None if not growing

    def seconds_left(self, now: float) -> float | None:
        return None if self.full_ts is None else max(0.0, self.full_ts - now)


def project(points: list[GrowthPoint], window: float = 60.0) -> Projection:
    """Least-squares slope of cow_bytes over the last ``window`` seconds."""
    if len(points) < 2:
        return Projection(0.0, None)
    last = points[-1]
    recent = [p for p in points if p.ts >= last.ts - window]
    if len(recent) < 2:
        recent = points[-2:]
    n = len(recent)
    mx = sum(p.ts for p in recent) / n
    my = sum(p.cow_bytes for p in recent) / n
    sxx = sum((p.ts - mx) ** 2 for p in recent)
    if sxx <= 0:
        return Projection(0.0, None)
    rate = sum((p.ts - mx) * (p.cow_bytes - my) for p in recent) / sxx
    if rate <= 0 or last.store_bytes <= 0:
        return Projection(max(rate, 0.0), None)
    left = max(0, last.store_bytes - last.cow_bytes)
    return Projection(rate, last.ts + left / rate)


class History:
    """Ring buffers of temp-file growth per snapshot and of origin I/O samples per device."""

    def __init__(self, controller: Any, sampler: Sampler | None = None, interval: float = 2.0,
                 points: int = 600, clock: Callable[[], float] = time.time) -> None:
        self.ctl = controller
        self.sampler = sampler
        self.interval = interval
        self.points = points
        self.clock = clock
        self.lock = threading.Lock()
        self.growth: dict[str, deque[GrowthPoint]] = {}
        self._epoch: dict[str, int] = {}      # start_time_ns: a new snapshot of the same name
        self.io: dict[str, deque[dict[str, Any]]] = {}
        self.origin_devs: list[str] = []      # for the diskstats sampler
        self.last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- sampling ---------------------------------------------------------------
    def tick(self) -> None:
        now = self.clock()
        try:
            snaps = self.ctl.snapshots()
            self.last_error = ""
        except (CblbError, OSError) as e:
            snaps = []
            self.last_error = e.for_page() if isinstance(e, CblbError) else str(e)
        with self.lock:
            self.origin_devs = [s.origin_dev for s in snaps]
            alive = set()
            for s in snaps:
                alive.add(s.name)
                if s.can_start:
                    continue  # nothing copied before start
                if self._epoch.get(s.name) != s.start_time_ns:
                    self._epoch[s.name] = s.start_time_ns
                    self.growth[s.name] = deque(maxlen=self.points)
                self.growth[s.name].append(GrowthPoint(now, s.cow_bytes, s.files_used,
                                                       s.max_files, s.store_bytes))
            for gone in set(self.growth) - alive:
                del self.growth[gone]
                self._epoch.pop(gone, None)
        samples: list[dict[str, Any]] = []
        if self.sampler is not None:
            try:
                samples = list(self.sampler() or [])
            except Exception as e:  # a broken tracer must not stop the growth charts
                self.last_error = f"throughput sampler failed: {e}"
        with self.lock:
            for smp in samples:
                dev = str(smp.get("device", "?"))
                buf = self.io.setdefault(dev, deque(maxlen=self.points))
                if buf and buf[-1].get("ts") == smp.get("ts"):
                    continue  # a sampler that hands the same newest sample twice
                buf.append(dict(smp))
            horizon = now - self.points * self.interval
            for dev in list(self.io):
                if not self.io[dev] or self.io[dev][-1].get("ts", 0) < horizon:
                    del self.io[dev]

    def view(self) -> tuple[dict[str, list[GrowthPoint]], dict[str, list[dict[str, Any]]]]:
        with self.lock:
            return ({k: list(v) for k, v in self.growth.items()},
                    {k: list(v) for k, v in self.io.items()})

    def latest_io(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return {k: dict(v[-1]) for k, v in self.io.items() if v}

    # ---- thread -----------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.interval)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="cblb-web-history",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
