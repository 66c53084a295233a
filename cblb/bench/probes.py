"""Probes of the environment the benchmark runs in, recorded in results.json's ``meta``:
the CPU, memory and whether the machine is emulated (:func:`machine_info`), the kernel
(:func:`kernel_info`) and a fixed loop's speed after each step (:func:`cpu_calibration`,
which shows how much CPU a shared guest got). They read /proc and time; none touches the
module or a device.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any


def cpu_calibration(seconds: float = 0.2) -> float:
    """Loop iterations per second of a fixed Python loop: shows how the CPU the guest got
    varied during the run (other VMs share the host)."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(1000):
            pass
        n += 1000
    return n / (time.perf_counter() - t0)


def machine_info() -> dict[str, Any]:
    cpu = ""
    flags = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    mem = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    emulated = "QEMU" in cpu or "hypervisor" in flags
    return {"cpu": cpu, "cpus": os.cpu_count(), "mem_bytes": mem, "machine": platform.machine(),
            "hostname": platform.node(), "emulated": emulated,
            "tcg": "TCG" in cpu}


def kernel_info(note: str = "") -> dict[str, Any]:
    u = os.uname()
    cmdline = ""
    try:
        cmdline = Path("/proc/cmdline").read_text().strip()
    except OSError:
        pass
    return {"release": u.release, "version": u.version, "cmdline": cmdline, "note": note}
