"""The fake module's sysfs files: one value per file, as cblb_module shows them."""

from __future__ import annotations

from pathlib import Path


def write_fields(d: Path, **fields: object) -> None:
    """Each ``name=value`` as the file ``d/name`` holding ``value`` and a newline."""
    for k, v in fields.items():
        (d / k).write_text(f"{v}\n")


def read_field(d: Path, name: str) -> str:
    return (d / name).read_text().strip()
