"""The `cblb` command line: one subcommand per step of the snapshot lifecycle.

Exit codes: 0 ok (or equal), 1 refused or differ (the message says why), 2 usage, or trouble
(a missing file, an unreadable device) in verify, diff and manifest; 3 diff found blocks the
module changed without a copy; 130 interrupted. Errors are one line on stderr, never a
traceback. Every command that changes state takes --json; with it a failure also prints
{"error": MESSAGE, "exit": CODE} on stdout.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import __version__
from .commands import command_modules
from .control import Controller
from .errors import CblbError
from .output import emit_json

# Modules under cblb/commands/ (or entry points: commands/__init__.py) adding subcommands, in help order.
COMMAND_MODULES = ("lifecycle", "snapshot", "tracking", "run", "backup", "verify", "trace", "web", "bench")

EPILOG = """examples:
  cblb load --total 4
  cblb snapshot /dev/sda2 --mount /mnt/snap     # create + start + mount, sensible defaults
  cblb start shadow-sda2 /var/tmp 64M 16        # temp files of 64 MiB (bare numbers: blocks)
  cblb backup shadow-sda2 /backup/sda2.img      # copy with progress, writes a manifest
  cblb backup shadow-sda2 /backup/sda2.1.img --since /backup/sda2.img   # changed blocks only
  cblb restore /backup/sda2.1.img /restore/sda2.img   # the chain, every block verified
  cblb release /mnt/snap                        # umount + remove
  cblb snapshot /dev/sdb1 /dev/sdc1 --mount /mnt/db   # one point in time for both (a set)
  cblb release /mnt/db                          # every member of the set
  cblb run /dev/sda2 --mount /mnt/s -- restic -r /srv/restic backup /mnt/s
  cblb cat shadow-sda2 | restic -r /srv/restic backup --stdin --stdin-filename sda2.img
  cblb list --json
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cblb", description="Consistent snapshots of live Linux "
                                "partitions (cblb_module).", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"cblb {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for mod in command_modules(COMMAND_MODULES):
        mod.register(sub)
    return p


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    """One line on stderr; with --json also {"error": ...} on stdout, so a script reading
    stdout always gets one JSON object."""
    print(f"cblb: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        emit_json({"error": message, "exit": code})
    return code


def split_command(argv: Sequence[str]) -> tuple[list[str], list[str] | None]:
    """``cblb run ... -- COMMAND ARGS``: (cblb's own words, COMMAND's words), split at the
    first ``--``, so that COMMAND's options are never taken for cblb's; None when the
    subcommand is not run or no ``--`` was given."""
    words = list(argv)
    sub = next((w for w in words if not w.startswith("-")), None)
    if sub != "run" or "--" not in words:
        return words, None
    i = words.index("--")
    return words[:i], words[i + 1:]


def main(argv: Sequence[str] | None = None, ctl: Controller | None = None) -> int:
    parser = build_parser()
    own, command = split_command(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(own)
    if command is not None:
        args.command_words = command
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    ctl = ctl or Controller()
    try:
        return int(args.func(args, ctl) or 0)
    except CblbError as e:
        return _fail(args, str(e), int(getattr(args, "trouble_exit", 1)))
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        return _fail(args, f"{where}{e.strerror or e}", 2)
    except KeyboardInterrupt:
        print("cblb: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
