"""A rich progress bar with throughput, on stderr, for the long-running commands."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

SHOW_FROM = 64 << 20  # bytes; shorter runs finish before a bar is worth drawing


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True
                 ) -> Iterator[Callable[[int], None] | None]:
    """Yield a callback ``advance(nbytes)``, or None when no bar is drawn (not a
    terminal, --json, or a short run)."""
    if not enabled or total < SHOW_FROM or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
