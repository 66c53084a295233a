"""Subcommands of the `cblb` command line, one module per concern.

Each module exposes ``register(sub)`` which adds its subparsers; each subparser sets
``func(args, ctl) -> int`` (the exit code: 0 ok, 1 refused / differs, 2 usage).
"""
