"""The folders cblb may use for temp files and mounts (the page, `cblb run`). The page runs
as root for whoever holds the token, so it touches the file system only in folders an
administrator allowed.

- temp files go only in a folder at or under one of ``CBLB_CATALOG_ROOTS`` (default
  /var/lib/cblb; ``cblb web --catalog-root DIR`` sets them; /var/tmp is no default, any
  user can plant folders there);
- snapshots are mounted only on an empty (or new) folder under one of ``CBLB_MOUNT_ROOTS``;
- a set's members keep their temp files in ``<catalog root>/<name>``, one folder each, made
  by the page when missing, and only when that folder too is inside the allowed ones.

Both checks walk the path from / with O_NOFOLLOW (no symbolic link is followed anywhere) and
refuse it unless every folder on the way is owned by root and writable by no other user (a
sticky /tmp is passed toward a root-owned entry only): a folder another user planted, or
owns below an allowed root (/media/USER/STICK), is refused. The path handed to the module
is then one no user but root can change, so the kern_path() the module does at start finds
the folder that was checked. (The alternative, /proc/self/fd/N of the open folder, closes
the window as well but the module keeps that string as the catalog's name, which sysfs,
the page and its messages would then show; the permission walk leaves no window a user
can use and keeps the name.) A path outside the allowed folders is refused before anything
about it is looked at, so the page does not tell whether it exists.
"""

from __future__ import annotations

import errno as E
import os
import stat
from collections.abc import Sequence

from cblb.errors import CblbError


def _lexical(path: str, what: str) -> str:
    if not os.path.isabs(path) or ".." in path.split("/"):
        raise CblbError(f"{what} {_short(path)!r} must be an absolute path without '..'",
                        E.EINVAL)
    return os.path.normpath(path)


def _short(text: str, n: int = 120) -> str:
    """A path as echoed in a refusal: at most ``n`` characters of it."""
    return text if len(text) <= n else text[:n] + "..."


def _root_of(norm: str, roots: Sequence[str], strictly: bool) -> str | None:
    for r in roots:
        real = os.path.realpath(r).rstrip("/") or "/"
        if (not strictly and norm == real) or norm.startswith(real.rstrip("/") + "/"):
            return real
    return None


def within(path: str, roots: Sequence[str], strictly: bool = False) -> bool:
    """Whether absolute ``path`` (no '..') is one of ``roots`` (unless ``strictly``) or below."""
    if not os.path.isabs(path) or ".." in path.split("/"):
        return False
    return _root_of(os.path.normpath(path), roots, strictly) is not None


def _trusted(st: os.stat_result, shown: str, parent_sticky: bool) -> None:
    """A folder no one but root can change: owned by root (or the user the page runs as),
    writable by no group or other user. A root-owned entry of a sticky folder (/tmp) is
    trusted too: others may not rename or remove it."""
    del parent_sticky   # (the entry's own ownership is what the sticky bit protects)
    if not stat.S_ISDIR(st.st_mode):
        raise CblbError(f"{shown} is not a folder", E.ENOTDIR)
    if st.st_uid not in (0, os.geteuid()):
        raise CblbError(f"{shown} belongs to uid {st.st_uid}, not root: the page uses only "
                        "folders no other user can change", E.EPERM)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise CblbError(f"{shown} is writable by other users (mode "
                        f"{stat.S_IMODE(st.st_mode):04o}): the page uses only folders no "
                        "other user can change", E.EPERM)


def open_trusted_dir(norm: str) -> int:
    """Open folder ``norm`` (absolute, normalised) from / one component at a time, never
    following a symbolic link (O_NOFOLLOW on each step), each component checked by
    _trusted(); a world-writable folder is passed only when sticky, and then only toward a
    root-owned entry. Returns the open folder's descriptor: every folder on the way is one
    only root can change, so the path names this folder for as long as root leaves it."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open("/", flags)
    shown = ""
    try:
        st = os.fstat(fd)
        _trusted(st, "/", False)
        for part in [p for p in norm.split("/") if p]:
            shown += "/" + part
            sticky_writable = bool(st.st_mode & stat.S_ISVTX and st.st_mode & stat.S_IWOTH)
            try:
                nfd = os.open(part, flags, dir_fd=fd)
            except OSError as e:
                if e.errno in (E.ELOOP, E.ENOTDIR):
                    try:
                        link = stat.S_ISLNK(os.stat(part, dir_fd=fd,
                                                    follow_symlinks=False).st_mode)
                    except OSError:
                        link = False
                    if link:
                        raise CblbError(f"{shown} is a symbolic link: the page follows no "
                                        "links", E.ELOOP) from None
                    raise CblbError(f"{shown} is not a folder", E.ENOTDIR) from None
                if e.errno == E.ENOENT:
                    raise CblbError(f"{shown} does not exist; create it with mkdir",
                                    E.ENOENT) from None
                raise CblbError(f"cannot open {shown}: {e.strerror}", e.errno or 0) from None
            os.close(fd)
            fd = nfd
            st = os.fstat(fd)
            _trusted(st, shown, sticky_writable)
            if sticky_writable and st.st_uid != 0 and st.st_uid != os.geteuid():
                raise CblbError(f"{shown} belongs to another user", E.EPERM)
        return fd
    except BaseException:
        os.close(fd)
        raise


def check_catalog_dir(path: str, roots: Sequence[str], what: str = "catalog") -> str:
    """The catalog, refused unless it is one of ``roots`` or inside one and every folder
    from / to it is one only root can change (open_trusted_dir). Returns its path: the
    module's kern_path() at start resolves that same path, and no other user can change
    what it leads to in between."""
    norm = _lexical(path, what)
    if _root_of(norm, roots, False) is None:
        raise CblbError(f"catalog {_short(norm)} is not in {', '.join(roots)}: the page keeps "
                        "temp files only there (the administrator who started the page "
                        "chooses those folders)", E.EPERM)
    try:
        os.close(open_trusted_dir(norm))
    except CblbError as e:
        if e.errno == E.ENOENT:
            raise CblbError(f"{what} {_short(norm)} "
                            + ("does not exist" if what == "catalog" else
                               "is not an existing folder") + "; create it with mkdir",
                            E.ENOENT) from None
        if e.errno == E.ENOTDIR:
            raise CblbError(f"{what} {_short(norm)} is not a folder", E.ENOTDIR) from None
        raise
    return norm


def check_mount_dir(path: str, roots: Sequence[str]) -> str:
    """The mount folder: empty or new, strictly under one of ``roots``, and (like a
    catalog) reached only through folders only root can change; an existing one must be
    such a folder itself."""
    norm = _lexical(path, "mount folder")
    if _root_of(norm, roots, True) is None:
        raise CblbError(f"mount folder {_short(norm)} is not under {', '.join(roots)}: the "
                        "page mounts snapshots only there", E.EPERM)
    parent, leaf = os.path.split(norm)
    while not os.path.lexists(parent):
        # the rest is made by root at mount; the deepest existing folder must be trusted
        # (no other user can then create anything between it and the target)
        parent, leaf = os.path.split(parent)[0], os.path.join(os.path.split(parent)[1], leaf)
    pfd = open_trusted_dir(parent)
    try:
        if "/" in leaf:
            return norm
        try:
            st = os.stat(leaf, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return norm
        if stat.S_ISLNK(st.st_mode):
            raise CblbError(f"{_short(norm)} is a symbolic link: the page follows no links",
                            E.ELOOP)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise CblbError(f"{_short(norm)} exists and is not a folder", E.ENOTDIR)
        fd = open_trusted_dir(norm)
        try:
            if os.listdir(fd):
                raise CblbError(f"{_short(norm)} is not empty: mounting there would hide its "
                                "files; choose an empty or new folder", E.ENOTEMPTY)
        finally:
            os.close(fd)
    finally:
        os.close(pfd)
    return norm


def member_catalogs(root: str, names: Sequence[str],
                    roots: Sequence[str]) -> list[tuple[str, bool]]:
    """Each set member's resolved catalog ``<root>/<name>`` and whether it was made here.

    ``root`` must be an existing allowed folder; a member's folder is created when missing,
    and refused, like any catalog, unless it resolves inside the allowed folders (a symbolic
    link there cannot send temp files elsewhere). Names are already valid snapshot names."""
    real_root = check_catalog_dir(root, roots, "catalog root")
    out = []
    rfd = open_trusted_dir(real_root)
    try:
        for name in names:
            made = False
            try:
                os.mkdir(name, 0o700, dir_fd=rfd)      # in the folder opened, no lookup
                made = True
            except FileExistsError:
                pass
            except OSError as e:
                raise CblbError(f"cannot create the catalog {real_root}/{name}: "
                                f"{e.strerror}", e.errno or 0) from None
            out.append((check_catalog_dir(os.path.join(real_root, name), roots), made))
    finally:
        os.close(rfd)
    return out
