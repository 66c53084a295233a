// SPDX-License-Identifier: GPL-2.0
/*
 * The point in time: "start" of one snapshot and "startset" of several (doc/SETS.md).
 *
 * A single start is a set of one without a name; both take the same road:
 *   prepare every member (store, catalog checks, COW pipeline), nothing tracked;
 *   freeze every member's filesystem;
 *   put every member in the tracker's hash behind the closed gate, open the gate with
 *   one store (the point in time of all members);
 *   thaw in reverse order; add each /dev/<member>.
 * Each member's changed-block map rotates around the gate (doc/CBT.md): both maps are
 * marked from just before it opens, the new one alone just after.
 * A failure before the disks are added puts every member back in "created".
 *
 * Lock story:
 * - cblb_cmd_lock is held for the whole command (commands are serialised). Nothing
 *   that runs while the origins are frozen takes it.
 * - The tracker's gate only grows; it is opened here under cblb_cmd_lock and read by
 *   the tracker (any context) with acquire semantics. A member's gate_seq is written
 *   before the member enters the hash (RCU publication orders the two).
 * - set_refused is protected by set_refused_lock (a reader must not wait for a running
 *   command, which may freeze filesystems for a while).
 */
#define pr_fmt(fmt) "cblb: " fmt

#include <linux/delay.h>
#include <linux/device-mapper.h>
#include <linux/ktime.h>
#include <linux/slab.h>
#include <linux/timekeeping.h>
#include "cblb.h"
#include "stack.h"
#include "cbt.h"
#include "store.h"
#include "cow.h"
#include "snapimage.h"
#include "tracker.h"
#include "registry.h"
#include "start.h"

static u64 gate_seq;			/* Protected by cblb_cmd_lock */
static DEFINE_SPINLOCK(set_refused_lock);
static char set_refused[2 * (CBLB_NAME_MAX + 1) + 1];	/* Protected by set_refused_lock */

/*
 * dm keeps its own count of the I/O it holds (a dm-delay, dm-crypt's queue, a thin pool's
 * deferred list, clones below it); an internal suspend (the one dm-thin and dm-cache use
 * on their pools) waits for it to reach zero, and the resume lets through what arrived
 * meanwhile. The symbols are looked up, not linked: the module does not need dm loaded.
 * False when the disk is not a dm device (or dm is not loaded).
 */
static bool drain_dm(struct gendisk *disk)
{
	struct mapped_device *(*get)(dev_t dev) = symbol_get(dm_get_md);
	void (*put)(struct mapped_device *md);
	void (*suspend)(struct mapped_device *md);
	void (*resume)(struct mapped_device *md);
	struct mapped_device *md = NULL;

	if (!get)
		return false;
	put = symbol_get(dm_put);
	if (!put)
		goto out_get;
	suspend = symbol_get(dm_internal_suspend_fast);
	if (!suspend)
		goto out_put;
	resume = symbol_get(dm_internal_resume_fast);
	if (!resume)
		goto out_suspend;
	md = get(disk_devt(disk));
	if (md) {
		suspend(md);
		resume(md);
		put(md);
	}
	symbol_put(dm_internal_resume_fast);
out_suspend:
	symbol_put(dm_internal_suspend_fast);
out_put:
	symbol_put(dm_put);
out_get:
	symbol_put(dm_get_md);
	return md != NULL;
}

/*
 * Writes sent to the origin before the instant (a raw writer is not stopped by a freeze)
 * land before start returns: what the snapshot shows is settled from then on.
 * - A request-based (blk-mq) queue holds its usage counter until a request ends:
 *   freezing it waits for them.
 * - A bio-based queue holds it only while ->submit_bio runs, and the write may still be
 *   below (held by dm-delay, queued by dm-crypt, on a slow leg). dm: an internal suspend.
 *   Any other (md, ...): while the queue stays frozen, so that new bios wait before
 *   entering it, the disk's in-flight write count must fall to zero, at most
 *   CBLB_DRAIN_WAIT_MS (-ETIMEDOUT then). A driver that counts nothing is not waited for.
 * kmod/doc/EDGES.md.
 */
static int drain_origin(struct cblb_snapshot *s)
{
	struct request_queue *q = bdev_get_queue(s->origin.bdev);
	unsigned long deadline = jiffies + msecs_to_jiffies(CBLB_DRAIN_WAIT_MS);
	unsigned int memflags;
	int err = 0;

	lockdep_assert_held(&cblb_cmd_lock);
	if (!queue_is_mq(q) && drain_dm(s->origin_disk))
		return 0;
	memflags = cblb_freeze_queue(q);
	while (!queue_is_mq(q) && cblb_disk_writes_in_flight(s->origin_disk) > 0) {
		if (time_after(jiffies, deadline)) {
			err = -ETIMEDOUT;
			break;
		}
		msleep(1);
	}
	cblb_unfreeze_queue(q, memflags);
	return err;
}

/* Undo prepare(): the member is "created" again. */
static void unprepare(struct cblb_snapshot *s)
{
	lockdep_assert_held(&cblb_cmd_lock);
	cblb_cow_exit(s);
	mutex_lock(&s->store_mutex);
	cblb_store_exit(&s->store);
	memset(&s->store, 0, sizeof(s->store));
	mutex_unlock(&s->store_mutex);
	s->dying = false;
}

/* Make the member's store and COW pipeline; nothing is tracked yet. */
static int prepare(struct cblb_start_member *m)
{
	struct cblb_snapshot *s = m->snap, *other;
	int err;

	lockdep_assert_held(&cblb_cmd_lock);
	if (cblb_bdev_start(s->origin.bdev) != s->origin_start ||
	    bdev_nr_sectors(s->origin.bdev) != s->origin_sectors) {
		pr_notice_ratelimited("start %s: %s changed place or size since create; remove and create the snapshot again\n",
				      s->name, s->origin_path);
		return -ESTALE;
	}
	mutex_lock(&s->store_mutex);
	err = cblb_store_init(s, m->catalog, m->file_blocks, m->max_files);
	mutex_unlock(&s->store_mutex);
	if (err) {
		pr_notice_ratelimited("start %s: catalog %s unusable (%d)\n", s->name, m->catalog,
				      err);
		return err;
	}
	other = cblb_catalog_meets_origin(s, true);
	if (other) {
		pr_notice_ratelimited("start %s: catalog %s is on the origin %s of snapshot %s (or on a device built on it); put the catalog on another device\n",
				      s->name, m->catalog, other->origin_path, other->name);
		err = -ELOOP;
		goto fail_store;
	}
	err = cblb_cbt_prepare(s);
	if (err)
		goto fail_store;
	err = cblb_cow_init(s);
	if (err)
		goto fail_store;
	return 0;

fail_store:
	mutex_lock(&s->store_mutex);
	cblb_store_exit(&s->store);
	memset(&s->store, 0, sizeof(s->store));
	mutex_unlock(&s->store_mutex);
	return err;
}

/* Take an active member out of the hash and back to "created" (its disk not added). */
static void untrack(struct cblb_snapshot *s)
{
	lockdep_assert_held(&cblb_cmd_lock);
	cblb_tracker_del(s);
	s->start_time_ns = 0;
	s->start_latency_us = 0;
	s->frozen_us = 0;
	s->freeze = "";
	s->set_name[0] = '\0';
	cblb_set_state(s, CBLB_CREATED);
	spin_lock(&s->state_lock);
	s->error[0] = '\0';	/* a copy may have failed it in the meantime */
	spin_unlock(&s->state_lock);
}

/*
 * Members that are missing, not "created", named twice or sized wrong refuse the whole
 * command; *bad is the first such member.
 */
static int check_members(const char *set, struct cblb_start_member *m, int n, int *bad)
{
	int i, j;

	lockdep_assert_held(&cblb_cmd_lock);
	for (i = 0; i < n; i++) {
		*bad = i;
		if (m[i].file_blocks < CBLB_MIN_FILE_BLOCKS || m[i].file_blocks > (u64)INT_MAX ||
		    !m[i].max_files || m[i].max_files > CBLB_MAX_FILES) {
			pr_notice_ratelimited("start %s: file size must be %d..%d blocks and max files 1..%d\n",
					      m[i].name, CBLB_MIN_FILE_BLOCKS, INT_MAX,
					      CBLB_MAX_FILES);
			return -EINVAL;
		}
		m[i].snap = cblb_find(m[i].name);
		if (!m[i].snap) {
			pr_notice_ratelimited("start %s: no such snapshot\n", m[i].name);
			return -ENOENT;
		}
		if (READ_ONCE(m[i].snap->state) != CBLB_CREATED) {
			pr_notice_ratelimited("start %s: already started\n", m[i].name);
			return -EALREADY;
		}
		for (j = 0; j < i; j++) {
			if (m[j].snap == m[i].snap) {
				pr_notice_ratelimited("startset %s: %s named twice\n", set,
						      m[i].name);
				return -EINVAL;
			}
		}
	}
	/*
	 * A member built on another (a loop file on its filesystem, dm over it) would wait
	 * for the other's freeze while being frozen itself: refused. Plain starts of the
	 * two, one after the other, work.
	 */
	for (i = 0; i < n; i++) {
		for (j = 0; j < n; j++) {
			char top[BDEVNAME_SIZE];

			if (i == j || cblb_stack_reaches_origin(m[j].snap, m[i].snap->origin.bdev,
							       top, sizeof(top)) != 1)
				continue;
			*bad = i;
			pr_notice_ratelimited("startset %s: %s is built on %s, another member; start them one after the other\n",
					      set, m[i].name, m[j].name);
			return -ELOOP;
		}
	}
	return 0;
}

static void refuse(const char *set, const char *member)
{
	if (!set)
		return;
	spin_lock(&set_refused_lock);
	if (member)
		snprintf(set_refused, sizeof(set_refused), "%s %s", set, member);
	else
		set_refused[0] = '\0';
	spin_unlock(&set_refused_lock);
}

/*
 * Start members m[0..n) at one point in time. set is the set's name, NULL for the seed's
 * single "start". Returns 0 or the errno of the first member that could not start (named
 * in set_refused); then no member is active.
 */
int cblb_cmd_start_set(const char *set, struct cblb_start_member *m, int n)
{
	int i, j, err, bad = 0, frozen, prepared = 0;
	ktime_t t0, t_freeze;
	u64 seq, now, frozen_us;

	if (set && !cblb_valid_name(set)) {
		pr_notice_ratelimited("startset: invalid set name\n");
		return -EINVAL;
	}
	refuse(set, NULL);
	if (n < 1 || n > CBLB_SET_MAX)
		return -EINVAL;
	mutex_lock(&cblb_cmd_lock);
	err = check_members(set ? set : "", m, n, &bad);
	if (err)
		goto fail_check;
	t0 = ktime_get();
	for (prepared = 0; prepared < n; prepared++) {
		err = prepare(&m[prepared]);
		if (err) {
			bad = prepared;
			goto fail_prepare;
		}
	}

	/* Every filesystem on a member is frozen (journal clean) around the instant. */
	t_freeze = ktime_get();
	for (frozen = 0; frozen < n; frozen++) {
		struct cblb_snapshot *s = m[frozen].snap;

		m[frozen].freeze_err = cblb_freeze(s->origin.bdev, &m[frozen].fs_frozen);
		if (m[frozen].freeze_err && m[frozen].freeze_err != -EBUSY) {
			pr_notice_ratelimited("start %s: freezing %s failed (%d)\n", s->name,
					      s->origin_path, m[frozen].freeze_err);
			err = m[frozen].freeze_err;
			bad = frozen;
			goto fail_freeze;
		}
	}

	/* Behind the closed gate, then one store opens it for every member. */
	seq = ++gate_seq;
	for (i = 0; i < n; i++) {
		struct cblb_snapshot *s = m[i].snap;

		if (m[i].freeze_err)
			s->freeze = "already-frozen";
		else if (m[i].fs_frozen)
			s->freeze = "frozen";
		else if (cblb_bdev_held(s->origin.bdev))
			s->freeze = "not-frozen";	/* dm, md, btrfs before 6.8 */
		else
			s->freeze = "unmounted";
		strscpy(s->set_name, set ? set : "", sizeof(s->set_name));
		s->gate_seq = seq;
		cblb_set_state(s, CBLB_ACTIVE);
		cblb_tracker_add(s);
		cblb_cbt_dual(s);
	}
	cblb_tracker_open_gate(seq);
	for (i = 0; i < n; i++)
		cblb_cbt_flip(m[i].snap);
	now = ktime_get_real_ns();
	for (i = 0, err = 0; i < n && !err; i++)
		err = drain_origin(m[i].snap);
	for (j = n - 1; j >= 0; j--)
		if (!m[j].freeze_err)
			cblb_thaw(m[j].snap->origin.bdev);
	if (err) {
		bad = i - 1;
		pr_notice_ratelimited("start %s: writes sent to %s before the instant were still in flight below it after %u s; nothing was started, start again\n",
				      m[bad].name, m[bad].snap->origin_path,
				      CBLB_DRAIN_WAIT_MS / 1000);
		refuse(set, m[bad].name);
		i = 0;		/* every member goes back to "created" */
		goto fail_instant;
	}
	frozen_us = ktime_to_us(ktime_sub(ktime_get(), t_freeze));
	/* No handler marks the frozen maps any more once a grace period has passed. */
	synchronize_rcu();
	for (i = 0; i < n; i++)
		cblb_cbt_frozen(m[i].snap);
	for (i = 0; i < n; i++) {
		m[i].snap->start_time_ns = now;
		m[i].snap->frozen_us = frozen_us;
		m[i].snap->start_latency_us = ktime_to_us(ktime_sub(ktime_get(), t0));
	}

	for (i = 0; i < n; i++) {
		err = cblb_snapimage_create(m[i].snap);
		if (err) {
			pr_notice_ratelimited("start %s: cannot add /dev/%s (%d)\n", m[i].name,
					      m[i].name, err);
			goto fail_disk;
		}
	}
	for (i = 0; i < n; i++)
		cblb_store_started(&m[i].snap->store);
	mutex_unlock(&cblb_cmd_lock);
	return 0;

fail_disk:
	/* Members before i have a disk that udev may hold open already: they are failed
	 * (no copy, reads fail; remove cleans them up). Member i and those after it go back
	 * to "created". */
	refuse(set, m[i].name);
fail_instant:
	for (j = 0; j < n; j++)
		cblb_cbt_unflip(m[j].snap);	/* no change is lost, the sequence goes back */
	for (j = 0; j < i; j++) {
		cblb_fail(m[j].snap, "set %s: /dev/%s could not be added (%d); remove the set's snapshots and start them again",
			  set ? set : "", m[i].name, err);
		cblb_store_unname(&m[j].snap->store);
	}
	for (j = i; j < n; j++) {
		untrack(m[j].snap);
		unprepare(m[j].snap);
	}
	goto out_unlock;
fail_freeze:
	while (frozen-- > 0)
		if (!m[frozen].freeze_err)
			cblb_thaw(m[frozen].snap->origin.bdev);
fail_prepare:
	while (prepared-- > 0)
		unprepare(m[prepared].snap);
fail_check:
	refuse(set, m[bad].name);
out_unlock:
	mutex_unlock(&cblb_cmd_lock);
	return err;
}

int cblb_cmd_start(const char *name, const char *catalog, u64 file_blocks, u32 max_files)
{
	struct cblb_start_member m = {
		.name = name, .catalog = catalog, .file_blocks = file_blocks,
		.max_files = max_files,
	};

	return cblb_cmd_start_set(NULL, &m, 1);
}

/* /sys/kernel/cblb/set_refused: "<set> <member>" of the last refused startset. */
ssize_t cblb_set_refused_show(char *buf)
{
	char copy[sizeof(set_refused)];

	spin_lock(&set_refused_lock);
	strscpy(copy, set_refused, sizeof(copy));
	spin_unlock(&set_refused_lock);
	return sysfs_emit(buf, "%s\n", copy);
}
