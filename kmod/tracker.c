// SPDX-License-Identifier: GPL-2.0
/*
 * The origin-write tracker: an ftrace hook on submit_bio_noacct().
 *
 * Every bio in the system enters submit_bio_noacct(). A ftrace_ops with IPMODIFY sits on
 * its first instruction; for a bio that modifies a sector range of a tracked origin, the
 * handler rewrites the return address so that cblb_origin_submit_bio() runs instead. That
 * function either queues the bio for the COW worker or passes it on by calling
 * submit_bio_noacct() itself; the handler recognises those calls by their return address
 * inside this module and lets them through. A write the copy-on-write path can tell
 * without a lock may pass now (cblb_cow_passes_unlocked(): the snapshot no longer copies,
 * or a rewrite of copied chunks with no snapshot read in flight) is not redirected. The
 * same holds for bios of disks of any kind (bio-based or blk-mq), on 6.1 and 6.12 alike,
 * without touching the disk's operations.
 *
 * Lock story:
 * - cblb_tracked (hash by gendisk) is RCU: the handler and cblb_origin_submit_bio()
 *   look it up under rcu_read_lock();
 *   writers hold cblb_cmd_lock and call synchronize_rcu() after deleting.
 * - cblb_redirected counts tasks that were sent to cblb_origin_submit_bio() and have not
 *   left it; module exit waits for zero after unregistering the hook, then for an RCU
 *   tasks grace period (no task left on the module's last instructions).
 * - The hook is FTRACE_OPS_FL_PERMANENT: ftrace cannot be switched off under it.
 * - Changed-block tracking (cbt.c) marks every modifying bio of a tracked origin here,
 *   snapshot or not; the module's own store writes (end_io cblb_cow_endio) and the
 *   bios it passes on itself are not marked.
 * - A snapshot in the hash is tracked only once its start has opened the gate
 *   (gate_open >= s->gate_seq, opened by start.c): the members of a set enter the hash one by
 *   one and become tracked at one instant, the store that opens the gate.
 * - cblb_split_bs gives the pieces of a write cut at an origin's edge; cblb_splits counts
 *   those not yet ended. Module exit waits for zero (wake-ups on cblb_redirect_wq), then
 *   for RCU and RCU tasks grace periods (no completion left on the module's last
 *   instructions), then frees the bio_set.
 * Context: the handler is called from any context that submits bios (process, and
 *   rarely softirq); it never sleeps. cblb_origin_submit_bio() runs in the submitter's
 *   context, possibly inside another driver's submit_bio: it never waits for I/O.
 */
#define pr_fmt(fmt) "cblb: " fmt

#include <linux/ftrace.h>
#include <linux/hashtable.h>
#include <linux/module.h>
#include <linux/rculist.h>
#include "cblb.h"
#include "cbt.h"
#include "cow.h"
#include "tracker.h"

static atomic64_t gate_open = ATOMIC64_INIT(0);	/* only grows; written under cblb_cmd_lock */

/* Open the gate up to seq: every snapshot in the hash whose gate_seq <= seq is tracked. */
void cblb_tracker_open_gate(u64 seq)
{
	lockdep_assert_held(&cblb_cmd_lock);
	atomic64_set_release(&gate_open, seq);
}

static DEFINE_HASHTABLE(cblb_tracked, 8);
static atomic_t cblb_nr_tracked = ATOMIC_INIT(0);
static atomic_t cblb_redirected = ATOMIC_INIT(0);
static DECLARE_WAIT_QUEUE_HEAD(cblb_redirect_wq);
static struct bio_set cblb_split_bs;	/* writes cut at an origin's edge */
static atomic_t cblb_splits = ATOMIC_INIT(0);	/* their pieces not yet ended */

static bool bio_modifies(struct bio *bio)
{
	switch (bio_op(bio)) {
	case REQ_OP_WRITE:
	case REQ_OP_WRITE_ZEROES:
	case REQ_OP_DISCARD:
	case REQ_OP_SECURE_ERASE:
		return bio->bi_iter.bi_size != 0;
	default:
		return false;
	}
}

/*
 * The snapshot whose origin the bio touches, and the touched range relative to the
 * origin. *cut is 0 when the bio lies within one origin (or outside every origin past
 * its first); else the bio crosses the start or end of a tracked origin on its disk,
 * *cut sectors from its first, and must be split there before any copy is decided
 * (doc/EDGES.md): one bio over the end of loopXp1 and the start of loopXp2 has two
 * origins to copy for. Caller is in an RCU read-side section.
 */
static struct cblb_snapshot *tracker_find(struct bio *bio, sector_t *rel, sector_t *len,
					  sector_t *cut)
{
	struct gendisk *disk = cblb_bio_disk(bio);
	struct cblb_snapshot *s, *found = NULL;
	sector_t start = cblb_bio_disk_sector(bio), end;

	end = start + bio_sectors(bio);
	*cut = 0;
	hash_for_each_possible_rcu(cblb_tracked, s, hash_node, (unsigned long)disk) {
		sector_t ostart = s->origin_start, oend = ostart + s->origin_sectors;

		if (s->origin_disk != disk || end <= ostart || start >= oend)
			continue;
		/* the nearest origin boundary inside the bio, gate or no gate */
		if (ostart > start && (!*cut || ostart - start < *cut))
			*cut = ostart - start;
		if (oend < end && (!*cut || oend - start < *cut))
			*cut = oend - start;
		if (found || atomic64_read_acquire(&gate_open) < s->gate_seq)
			continue;	/* its start has not reached the point in time */
		*rel = max(start, ostart) - ostart;
		*len = min(end, oend) - max(start, ostart);
		found = s;
	}
	return found;
}

/*
 * Decide a bio that lies within one origin (or none): copy first, or pass on; returns 0.
 * A bio over a tracked origin's edge is left alone: returns where to cut it.
 */
static sector_t origin_decide(struct bio *bio)
{
	struct cblb_snapshot *s;
	sector_t rel, len, cut;
	bool taken = false;

	rcu_read_lock();
	s = tracker_find(bio, &rel, &len, &cut);
	if (s && !cut) {
		/* Found past its gate again: marked in the current map (doc/CBT.md). */
		if (atomic_read(&cblb_nr_cbt))
			cblb_cbt_mark(bio, true);
		taken = cblb_cow_intercept(s, bio, rel, len);
	}
	rcu_read_unlock();
	if (cut)
		return cut;
	if (!taken)
		cblb_pass_bio(bio);
	return 0;
}

/* A piece of a cut write has ended: its status goes to the rest, then it is freed. */
static void origin_split_endio(struct bio *front)
{
	struct bio *rest = front->bi_private;

	if (front->bi_status && !rest->bi_status)
		rest->bi_status = front->bi_status;
	bio_put(front);
	bio_endio(rest);
	if (atomic_dec_and_test(&cblb_splits))
		wake_up_all(&cblb_redirect_wq);
}

/*
 * The first cut sectors of bio as a bio of their own that the rest (which bio becomes)
 * waits for, as the block layer splits a bio at its queue's limits; NULL when no split
 * could be made, and then bio has been ended. From cblb_split_bs, whose rescuer keeps a
 * split queued on current->bio_list from holding up the next allocation. Not bio_chain():
 * the pieces are counted, so that module exit waits for the last one to end before their
 * bio_set goes.
 */
static struct bio *origin_split(struct bio *bio, sector_t cut)
{
	bool nowait = bio->bi_opf & REQ_NOWAIT;
	struct bio *front;

	front = cblb_bio_split(bio, cut, nowait ? GFP_NOWAIT : GFP_NOIO, &cblb_split_bs);
	if (!front) {
		if (nowait) {
			bio_wouldblock_error(bio);
		} else {
			pr_err_ratelimited("a write over the edge of a snapshotted origin could not be split; failed with EIO\n");
			bio_io_error(bio);
		}
		return NULL;
	}
	atomic_inc(&cblb_splits);
	bio_inc_remaining(bio);
	front->bi_private = bio;
	front->bi_end_io = origin_split_endio;
	return front;
}

/*
 * Where the hook sends an origin write that may need a copy. A write over the edge of
 * a tracked origin is cut at every such edge and each piece decided for the origin it
 * lies in (doc/EDGES.md, "One bio, two origins").
 */
static void notrace cblb_origin_submit_bio(struct bio *bio)
{
	struct bio_list todo;
	struct bio *front;
	sector_t cut;

	/* One lookup a bio: decided, or cut and its front decided before its rest. */
	bio_list_init(&todo);
	bio_list_add(&todo, bio);
	while ((bio = bio_list_pop(&todo))) {
		cut = origin_decide(bio);
		if (!cut)
			continue;
		front = origin_split(bio, cut);
		if (!front)
			continue;
		bio_list_add_head(&todo, bio);
		bio_list_add_head(&todo, front);
	}
	if (atomic_dec_and_test(&cblb_redirected))
		wake_up_all(&cblb_redirect_wq);
}

static void notrace cblb_ftrace_handler(unsigned long ip, unsigned long parent_ip,
					struct ftrace_ops *ops, struct cblb_ftrace_regs *fregs)
{
	bool cbt = atomic_read(&cblb_nr_cbt);
	struct cblb_snapshot *s = NULL;
	struct pt_regs *regs;
	struct bio *bio;
	sector_t rel, len, cut = 0;

	if (!cbt && !atomic_read(&cblb_nr_tracked))
		return;
	if (within_module(parent_ip, THIS_MODULE))
		return;
	regs = ftrace_get_regs(fregs);
	if (!regs)
		return;
	bio = (struct bio *)regs_get_kernel_argument(regs, 0);
	if (!bio || !bio_modifies(bio) || bio->bi_end_io == cblb_cow_endio)
		return;
	/* Changed blocks are marked before the snapshot is looked for, and once more if it
	 * is found past its gate: doc/CBT.md, "Rotation at the point in time". */
	if (cbt)
		cblb_cbt_mark(bio, false);
	/* The ftrace trampoline need not disable preemption: an RCU section of our own. */
	rcu_read_lock();
	if (atomic_read(&cblb_nr_tracked))
		s = tracker_find(bio, &rel, &len, &cut);
	if (s && cbt)
		cblb_cbt_mark(bio, true);
	/* A write that may pass now, as far as can be told without a lock (a rewrite of copied
	 * chunks, no snapshot read in flight), is not redirected: it goes on from here and
	 * does not come through the trampoline a second time. A write over an origin's edge
	 * is always redirected, to be split there. */
	if (s && (cut || !cblb_cow_passes_unlocked(s, rel, len))) {
		atomic_inc(&cblb_redirected);
		instruction_pointer_set(regs, (unsigned long)cblb_origin_submit_bio);
	}
	rcu_read_unlock();
}

static struct ftrace_ops cblb_ftrace_ops = {
	.func = cblb_ftrace_handler,
	/* PERMANENT: sysctl kernel.ftrace_enabled=0 is refused while the hook is in place,
	 * so copy-on-write cannot be switched off under an active snapshot. */
	.flags = FTRACE_OPS_FL_SAVE_REGS | FTRACE_OPS_FL_IPMODIFY | FTRACE_OPS_FL_PERMANENT,
};

/* Caller holds cblb_cmd_lock. */
void cblb_tracker_add(struct cblb_snapshot *s)
{
	lockdep_assert_held(&cblb_cmd_lock);
	hash_add_rcu(cblb_tracked, &s->hash_node, (unsigned long)s->origin_disk);
	s->tracked = true;
	atomic_inc(&cblb_nr_tracked);
}

/* Caller holds cblb_cmd_lock. On return no new bio can reach the snapshot. */
void cblb_tracker_del(struct cblb_snapshot *s)
{
	lockdep_assert_held(&cblb_cmd_lock);
	if (!s->tracked)
		return;
	hash_del_rcu(&s->hash_node);
	s->tracked = false;
	atomic_dec(&cblb_nr_tracked);
	synchronize_rcu();
}

int cblb_tracker_init(void)
{
	static unsigned char func[] = "submit_bio_noacct";
	int err;

	err = bioset_init(&cblb_split_bs, BIO_POOL_SIZE, 0, BIOSET_NEED_RESCUER);
	if (err)
		return err;
	err = ftrace_set_filter(&cblb_ftrace_ops, func, sizeof(func) - 1, 0);
	if (err) {
		pr_err("cannot hook submit_bio_noacct (ftrace filter: %d); is CONFIG_DYNAMIC_FTRACE set?\n",
		       err);
		goto fail_filter;
	}
	err = register_ftrace_function(&cblb_ftrace_ops);
	if (err == -EBUSY) {
		pr_err("cannot hook submit_bio_noacct: ftrace is disabled (sysctl kernel.ftrace_enabled=1 first)\n");
		goto fail_register;
	}
	if (err) {
		pr_err("cannot hook submit_bio_noacct (register: %d); another module may hook it\n",
		       err);
		goto fail_register;
	}
	return 0;

fail_register:
	cblb_ftrace_free_filter(&cblb_ftrace_ops);
fail_filter:
	bioset_exit(&cblb_split_bs);
	return err;
}

void cblb_tracker_exit(void)
{
	unregister_ftrace_function(&cblb_ftrace_ops);
	cblb_ftrace_free_filter(&cblb_ftrace_ops);
	wait_event(cblb_redirect_wq, atomic_read(&cblb_redirected) == 0 &&
		   atomic_read(&cblb_splits) == 0);
	synchronize_rcu();	/* a piece's completion (any context) past its wake-up */
	/* A redirected task may still be on cblb_origin_submit_bio()'s last instructions,
	 * even preempted there: wait until every task has passed a voluntary switch. */
	synchronize_rcu_tasks();
	bioset_exit(&cblb_split_bs);
}
