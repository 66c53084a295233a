// SPDX-License-Identifier: GPL-2.0
/*
 * The copied-chunk index: which slot of the store holds the old data of an origin chunk.
 *
 * An xarray keyed by chunk / 2: each value entry holds the (slot + 1) of two neighbouring
 * chunks in 31 bits each, 0 meaning "not copied". Nothing is allocated for chunks never
 * written; a dense region costs 576 bytes of xarray node per 128 chunks, 4.5 bytes per
 * copied 4 KiB chunk. An entry, once set, never changes until the snapshot goes.
 *
 * Room is made before a chunk is copied: the COW worker reserves its pair's entry
 * (cblb_index_reserve(), xa_reserve(): the node is allocated then, where the worker can
 * wait for memory), so recording the copy when it lands (cblb_index_set()) stores into an
 * existing node and never needs memory. A reserved entry reads as absent.
 *
 * Lock story: readers use xa_load() under RCU (the xarray's own). There is one writer of
 * values, the COW pipeline's ordered completion workqueue (cow.c), so the read-modify-write
 * of a pair needs no lock of its own; the worker's reservations only turn an empty entry
 * into a reserved one (a compare-and-exchange under the xarray's lock), which that
 * read-modify-write sees as absent either way.
 * Context: cblb_index_get(), cblb_index_first_missing() and cblb_index_present() any
 * context; cblb_index_reserve() and cblb_index_set() process context (GFP_NOIO).
 */
#include <linux/xarray.h>
#include "cblb.h"
#include "index.h"

#define SLOT_BITS	31
#define SLOT_MASK	((1UL << SLOT_BITS) - 1)

/* The slot + 1 holding chunk's old data, or 0 when the chunk is not (yet) in the store. */
u64 cblb_index_get(struct cblb_snapshot *s, u64 chunk)
{
	void *e = xa_load(&s->index, chunk >> 1);
	unsigned long v;

	if (!e)
		return 0;
	v = xa_to_value(e);
	return (chunk & 1) ? (v >> SLOT_BITS) & SLOT_MASK : v & SLOT_MASK;
}

/*
 * The first chunk of [first, last] not in the index, or last + 1 when all are. One walk
 * along the xarray's leaves (a 1 MiB write is 128 neighbouring entries), not one walk
 * from the root per chunk: this is on the path of every rewrite.
 */
u64 cblb_index_first_missing(struct cblb_snapshot *s, u64 first, u64 last)
{
	unsigned long want = first >> 1, end = last >> 1;
	XA_STATE(xas, &s->index, want);
	u64 missing = last + 1;
	void *e;

	rcu_read_lock();
	xas_for_each(&xas, e, end) {
		unsigned long v;

		if (xas_retry(&xas, e))
			continue;
		if (xas.xa_index != want)
			break;		/* pair want has neither chunk */
		v = xa_to_value(e);
		/* the low half is chunk 2 * want, the high half 2 * want + 1 */
		if (!(v & SLOT_MASK) && 2 * (u64)want >= first) {
			missing = 2 * (u64)want;
			goto out;
		}
		if (!((v >> SLOT_BITS) & SLOT_MASK) && 2 * (u64)want + 1 <= last) {
			missing = 2 * (u64)want + 1;
			goto out;
		}
		want++;
	}
	if (want <= end)
		missing = max_t(u64, first, 2 * (u64)want);
out:
	rcu_read_unlock();
	return missing;
}

/*
 * Set bit i of map for each chunk first + i (i < n) that is in the index; other bits are
 * left alone. One walk along the xarray's leaves, visiting only the pairs that hold a
 * copied chunk: a snapshot read looks its run up with one walk, not one per 4 KiB.
 */
void cblb_index_present(struct cblb_snapshot *s, u64 first, unsigned int n, unsigned long *map)
{
	u64 last = first + n - 1;
	XA_STATE(xas, &s->index, first >> 1);
	void *e;

	rcu_read_lock();
	xas_for_each(&xas, e, last >> 1) {
		u64 c = 2 * (u64)xas.xa_index;	/* the pair's low chunk */
		unsigned long v;

		if (xas_retry(&xas, e))
			continue;
		v = xa_to_value(e);
		if ((v & SLOT_MASK) && c >= first)
			__set_bit(c - first, map);
		if (((v >> SLOT_BITS) & SLOT_MASK) && c + 1 <= last)
			__set_bit(c + 1 - first, map);
	}
	rcu_read_unlock();
}

/*
 * Make room for the sorted chunks[0..n) before they are copied: GFP_NOIO, then the atomic
 * reserves. -ENOMEM when neither had a node; the caller waits and asks again.
 */
int cblb_index_reserve(struct cblb_snapshot *s, const u64 *chunks, unsigned int n)
{
	u64 prev = U64_MAX;
	unsigned int i;

	for (i = 0; i < n; i++) {
		u64 key = chunks[i] >> 1;
		int err;

		if (key == prev)
			continue;
		prev = key;
		err = xa_reserve(&s->index, key, GFP_NOIO | __GFP_NOWARN);
		if (err == -ENOMEM)
			err = xa_reserve(&s->index, key, GFP_NOWAIT | __GFP_HIGH | __GFP_NOWARN);
		if (err)
			return err;
	}
	return 0;
}

/* Record chunk in slot. The single writer only (see the top); its room is reserved. */
int cblb_index_set(struct cblb_snapshot *s, u64 chunk, u64 slot)
{
	void *e = xa_load(&s->index, chunk >> 1);
	unsigned long v = e ? xa_to_value(e) : 0;
	unsigned int shift = (chunk & 1) ? SLOT_BITS : 0;

	v &= ~(SLOT_MASK << shift);
	v |= (unsigned long)(slot + 1) << shift;
	if (!e)
		atomic64_inc(&s->index_entries);
	return xa_err(xa_store(&s->index, chunk >> 1, xa_mk_value(v), GFP_NOIO));
}
