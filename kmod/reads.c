// SPDX-License-Identifier: GPL-2.0
/*
 * Snapshot reads in flight: which origin chunks the snapshot device is reading right now,
 * so that an origin write waits for exactly the reads of the chunks it overwrites
 * (kmod/doc/LAYOUTS.md, "Origin writes wait only for the reads they must").
 *
 * A piece of a snapshot read that goes to the origin covers a run of uncopied chunks
 * [first, last] (an overlaid run, overlay.c, also holds copied chunks it reads from the
 * store: they are marked, and writes to them do not wait). It is registered
 * (cblb_reads_begin) under read_lock after the index and the staged flights said "not
 * copied" under the same lock, and leaves the list when its clone completes. The COW
 * worker stages copied chunks (cow.c) before it asks for overlapping reads, so the reads
 * it waits for all started earlier and the wait ends.
 *
 * Every clone the snapshot device sends (to the origin, the store, or a file read) is
 * also counted in nr_clones, so that remove can close the device and wait for all of
 * them (cblb_reads_close).
 *
 * Lock story:
 * - s->read_lock (spinlock, irq-safe: clones complete in any context) protects s->reads
 *   and s->reads_closed; cblb_reads_none() alone looks at s->reads without it.
 * - s->nr_clones is atomic; it is raised under read_lock while reads are open, so once
 *   cblb_reads_close() has set reads_closed no new clone is counted.
 * Context: begin/end/overlap never sleep (submit and completion paths); wait and close
 * sleep (COW worker, remove).
 */
#include <linux/bitops.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include "cblb.h"
#include "reads.h"

void cblb_reads_init(struct cblb_snapshot *s)
{
	spin_lock_init(&s->read_lock);
	INIT_LIST_HEAD(&s->reads);
	init_waitqueue_head(&s->read_wq);
	atomic_set(&s->nr_clones, 0);
	s->reads_closed = false;
}

/*
 * Caller holds read_lock and saw reads open. copied (NULL, or a bitmap that lives as long
 * as r): the chunks of the run read from the store, which writes need not wait for.
 */
void cblb_reads_begin(struct cblb_snapshot *s, struct cblb_read_range *r, u64 first, u64 last,
		      const unsigned long *copied)
{
	lockdep_assert_held(&s->read_lock);
	r->first = first;
	r->last = last;
	r->copied = copied;
	list_add_tail(&r->node, &s->reads);
}

/* A registered read of the origin is done: r leaves the list. Any context. */
void cblb_reads_forget(struct cblb_snapshot *s, struct cblb_read_range *r)
{
	unsigned long flags;

	spin_lock_irqsave(&s->read_lock, flags);
	list_del(&r->node);
	if (wq_has_sleeper(&s->read_wq))
		wake_up_all(&s->read_wq);
	spin_unlock_irqrestore(&s->read_lock, flags);
}

/*
 * A counted clone is done, its memory already given back. The last thing the clone's
 * path does with s: remove may free s once it has seen nr_clones reach zero and taken
 * read_lock (cblb_reads_close), so the drop and the wake happen under read_lock.
 */
void cblb_reads_end(struct cblb_snapshot *s)
{
	unsigned long flags;

	spin_lock_irqsave(&s->read_lock, flags);
	atomic_dec(&s->nr_clones);
	if (wq_has_sleeper(&s->read_wq))
		wake_up_all(&s->read_wq);
	spin_unlock_irqrestore(&s->read_lock, flags);
}

/* Does r read any of chunks [first, last] from the origin? */
static bool range_reads_origin(const struct cblb_read_range *r, u64 first, u64 last)
{
	u64 lo = max(first, r->first), hi = min(last, r->last);

	if (lo > hi)
		return false;
	if (!r->copied)
		return true;
	return find_next_zero_bit(r->copied, hi - r->first + 1, lo - r->first) <= hi - r->first;
}

static bool reads_overlap_locked(struct cblb_snapshot *s, u64 first, u64 last)
{
	struct cblb_read_range *r;

	list_for_each_entry(r, &s->reads, node)
		if (range_reads_origin(r, first, last))
			return true;
	return false;
}

/*
 * Is no read registered at all? Without read_lock: a hint whose ordering the caller
 * provides (cblb_cow_passes_unlocked() in cow.c says how). Any context.
 */
bool cblb_reads_none(struct cblb_snapshot *s)
{
	return list_empty(&s->reads);
}

/* Is a registered read of chunks [first, last] in flight? Any context. */
bool cblb_reads_overlap(struct cblb_snapshot *s, u64 first, u64 last)
{
	unsigned long flags;
	bool busy;

	/* Always under the lock: a reader between its index check and list_add must be seen. */
	spin_lock_irqsave(&s->read_lock, flags);
	busy = reads_overlap_locked(s, first, last);
	spin_unlock_irqrestore(&s->read_lock, flags);
	return busy;
}

/*
 * Wait until no read of chunks [first, last] that registered before now is in flight.
 * The caller has recorded those chunks as copied, so no new read of them registers.
 */
void cblb_reads_wait(struct cblb_snapshot *s, u64 first, u64 last)
{
	wait_event(s->read_wq, !cblb_reads_overlap(s, first, last));
}

/* remove: from now on reads of the snapshot device fail; wait for every clone sent. */
void cblb_reads_close(struct cblb_snapshot *s)
{
	spin_lock_irq(&s->read_lock);
	s->reads_closed = true;
	spin_unlock_irq(&s->read_lock);
	wait_event(s->read_wq, !atomic_read(&s->nr_clones));
	/* The last cblb_reads_end() may still be inside read_lock: wait for it to leave. */
	spin_lock_irq(&s->read_lock);
	spin_unlock_irq(&s->read_lock);
}
