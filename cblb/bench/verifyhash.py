"""Verification throughput: hashing a snapshot device, block by block.

The project's own hashing engine (``cblb.hashing`` / ``cblb.verify`` / the Cython
``cblb._blockhash``) is being built in parallel; when one of them is importable and offers
a hashlib-style object (``update``/``digest``) or a ``hash_file``/``hash_device`` function,
it is measured. Otherwise the python ``xxhash`` package (xxh3-64, a dependency of cblb)
stands in as a labelled reference, and when neither exists the figure is skipped with a note.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import time
from typing import Any, Callable

BLOCK = 1 << 20


def _hashlib_like(mod: Any) -> Callable[[], Any] | None:
    for name in ("new", "xxh3_64", "xxh3", "BlockHash", "Hasher", "blockhash"):
        f = getattr(mod, name, None)
        if callable(f):
            try:
                h = f()
            except Exception:  # noqa: BLE001 - probing an API we do not own
                continue
            if hasattr(h, "update") and hasattr(h, "digest"):
                return f
    return None


def find_engine() -> tuple[str, Callable[[str, int], None]]:
    """(label, fn(path, size)) of the best available hashing engine; raises if none."""
    for modname in ("cblb.hashing", "cblb.verify", "cblb._blockhash"):
        try:
            if importlib.util.find_spec(modname) is None:
                continue
            mod = importlib.import_module(modname)
        except Exception:  # noqa: BLE001
            continue
        for fname in ("hash_device", "hash_file", "hash_path"):
            f = getattr(mod, fname, None)
            if callable(f):
                return f"{modname}.{fname}", lambda p, n, f=f: f(p)
        factory = _hashlib_like(mod)
        if factory:
            return f"{modname} (hashlib-style object)", lambda p, n, fa=factory: _stream(p, n, fa)
    try:
        import xxhash  # type: ignore[import-not-found]
    except ImportError:
        raise RuntimeError("no hashing engine: neither cblb.hashing/cblb.verify/"
                           "cblb._blockhash nor the xxhash package is importable") from None
    return ("reference: python-xxhash xxh3_64 (the cblb engine is not built yet)",
            lambda p, n: _stream(p, n, xxhash.xxh3_64))


def _stream(path: str, size: int, factory: Callable[[], Any]) -> None:
    h = factory()
    fd = os.open(path, os.O_RDONLY)
    try:
        left = size
        while left > 0:
            b = os.read(fd, min(BLOCK, left))
            if not b:
                break
            h.update(b)
            left -= len(b)
    finally:
        os.close(fd)
    h.digest()


def hash_throughput(path: str, size: int) -> tuple[str, float]:
    """(engine label, bytes/s) hashing the first ``size`` bytes of ``path``."""
    label, fn = find_engine()
    if not label.startswith("reference") and "hashlib-style" not in label:
        fd = os.open(path, os.O_RDONLY)  # a whole-file function hashes the whole device
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)
    t = time.monotonic()
    fn(path, size)
    dt = time.monotonic() - t
    return label, size / dt if dt > 0 else 0.0
