"""cblb: consistent copy-on-write snapshots of live Linux partitions."""

__version__ = "0.17.0"
