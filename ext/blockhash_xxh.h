/* XXH3 entry points for _blockhash.pyx.
 *
 * Debian's libxxhash is built with the x86 dispatcher: the *_dispatch symbols pick the
 * widest vector unit at run time (AVX2 / AVX-512), while the plain XXH3_* symbols are the
 * portable SSE2 build. Use the dispatcher where the library has it, the plain ones elsewhere.
 * Digests are written in xxhash's canonical (big-endian) form, which is what xxhsum prints
 * and what the xxhash Python package's digest() returns.
 */
#ifndef CBLB_BLOCKHASH_XXH_H
#define CBLB_BLOCKHASH_XXH_H

#include <stddef.h>
#include <string.h>
#include <xxhash.h>

#if (defined(__x86_64__) || defined(__i386__)) && !defined(CBLB_NO_XXH_DISPATCH)
#  define XXH_DISPATCH_DISABLE_REPLACE 1
#  include <xxh_x86dispatch.h>
#  define cblb_xxh3_64(p, n, seed)      XXH3_64bits_withSeed_dispatch((p), (n), (seed))
#  define cblb_xxh3_128(p, n, seed)     XXH3_128bits_withSeed_dispatch((p), (n), (seed))
#  define cblb_xxh3_64_update(st, p, n)  XXH3_64bits_update_dispatch((st), (p), (n))
#  define cblb_xxh3_128_update(st, p, n) XXH3_128bits_update_dispatch((st), (p), (n))
#  define CBLB_XXH_IMPL "dispatch"
#else
#  define cblb_xxh3_64(p, n, seed)      XXH3_64bits_withSeed((p), (n), (seed))
#  define cblb_xxh3_128(p, n, seed)     XXH3_128bits_withSeed((p), (n), (seed))
#  define cblb_xxh3_64_update(st, p, n)  XXH3_64bits_update((st), (p), (n))
#  define cblb_xxh3_128_update(st, p, n) XXH3_128bits_update((st), (p), (n))
#  define CBLB_XXH_IMPL "portable"
#endif

/* Hash one block and store its canonical digest (8 or 16 bytes) at out. */
static inline void cblb_hash_one(const unsigned char *p, size_t n, int digest_size,
                                 unsigned long long seed, unsigned char *out)
{
	if (digest_size == 16) {
		XXH128_canonical_t c;
		XXH128_canonicalFromHash(&c, cblb_xxh3_128(p, n, seed));
		memcpy(out, c.digest, 16);
	} else {
		XXH64_canonical_t c;
		XXH64_canonicalFromHash(&c, cblb_xxh3_64(p, n, seed));
		memcpy(out, c.digest, 8);
	}
}

#endif
