"""Copying a snapshot (or any device or image) to an image file, resumably, with a manifest.

``cblb backup SNAPSHOT IMAGE`` reads the source span by span on the hashing engine's
threads, which pwrite each span to IMAGE at the same offset and hash it on the way, so the
copy and its block-hash manifest come from one read of the source.

Beside the image, while a copy is in progress::

    IMAGE.progress          JSON: the source's identity, block size, algorithm and
                            copied_bytes, the prefix of IMAGE known to be on disk
    IMAGE.progress.digests  raw digests (manifest body format) of that prefix

Every checkpoint (256 MiB or 5 s) fsyncs IMAGE, then the digests, then replaces the JSON
atomically, so the JSON never claims more than is durable. A later run resumes: it re-hashes
the image's recorded prefix, keeps the blocks that still match their digests up to the first
one that does not, and copies the rest. ``restart`` starts over. At the end IMAGE is
fsynced, IMAGE.manifest (cblb/manifest.py) is written atomically and the sidecars removed.
"""

from __future__ import annotations

import errno as E
import json
import os
import stat
import time
from dataclasses import dataclass
from typing import Any

from . import fsio
from .errors import CblbError
from .hashing import DEFAULT_ALGORITHM, DEFAULT_BLOCK_SIZE, Engine, Progress, Source, differing_blocks
from .manifest import ManifestWriter

PROGRESS_SUFFIX = ".progress"
DIGESTS_SUFFIX = ".progress.digests"
MANIFEST_SUFFIX = ".manifest"
CHECKPOINT_BYTES = 256 << 20
CHECKPOINT_SECONDS = 5.0
PROGRESS_FORMAT = 1


@dataclass
class BackupResult:
    source: str
    image: str
    manifest: str
    size: int
    block_size: int
    algorithm: str
    resumed_from: int       # bytes already in the image from an earlier run
    bytes_copied: int       # bytes copied by this run
    seconds: float
    verified: bool = False

    @property
    def throughput(self) -> float:
        return self.bytes_copied / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source, "image": self.image, "manifest": self.manifest,
            "bytes": self.size, "bytes_copied": self.bytes_copied,
            "resumed_from": self.resumed_from, "seconds": round(self.seconds, 6),
            "mb_per_s": round(self.throughput / 1e6, 1), "block_size": self.block_size,
            "algorithm": self.algorithm, "verified": self.verified,
        }


def source_identity(src: Source, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What must not change between an interrupted copy and its resumption."""
    ident: dict[str, Any] = {"path": os.path.abspath(src.path), "size": src.size,
                             "kind": src.kind}
    if src.kind == "file":
        st = os.fstat(src.fd)
        ident["mtime_ns"] = st.st_mtime_ns
        ident["inode"] = st.st_ino
    if extra:
        ident.update(extra)
    return ident


def _unlink(*paths: str) -> None:
    for p in paths:
        fsio.unlink_if_there(p)


class _Resume:
    """What an earlier run left: how far the image holds verified data."""

    def __init__(self, image: str) -> None:
        self.progress = image + PROGRESS_SUFFIX
        self.digests = image + DIGESTS_SUFFIX

    def load(self) -> dict[str, Any] | None:
        try:
            with open(self.progress) as f:
                d = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise CblbError(f"{self.progress} is unreadable ({e}); use --restart to start "
                            "the copy over", E.EINVAL) from None
        if not isinstance(d, dict) or d.get("format") != PROGRESS_FORMAT:
            raise CblbError(f"{self.progress} is not a cblb progress file this version "
                            "reads; use --restart to start the copy over", E.EINVAL)
        return d


def _verified_prefix(eng: Engine, image: str, digests: bytes, copied: int) -> int:
    """Blocks at the start of ``image`` that still match ``digests``, up to ``copied``
    bytes (whole blocks only)."""
    nblocks = min(copied // eng.block_size, len(digests) // eng.digest_size)
    if nblocks == 0:
        return 0
    with Source.open(image) as img:
        if img.size < nblocks * eng.block_size:
            nblocks = img.size // eng.block_size
        ds = eng.digest_size
        for b, d in eng.digests(img, 0, nblocks):
            want = digests[b * ds:b * ds + len(d)]
            if d != want:
                return b + differing_blocks(d, want, ds)[0]
    return nblocks


def backup(source: str, image: str, *, block_size: int = DEFAULT_BLOCK_SIZE,
           algorithm: str = DEFAULT_ALGORITHM, restart: bool = False,
           direct: bool | None = None, threads: int | None = None,
           progress: Progress | None = None, verify: bool = False,
           identity: dict[str, Any] | None = None, label: str | None = None,
           checkpoint_bytes: int = CHECKPOINT_BYTES) -> BackupResult:
    """Copy ``source`` to ``image`` (a file, or a block device at least as large), resuming
    an interrupted copy unless ``restart``; write ``image`` + ".manifest".

    ``direct`` (default: when the source is a block device) reads with O_DIRECT so a large
    copy does not evict the page cache. ``identity`` adds to what must match for a resume
    (a snapshot's name and start time). ``verify`` re-reads the image afterwards and
    compares it with the manifest.
    """
    t0 = time.perf_counter()
    image = os.path.abspath(image)
    src_kind_block = _is_block(source)
    with Source.open(source, src_kind_block if direct is None else direct) as src, \
            Engine(block_size, algorithm, threads) as eng:
        if os.path.exists(image) and os.path.samefile(image, src.path):
            raise CblbError(f"{image} is the source itself; give another image path", E.EINVAL)
        ident = source_identity(src, identity)
        res = _Resume(image)
        meta = {"format": PROGRESS_FORMAT, "source": ident, "block_size": eng.block_size,
                "algorithm": eng.algorithm, "copied_bytes": 0}
        start_block = 0
        digests_so_far = b""
        image_exists = os.path.exists(image)
        image_is_dev = image_exists and _is_block(image)
        if restart:
            _unlink(res.progress, res.digests, image + MANIFEST_SUFFIX)
        else:
            old = res.load()
            if old is not None:
                if (old.get("source"), old.get("block_size"), old.get("algorithm")) != \
                        (ident, eng.block_size, eng.algorithm):
                    raise CblbError(f"{image} holds a partial copy of another source or with "
                                    f"other settings ({res.progress}); use --restart to start "
                                    "over", E.EEXIST)
                if not image_exists:
                    raise CblbError(f"{res.progress} exists but {image} does not; use "
                                    "--restart to start over", E.ENOENT)
                try:
                    with open(res.digests, "rb") as f:
                        digests_so_far = f.read()
                except FileNotFoundError:
                    digests_so_far = b""
                start_block = _verified_prefix(eng, image, digests_so_far,
                                               int(old.get("copied_bytes", 0)))
                digests_so_far = digests_so_far[:start_block * eng.digest_size]
            elif image_exists and (image_is_dev or os.path.getsize(image) > 0):
                raise CblbError(f"{image} already exists and no copy of it is in progress; "
                                "use --restart to overwrite it", E.EEXIST)

        flags = os.O_WRONLY | os.O_CLOEXEC | (0 if image_is_dev else os.O_CREAT)
        try:
            out_fd = os.open(image, flags, 0o644)
        except OSError as e:
            raise CblbError(f"cannot open {image} for writing: {e.strerror}", e.errno or 0) \
                from None
        try:
            if image_is_dev:
                cap = os.lseek(out_fd, 0, os.SEEK_END)
                if cap < src.size:
                    raise CblbError(f"{image} holds {cap} bytes, less than the "
                                    f"{src.size} of {src.path}", E.ENOSPC)
            else:
                if restart:
                    os.ftruncate(out_fd, 0)
                os.ftruncate(out_fd, src.size)  # the final size; unwritten parts are sparse
            resumed = min(start_block * eng.block_size, src.size)
            copied = _copy(eng, src, out_fd, image, res, meta, start_block, digests_so_far,
                           progress, resumed, checkpoint_bytes)
            os.fsync(out_fd)
        finally:
            os.close(out_fd)
        manifest = image + MANIFEST_SUFFIX
        with ManifestWriter(manifest, eng.algorithm, eng.block_size, src.size,
                            label or source) as w:
            with open(res.digests, "rb") as f:
                while chunk := f.read(eng.digest_size << 16):
                    w.write(chunk)
            w.commit()
        _unlink(res.progress, res.digests)
        fsio.sync_dir(os.path.dirname(image))
        result = BackupResult(source, image, manifest, src.size, eng.block_size, eng.algorithm,
                              resumed, copied, 0.0)
    if verify:
        from .verify import verify_paths
        cmp = verify_paths(image, manifest, threads=threads)
        if not cmp.equal:
            raise CblbError(f"{image} does not match its manifest after the copy "
                            f"({cmp.differing} blocks differ): the target storage lost "
                            "writes", E.EIO)
        result.verified = True
    result.seconds = time.perf_counter() - t0
    return result


def _copy(eng: Engine, src: Source, out_fd: int, image: str, res: _Resume,
          meta: dict[str, Any], start_block: int, digests_so_far: bytes,
          progress: Progress | None, resumed: int, checkpoint_bytes: int) -> int:
    """Copy from start_block to the end, checkpointing; returns the bytes copied."""
    with open(res.digests, "wb") as dg:
        dg.write(digests_so_far)
        done = resumed              # contiguous bytes copied and hashed
        durable = -1                # what the progress file says
        last = time.monotonic()
        since = 0

        def checkpoint() -> None:
            nonlocal durable, since, last
            if done == durable:
                return
            os.fsync(out_fd)
            dg.flush()
            os.fsync(dg.fileno())
            meta["copied_bytes"] = done
            fsio.write_json_atomic(res.progress, meta)
            durable, since, last = done, 0, time.monotonic()

        checkpoint()
        if progress and resumed:
            progress(resumed)
        spans = eng.copy(src, out_fd, image, start_block)
        try:
            for _b, n, d in spans:
                dg.write(d)
                done += n
                since += n
                if progress:
                    progress(n)
                if since >= checkpoint_bytes or time.monotonic() - last >= CHECKPOINT_SECONDS:
                    checkpoint()
        finally:
            spans.close()  # waits for the threads still writing to out_fd
            try:
                checkpoint()  # an interrupted copy resumes from here
            except OSError:
                pass
    return done - resumed


def _is_block(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False
