"""Rendering helpers shared by subcommands: human tables and --json."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any, Iterable, Sequence


def emit_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def point_in_time(ns: int) -> str:
    """A start_time_ns as local time to the microsecond, with its UTC offset."""
    return datetime.fromtimestamp(ns / 1e9).astimezone().isoformat(sep=" ",
                                                                   timespec="microseconds")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    rows = [[str(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, r)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers)] + [fmt.format(*r) for r in rows]
    return "\n".join(line.rstrip() for line in lines)
