// SPDX-License-Identifier: GPL-2.0
/*
 * The copied-chunk index: which slot of the store holds the old data of an origin chunk.
 *
 * An xarray keyed by chunk / 2: each value entry holds the (slot + 1) of two neighbouring
 * chunks in 31 bits each, 0 meaning "not copied". Nothing is allocated for chunks never
 * written; a dense region costs 576 bytes of xarray node per 128 chunks, 4.5 bytes per
 * copied 4 KiB chunk. An entry, once set, never changes until the snapshot goes.
 *
 * Lock story: readers use xa_load() under RCU (the xarray's own). There is one writer,
 * the COW pipeline's ordered completion workqueue (cow.c), so the read-modify-write of a
 * pair needs no lock of its own.
 * Context: cblb_index_get() any context; cblb_index_set() process context (GFP_NOIO).
 */
#include <linux/xarray.h>
#include "cblb.h"

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

/* Record chunk in slot. The single writer only (see the top). */
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
