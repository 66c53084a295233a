"""Experiment ``catstream`` (issue 24): whole-device reads of the origin and of an unchanged
cblb snapshot by dd, and ``cblb cat`` of that snapshot to /dev/null and through a pipe
(cblb/stream.py, in-process); the report gives each as a ratio to dd of the origin.
"""

from __future__ import annotations

import os
import re
import subprocess
import time

from ... import stream
from ..rig import Rig


def _timed_dd(path: str) -> float:
    """Seconds dd takes to read ``path`` whole in 4 MiB O_DIRECT reads, as dd reports them
    (its process start-up left out, as the in-process cblb cat has none)."""
    t = time.monotonic()
    r = subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=4M", "iflag=direct"],
                       capture_output=True, text=True, env={"LC_ALL": "C"}, check=True)
    m = re.search(r"copied, ([0-9.e+-]+) s", r.stderr)
    return float(m.group(1)) if m else time.monotonic() - t


def catstream_one(rig: Rig, rep: int) -> None:
    """Whole-device reads, one after the other: dd of the origin (4 MiB, O_DIRECT), dd
    of an unchanged snapshot of it, `cblb cat` of that snapshot to /dev/null and
    through a pipe into dd (cblb/stream.py, the code the command runs, in-process so
    that the interpreter's start-up is not counted)."""
    path, snap, handle = rig.target_open("cblb")
    try:
        size = rig.ctl.system.device_size(path)
        figures = {"dd_origin": _timed_dd(path), "dd_snapshot": _timed_dd(snap)}
        with open(os.devnull, "wb") as null:
            t = time.monotonic()
            stream.cat(snap, null.fileno())
            figures["cat"] = time.monotonic() - t
        reader = subprocess.Popen(["dd", "of=/dev/null", "bs=4M", "status=none"],
                                  stdin=subprocess.PIPE)
        assert reader.stdin is not None
        time.sleep(1)                    # dd is up and reading: its start-up not counted
        t = time.monotonic()
        stream.cat(snap, reader.stdin.fileno())
        reader.stdin.close()
        reader.wait()
        figures["cat_pipe"] = time.monotonic() - t
    finally:
        rig.target_close(handle)
    for phase, seconds in figures.items():
        rig.record("catstream", "cblb", {"read_bw": size / seconds, "bytes": size,
                                         "seconds": seconds},
                   workload="seqread", phase=phase, rep=rep,
                   info={"device": path, "snapshot": snap})
