# cython: language_level=3
"""Block hashing with XXH3 from libxxhash, without the GIL.

Two kinds of entry point:

- ``xxh3_64`` / ``xxh3_128``: streaming hash objects with hashlib's interface
  (``update``, ``digest``, ``hexdigest``, ``intdigest``, ``copy``, ``digest_size``,
  ``block_size``, ``name``). Digests are xxhash's canonical big-endian bytes, equal to the
  ``xxhash`` package's ``digest()`` and to what ``xxhsum -H3`` / ``-H2`` prints.
- ``hash_blocks``, ``read_hash``, ``copy_hash``: one digest per block of a buffer or of a
  span of a file descriptor (pread, optionally pwrite to a copy). They release the GIL for
  the whole span, so Python threads running them in parallel use every core
  (cblb/hashing.py drives them).

The last block of a buffer or of a file is hashed with its real, possibly shorter length.
"""

cimport cython
from libc.errno cimport errno, EINTR
from libc.string cimport memcmp
from posix.types cimport off_t
from posix.unistd cimport pread, pwrite

cdef extern from "blockhash_xxh.h" nogil:
    ctypedef unsigned long long XXH64_hash_t
    ctypedef struct XXH128_hash_t:
        XXH64_hash_t low64
        XXH64_hash_t high64
    ctypedef struct XXH3_state_t:
        pass
    ctypedef struct XXH64_canonical_t:
        unsigned char digest[8]
    ctypedef struct XXH128_canonical_t:
        unsigned char digest[16]
    ctypedef int XXH_errorcode
    XXH3_state_t* XXH3_createState()
    XXH_errorcode XXH3_freeState(XXH3_state_t* st)
    void XXH3_copyState(XXH3_state_t* dst, const XXH3_state_t* src)
    XXH_errorcode XXH3_64bits_reset_withSeed(XXH3_state_t* st, XXH64_hash_t seed)
    XXH_errorcode XXH3_128bits_reset_withSeed(XXH3_state_t* st, XXH64_hash_t seed)
    XXH64_hash_t XXH3_64bits_digest(const XXH3_state_t* st)
    XXH128_hash_t XXH3_128bits_digest(const XXH3_state_t* st)
    void XXH64_canonicalFromHash(XXH64_canonical_t* dst, XXH64_hash_t h)
    void XXH128_canonicalFromHash(XXH128_canonical_t* dst, XXH128_hash_t h)
    unsigned XXH_versionNumber()
    XXH_errorcode cblb_xxh3_64_update(XXH3_state_t* st, const void* p, size_t n)
    XXH_errorcode cblb_xxh3_128_update(XXH3_state_t* st, const void* p, size_t n)
    void cblb_hash_one(const unsigned char* p, size_t n, int digest_size,
                       unsigned long long seed, unsigned char* out)
    const char* CBLB_XXH_IMPL

#: "dispatch" when libxxhash picks AVX2/AVX-512 at run time, "portable" otherwise.
IMPLEMENTATION = CBLB_XXH_IMPL.decode()
#: libxxhash's version as (major, minor, release).
LIBXXHASH_VERSION = (XXH_versionNumber() // 10000, XXH_versionNumber() // 100 % 100,
                     XXH_versionNumber() % 100)

# Above this many bytes, update() releases the GIL (hashlib uses 2047).
cdef enum:
    _NOGIL_MIN = 2048


cdef class _XXH3:
    """Streaming XXH3; use the xxh3_64 or xxh3_128 subclass."""

    cdef XXH3_state_t* _st
    cdef readonly int digest_size
    cdef unsigned long long _seed

    def __cinit__(self, *args, **kwargs):
        self._st = XXH3_createState()
        if self._st == NULL:
            raise MemoryError()

    def __dealloc__(self):
        if self._st != NULL:
            XXH3_freeState(self._st)

    def __init__(self, data=None, *, unsigned long long seed=0):
        self._seed = seed
        self.reset()
        if data is not None:
            self.update(data)

    cdef void _reset(self):
        if self.digest_size == 16:
            XXH3_128bits_reset_withSeed(self._st, self._seed)
        else:
            XXH3_64bits_reset_withSeed(self._st, self._seed)

    def reset(self):
        """Start over, as if newly created (with the same seed)."""
        self._reset()

    @property
    def block_size(self):
        """XXH3 consumes its input in 64-byte stripes."""
        return 64

    @property
    def seed(self):
        return self._seed

    @cython.boundscheck(False)  # view[0] is read only after the n == 0 return
    def update(self, data):
        """Add the bytes of ``data`` (any contiguous buffer) to the hash."""
        if isinstance(data, str):
            raise TypeError("Strings must be encoded before hashing")
        cdef const unsigned char[::1] view = data
        cdef size_t n = view.shape[0]
        if n == 0:
            return
        if n >= _NOGIL_MIN:
            with nogil:
                self._update(&view[0], n)
        else:
            self._update(&view[0], n)

    cdef void _update(self, const unsigned char* p, size_t n) noexcept nogil:
        if self.digest_size == 16:
            cblb_xxh3_128_update(self._st, p, n)
        else:
            cblb_xxh3_64_update(self._st, p, n)

    def intdigest(self):
        """The hash as an unsigned integer (the xxhash package's intdigest())."""
        cdef XXH128_hash_t h
        if self.digest_size == 16:
            h = XXH3_128bits_digest(self._st)
            return (<object>h.high64 << 64) | <object>h.low64
        return XXH3_64bits_digest(self._st)

    def digest(self):
        """The hash in canonical (big-endian) byte order."""
        cdef XXH64_canonical_t c64
        cdef XXH128_canonical_t c128
        if self.digest_size == 16:
            XXH128_canonicalFromHash(&c128, XXH3_128bits_digest(self._st))
            return bytes(c128.digest[:16])
        XXH64_canonicalFromHash(&c64, XXH3_64bits_digest(self._st))
        return bytes(c64.digest[:8])

    def hexdigest(self):
        return self.digest().hex()

    def copy(self):
        """An independent hash object with the same state."""
        cdef _XXH3 other = type(self)(seed=self._seed)
        XXH3_copyState(other._st, self._st)
        return other

    def __repr__(self):
        return f"<{self.name} hash object @ {id(self):#x}>"


cdef class xxh3_64(_XXH3):
    """XXH3, 64-bit result (8-byte digest)."""

    name = "xxh3_64"

    def __cinit__(self, *args, **kwargs):
        self.digest_size = 8


cdef class xxh3_128(_XXH3):
    """XXH3, 128-bit result (16-byte digest)."""

    name = "xxh3_128"

    def __cinit__(self, *args, **kwargs):
        self.digest_size = 16


# ---- per-block hashing ---------------------------------------------------------------

cdef inline Py_ssize_t _n_blocks(Py_ssize_t n, Py_ssize_t bs) noexcept nogil:
    return (n + bs - 1) // bs


cdef int _check_shape(Py_ssize_t block_size, int digest_size) except -1:
    if block_size <= 0:
        raise ValueError(f"block size must be positive, not {block_size}")
    if digest_size != 8 and digest_size != 16:
        raise ValueError(f"digest size must be 8 (xxh3_64) or 16 (xxh3_128), not {digest_size}")
    return 0


@cython.boundscheck(False)  # block i covers [i*bs, min(n, (i+1)*bs)) with n <= len(data), and
                            # out has n_blocks*ds bytes: the callers check both lengths
@cython.wraparound(False)   # every index is non-negative
cdef void _hash_blocks(const unsigned char[::1] data, Py_ssize_t n, Py_ssize_t bs,
                       int ds, unsigned char[::1] out) noexcept nogil:
    cdef Py_ssize_t i, off = 0, ln
    cdef Py_ssize_t nb = _n_blocks(n, bs)
    for i in range(nb):
        ln = bs if n - off >= bs else n - off
        cblb_hash_one(&data[off], <size_t>ln, ds, 0, &out[i * ds])
        off += bs


def hash_blocks(data, Py_ssize_t block_size=4096, int digest_size=8):
    """One canonical XXH3 digest per ``block_size`` bytes of ``data``, concatenated.

    The last block may be shorter and is hashed with its real length; empty data gives
    b"". ``digest_size`` 8 selects xxh3_64, 16 selects xxh3_128.
    """
    _check_shape(block_size, digest_size)
    cdef const unsigned char[::1] view = data
    cdef Py_ssize_t n = view.shape[0]
    cdef Py_ssize_t nb = _n_blocks(n, block_size)
    out = bytearray(nb * digest_size)
    if nb == 0:
        return bytes(out)
    cdef unsigned char[::1] o = out
    with nogil:
        _hash_blocks(view, n, block_size, digest_size, o)
    return bytes(out)


cdef Py_ssize_t _pread_full(int fd, unsigned char* buf, Py_ssize_t want,
                            off_t offset) noexcept nogil:
    """pread until ``want`` bytes or end of file; retry on EINTR. -errno on error."""
    cdef Py_ssize_t got = 0, r
    while got < want:
        r = pread(fd, buf + got, <size_t>(want - got), offset + got)
        if r < 0:
            if errno == EINTR:
                continue
            return -errno
        if r == 0:
            break
        got += r
    return got


cdef Py_ssize_t _pwrite_full(int fd, const unsigned char* buf, Py_ssize_t n,
                             off_t offset) noexcept nogil:
    """pwrite all ``n`` bytes; retry on EINTR and short writes. 0 or -errno."""
    cdef Py_ssize_t done = 0, r
    while done < n:
        r = pwrite(fd, buf + done, <size_t>(n - done), offset + done)
        if r < 0:
            if errno == EINTR:
                continue
            return -errno
        if r == 0:
            return -28  # ENOSPC: a zero-length write means no room
        done += r
    return 0


cdef int _check_span(Py_ssize_t length, Py_ssize_t read_len, Py_ssize_t block_size,
                     int digest_size, Py_ssize_t buf_len, Py_ssize_t out_len) except -1:
    _check_shape(block_size, digest_size)
    if length < 0 or read_len < length:
        raise ValueError(f"need 0 <= length <= read_len, got {length} and {read_len}")
    if buf_len < read_len and (buf_len == 0 or buf_len % block_size):
        raise ValueError(f"a buffer of {buf_len} bytes, smaller than read_len {read_len}, "
                         f"must hold whole blocks of {block_size}")
    if out_len < _n_blocks(length, block_size) * digest_size:
        raise ValueError(f"out holds {out_len} bytes; {_n_blocks(length, block_size)} "
                         f"digests of {digest_size} need more")
    return 0


@cython.boundscheck(False)  # pieces start at done = k*len(buf), a whole number of blocks
                            # (_check_span), so out[(done // bs) * ds] is within out
@cython.wraparound(False)   # every index is non-negative
cdef Py_ssize_t _span(int fd, int dst_fd, off_t offset, Py_ssize_t length,
                      Py_ssize_t read_len, Py_ssize_t bs, int ds,
                      unsigned char[::1] buf, unsigned char[::1] out,
                      int* failed_write) noexcept nogil:
    """Read [offset, offset+read_len) piece by piece through buf, hash the first length
    bytes, and pwrite them to dst_fd unless it is -1. Bytes hashed, or -errno."""
    cdef Py_ssize_t done = 0, want, got, use, w
    cdef Py_ssize_t piece = buf.shape[0]
    while done < length:
        want = read_len - done
        if want > piece:
            want = piece
        got = _pread_full(fd, &buf[0], want, offset + done)
        if got < 0:
            return got
        use = got if got < length - done else length - done
        if use > 0:
            _hash_blocks(buf, use, bs, ds, out[(done // bs) * ds:])
            if dst_fd >= 0:
                w = _pwrite_full(dst_fd, &buf[0], use, offset + done)
                if w < 0:
                    failed_write[0] = 1
                    return w
        done += use
        if got < want:
            break  # end of file
    return done


def read_hash(int fd, long long offset, Py_ssize_t length, Py_ssize_t read_len,
              Py_ssize_t block_size, int digest_size, buf, out):
    """pread ``read_len`` bytes at ``offset`` through ``buf`` and hash the first ``length``
    of them into ``out``, one digest per block; all without the GIL.

    ``read_len`` >= ``length`` lets O_DIRECT callers round the request up to the device's
    alignment (``buf`` must then be aligned too: an anonymous mmap is). A ``buf`` smaller
    than ``read_len`` is refilled piece by piece (it must then hold whole blocks), which
    keeps a page-cached copy hot in the CPU cache while it is hashed. Returns the number
    of bytes hashed: less than ``length`` only at end of file, and then the last block is
    the partial one. Raises OSError with the errno of a failed pread.
    """
    cdef unsigned char[::1] b = buf
    cdef unsigned char[::1] o = out
    _check_span(length, read_len, block_size, digest_size, b.shape[0], o.shape[0])
    cdef Py_ssize_t got = 0
    cdef int failed_write = 0
    if length == 0:
        return 0
    with nogil:
        got = _span(fd, -1, <off_t>offset, length, read_len, block_size, digest_size, b, o,
                    &failed_write)
    if got < 0:
        raise OSError(-got, __import__("os").strerror(-got))
    return got


def copy_hash(int src_fd, int dst_fd, long long offset, Py_ssize_t length,
              Py_ssize_t read_len, Py_ssize_t block_size, int digest_size, buf, out):
    """Like read_hash, and pwrite the ``length`` bytes hashed to ``dst_fd`` at the same
    offset. Returns the bytes copied (less than ``length`` only at end of the source).
    OSError carries the errno; its filename attribute is "read" or "write"."""
    cdef unsigned char[::1] b = buf
    cdef unsigned char[::1] o = out
    _check_span(length, read_len, block_size, digest_size, b.shape[0], o.shape[0])
    if dst_fd < 0:
        raise ValueError("dst_fd must be an open file descriptor")
    cdef Py_ssize_t got = 0
    cdef int failed_write = 0
    if length == 0:
        return 0
    with nogil:
        got = _span(src_fd, dst_fd, <off_t>offset, length, read_len, block_size, digest_size,
                    b, o, &failed_write)
    if got < 0:
        raise OSError(-got, __import__("os").strerror(-got),
                      "write" if failed_write else "read")
    return got


@cython.boundscheck(False)  # i < n = min(len(a), len(b)) // ds, so i*ds + ds <= both lengths
@cython.wraparound(False)   # every index is non-negative
def differing_blocks(a, b, int digest_size):
    """Indices of the digests that differ between two digest strings; digests present in
    only one of them (the longer) count as differing."""
    if digest_size != 8 and digest_size != 16:
        raise ValueError(f"digest size must be 8 or 16, not {digest_size}")
    cdef const unsigned char[::1] x = a
    cdef const unsigned char[::1] y = b
    if x.shape[0] % digest_size or y.shape[0] % digest_size:
        raise ValueError("digest strings must hold whole digests")
    cdef Py_ssize_t na = x.shape[0] // digest_size, nb = y.shape[0] // digest_size
    cdef Py_ssize_t n = min(na, nb), i
    out = []
    for i in range(n):
        if memcmp(&x[i * digest_size], &y[i * digest_size], digest_size) != 0:
            out.append(i)
    out.extend(range(n, max(na, nb)))
    return out
