"""Subcommands of the `cblb` command line, one module per concern.

Each module exposes ``register(sub)`` which adds its subparsers; each subparser sets
``func(args, ctl) -> int`` (the exit code: 0 ok, 1 refused / differs, 2 usage) and may set
``trouble_exit`` (2 for verify, diff, manifest: a refusal there is trouble, as with cmp(1)).
Help strings are plain text: argparse prints them as they are.

A subcommand may live outside the library and register itself in the ``cblb.commands`` entry
point group (pyproject.toml): the page's ``cblb web`` (web/command.py), so that the library
never imports the page. A checkout whose installed metadata predates an entry point (``make
venv`` reinstalls when pyproject.toml changes) finds it in ``UNREGISTERED``, the same entry
points written once more (a host test keeps the two equal), loaded by name.
"""

from __future__ import annotations

import argparse
import importlib
from importlib.metadata import entry_points
from types import ModuleType
from typing import Iterator, Sequence

from ..errors import CblbError
from ..units import parse_blocks


def blocks_arg(text: str) -> int:
    """argparse type of a temp-file size: 64M, 1G, or a bare number of 512-byte blocks."""
    try:
        return parse_blocks(text)
    except CblbError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


ENTRY_POINTS = "cblb.commands"
UNREGISTERED = {"web": "web.command"}


def outside_commands() -> dict[str, str]:
    """Subcommand name -> the module outside the library that adds it (the entry points)."""
    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINTS)}
    return found or dict(UNREGISTERED)


def command_modules(names: Sequence[str]) -> Iterator[ModuleType]:
    """The modules adding the subcommands ``names`` (cblb/commands/NAME.py, or an entry
    point's), in that order, then those of the other entry points. A module not built yet
    (or a page not installed) is left out."""
    outside = outside_commands()
    for name in [*names, *(n for n in outside if n not in names)]:
        module = outside.get(name, f"{__name__}.{name}")
        try:
            yield importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and (module == e.name or module.startswith(e.name + ".")):
                continue
            raise
