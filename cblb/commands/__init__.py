"""Subcommands of the `cblb` command line, one module per concern.

Each module exposes ``register(sub)`` which adds its subparsers; each subparser sets
``func(args, ctl) -> int`` (the exit code: 0 ok, 1 refused / differs, 2 usage) and may set
``trouble_exit`` (2 for verify, diff, manifest: a refusal there is trouble, as with cmp(1)).
Help strings are plain text: argparse prints them as they are.
"""

from __future__ import annotations

import argparse

from ..errors import CblbError
from ..units import parse_blocks


def blocks_arg(text: str) -> int:
    """argparse type of a temp-file size: 64M, 1G, or a bare number of 512-byte blocks."""
    try:
        return parse_blocks(text)
    except CblbError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
