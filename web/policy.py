"""The page's own rules, on top of the control library's: it runs as root for whoever holds
the token, so it touches the file system only in folders an administrator allowed.

- temp files go only in a folder at or under one of ``CBLB_CATALOG_ROOTS`` (default
  /var/lib/cblb and /var/tmp; ``cblb web --catalog-root DIR`` sets them);
- snapshots are mounted only on an empty (or new) folder under one of ``CBLB_MOUNT_ROOTS``;
- a set's members keep their temp files in ``<catalog root>/<name>``, one folder each, made
  by the page when missing, and only when that folder too is inside the allowed ones.

Both checks resolve the path once and return that resolved path, which is what the caller
hands on: the folder checked is the folder used. A path outside the allowed folders is
refused before anything about it is looked at, so the page does not tell whether it exists.
"""

from __future__ import annotations

import errno as E
import os
from collections.abc import Sequence

from cblb.errors import CblbError


def _resolved(path: str, what: str) -> str:
    if not os.path.isabs(path) or ".." in path.split("/"):
        raise CblbError(f"{what} {path!r} must be an absolute path without '..'", E.EINVAL)
    return os.path.realpath(path)


def _under(real: str, root: str, strictly: bool) -> bool:
    r = os.path.realpath(root).rstrip("/") or "/"
    return (not strictly and real == r) or real.startswith(r.rstrip("/") + "/")


def within(path: str, roots: Sequence[str], strictly: bool = False) -> bool:
    """Whether absolute ``path``, resolved, is one of ``roots`` (unless ``strictly``) or below."""
    if not os.path.isabs(path) or ".." in path.split("/"):
        return False
    real = os.path.realpath(path)
    return any(_under(real, r, strictly) for r in roots)


def check_catalog_dir(path: str, roots: Sequence[str]) -> str:
    """The resolved catalog, refused unless it is one of ``roots`` or inside one."""
    real = _resolved(path, "catalog")
    if not any(_under(real, r, False) for r in roots):
        raise CblbError(f"catalog {os.path.normpath(path)} is not in {', '.join(roots)}: the "
                        "page keeps temp files only there (cblb web --catalog-root DIR adds a "
                        "folder; cblb start takes any)", E.EPERM)
    return real


def check_mount_dir(path: str, roots: Sequence[str]) -> str:
    """The resolved mount folder: empty or new, strictly under one of ``roots``."""
    real = _resolved(path, "mount folder")
    norm = os.path.normpath(path)
    if not any(_under(real, r, True) for r in roots):
        raise CblbError(f"mount folder {norm} is not under {', '.join(roots)}: the page mounts "
                        "snapshots only there (use 'cblb mount' for other places)", E.EPERM)
    if os.path.lexists(real):
        if not os.path.isdir(real):
            raise CblbError(f"{norm} exists and is not a folder", E.ENOTDIR)
        if os.listdir(real):
            raise CblbError(f"{norm} is not empty: mounting there would hide its files; "
                            "choose an empty or new folder", E.ENOTEMPTY)
    return real


def member_catalogs(root: str, names: Sequence[str],
                    roots: Sequence[str]) -> list[tuple[str, bool]]:
    """Each set member's resolved catalog ``<root>/<name>`` and whether it was made here.

    ``root`` must be an existing allowed folder; a member's folder is created when missing,
    and refused, like any catalog, unless it resolves inside the allowed folders (a symbolic
    link there cannot send temp files elsewhere). Names are already valid snapshot names."""
    real_root = check_catalog_dir(root, roots)
    if not os.path.isdir(real_root):
        raise CblbError(f"catalog root {os.path.normpath(root)} is not an existing folder; "
                        "create it with mkdir", E.ENOENT)
    out = []
    for name in names:
        real = check_catalog_dir(os.path.join(real_root, name), roots)
        made = not os.path.lexists(real)
        if made:
            try:
                os.mkdir(real, 0o700)
            except OSError as e:
                raise CblbError(f"cannot create the catalog {real}: {e.strerror}",
                                e.errno or 0) from None
        out.append((real, made))
    return out
