// SPDX-License-Identifier: GPL-2.0
/*
 * The registry: total=N slots of snapshots, and the three commands that change them.
 *
 * "start" and "startset", which make the point in time, are in start.c.
 *
 * Lock story:
 * - cblb_cmd_lock (mutex) protects slots[] and serialises every command, module
 *   exit included. It is held across "start" (freeze, track, thaw): nothing that runs
 *   while the origin is frozen takes it.
 * - A snapshot's state changes under its state_lock; the COW worker fails snapshots
 *   without the registry lock. Readers peek with READ_ONCE().
 * - Sysfs attribute reads need no lock: destroy() removes the snapshot's folder (which
 *   waits for running reads) before it frees anything they show.
 */
#define pr_fmt(fmt) "cblb: " fmt

#include <linux/ctype.h>
#include <linux/delay.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/namei.h>
#include <linux/slab.h>
#include <linux/ktime.h>
#include <linux/timekeeping.h>
#include "cblb.h"
#include "reads.h"
#include "stack.h"
#include "cbt.h"
#include "store.h"
#include "cow.h"
#include "snapimage.h"
#include "tracker.h"
#include "snapsysfs.h"
#include "registry.h"
#include "cblb_trace.h"

static struct cblb_snapshot **slots;	/* Protected by cblb_cmd_lock */

/* The size of the registry: the seed's total=N. */
int cblb_total = 4;
module_param_named(total, cblb_total, int, 0444);
MODULE_PARM_DESC(total, "Most snapshot devices at once, 1..255 (default 4). Each slot costs one pointer; finding the snapshot of an origin write is hashed, so a larger N costs writes nothing.");

/* Caller holds cblb_cmd_lock. */
struct cblb_snapshot *cblb_find(const char *name)
{
	int i;

	lockdep_assert_held(&cblb_cmd_lock);

	for (i = 0; i < cblb_total; i++)
		if (slots[i] && !strcmp(slots[i]->name, name))
			return slots[i];
	return NULL;
}

static bool path_exists(const char *fmt, const char *name)
{
	char *p = kasprintf(GFP_KERNEL, fmt, name);
	struct path path;
	bool exists = true;

	if (p && kern_path(p, 0, &path))
		exists = false;
	else if (p)
		path_put(&path);
	kfree(p);
	return exists;
}

/* Would /dev/<name> clash: a block device of that name, or any /dev entry (zero, null)? */
static bool bdev_name_taken(const char *name)
{
	return path_exists("/sys/class/block/%s", name) || path_exists("/dev/%s", name);
}

/*
 * A registered snapshot whose origin shares sectors with s's (a whole disk and one of its
 * partitions): one write would need copying for both at different offsets. Caller holds
 * cblb_cmd_lock.
 */
static struct cblb_snapshot *overlapping(struct cblb_snapshot *s)
{
	int i;

	lockdep_assert_held(&cblb_cmd_lock);
	for (i = 0; i < cblb_total; i++) {
		struct cblb_snapshot *o = slots[i];

		if (o && o->origin_disk == s->origin_disk &&
		    o->origin_start < s->origin_start + s->origin_sectors &&
		    s->origin_start < o->origin_start + o->origin_sectors)
			return o;
	}
	return NULL;
}

/*
 * Catalogs and origins that must not meet: the first other snapshot o such that s's
 * catalog lies on o's origin (catalog_of_s), or o's catalog lies on s's origin (!catalog_of_s),
 * directly or through a device built on it. The store's raw writes would pass the other
 * snapshot's copy-on-write, or the two COW workers would wait on each other. A walk that
 * cannot tell counts as a meeting. Caller holds cblb_cmd_lock.
 */
struct cblb_snapshot *cblb_catalog_meets_origin(struct cblb_snapshot *s, bool catalog_of_s)
{
	char top[BDEVNAME_SIZE];
	int i;

	lockdep_assert_held(&cblb_cmd_lock);
	for (i = 0; i < cblb_total; i++) {
		struct cblb_snapshot *o = slots[i];
		struct cblb_snapshot *origin = catalog_of_s ? o : s;
		struct cblb_store *st;

		if (!o || o == s)
			continue;
		st = catalog_of_s ? &s->store : &o->store;
		if (st->home && cblb_stack_reaches_origin(origin, st->home, top, sizeof(top)))
			return o;
		if (!st->home && st->home_sb &&
		    cblb_sb_reaches_origin(origin, st->home_sb, top, sizeof(top)))
			return o;	/* btrfs, or a filesystem whose devices cannot be named */
	}
	return NULL;
}

int cblb_cmd_create(const char *name, const char *origin)
{
	struct cblb_snapshot *s, *other;
	struct cblb_cbt *cbt;
	dev_t dev;
	int i, slot = -1, err;

	if (!cblb_valid_name(name)) {
		pr_notice_ratelimited("create: invalid name '%s' (1-%d of A-Z a-z 0-9 . _ -)\n",
				      name, CBLB_NAME_MAX);
		return -EINVAL;
	}
	err = cblb_lookup_bdev(origin, &dev);
	if (err) {
		pr_notice_ratelimited("create %s: %s is not a block device (%d)\n", name, origin, err);
		return err;
	}
	mutex_lock(&cblb_cmd_lock);
	if (cblb_find(name) || bdev_name_taken(name)) {
		pr_notice_ratelimited("create %s: the name is taken\n", name);
		err = -EEXIST;
		goto out_unlock;
	}
	for (i = 0; i < cblb_total; i++) {
		if (slots[i] && slots[i]->origin_dev == dev) {
			pr_notice_ratelimited("create %s: %s already has snapshot %s\n", name, origin,
					      slots[i]->name);
			err = -EBUSY;
			goto out_unlock;
		}
		if (!slots[i] && slot < 0)
			slot = i;
	}
	if (slot < 0) {
		pr_notice_ratelimited("create %s: all total=%d slots are used\n", name, cblb_total);
		err = -ENOSPC;
		goto out_unlock;
	}

	s = kzalloc(sizeof(*s), GFP_KERNEL);
	if (!s) {
		err = -ENOMEM;
		goto out_unlock;
	}
	strscpy(s->name, name, sizeof(s->name));
	s->slot = slot;
	s->origin_dev = dev;
	spin_lock_init(&s->state_lock);
	mutex_init(&s->store_mutex);
	cblb_reads_init(s);
	s->state = CBLB_CREATED;
	s->freeze = "";
	s->origin_path = kstrdup(origin, GFP_KERNEL);
	if (!s->origin_path) {
		err = -ENOMEM;
		goto fail_path;
	}
	err = cblb_bdev_open(dev, &s->origin);
	if (err) {
		pr_notice_ratelimited("create %s: cannot open %s (%d)\n", name, origin, err);
		goto fail_open;
	}
	if (cblb_is_snapimage(s->origin.bdev->bd_disk)) {
		pr_notice_ratelimited("create %s: %s is itself a snapshot\n", name, origin);
		err = -EINVAL;
		goto fail_origin;
	}
	s->origin_disk = s->origin.bdev->bd_disk;
	s->origin_start = cblb_bdev_start(s->origin.bdev);
	s->origin_sectors = bdev_nr_sectors(s->origin.bdev);
	s->origin_lbs = bdev_logical_block_size(s->origin.bdev);
	if (!s->origin_sectors || s->origin_lbs > CBLB_CHUNK_SIZE) {
		pr_notice_ratelimited("create %s: %s is empty or has blocks over 4 KiB\n", name,
				      origin);
		err = -EINVAL;
		goto fail_origin;
	}
	/* Zone reset, reset-all, finish and zone append change data without a write the
	 * hook can copy or mark (doc/EDGES.md): refused, not copied wrongly. */
	if (bdev_is_zoned(s->origin.bdev)) {
		pr_notice_ratelimited("create %s: %s is a zoned device; zone resets and appends change it without a write that could be copied, so zoned devices cannot be snapshotted\n",
				      name, origin);
		err = -EOPNOTSUPP;
		goto fail_origin;
	}
	other = overlapping(s);
	if (other) {
		pr_notice_ratelimited("create %s: %s overlaps the origin %s of snapshot %s; a disk and its partitions cannot be snapshotted at once\n",
				      name, origin, other->origin_path, other->name);
		err = -EBUSY;
		goto fail_origin;
	}
	other = cblb_catalog_meets_origin(s, false);
	if (other) {
		pr_notice_ratelimited("create %s: %s holds the catalog %s of snapshot %s (or one built on it); remove %s first\n",
				      name, origin, other->store.catalog_name, other->name, other->name);
		err = -EBUSY;
		goto fail_origin;
	}
	/* Changed-block tracking of the origin begins with its first create (cbt.c). */
	err = cblb_cbt_attach(s);
	if (err) {
		pr_notice_ratelimited("create %s: cannot track changes of %s (%d)\n", name,
				      origin, err);
		goto fail_origin;
	}
	cbt = s->cbt;
	err = cblb_snapsysfs_add(s);
	if (err) {
		cblb_cbt_detach(cbt);
		goto fail_sysfs;	/* the kobject's release freed s */
	}
	slots[slot] = s;
	mutex_unlock(&cblb_cmd_lock);
	trace_cblb_state(s->name, "none", "created");
	return 0;

fail_origin:
	cblb_bdev_close(&s->origin);
fail_open:
	kfree(s->origin_path);
fail_path:
	kfree(s);
fail_sysfs:
out_unlock:
	mutex_unlock(&cblb_cmd_lock);
	return err;
}

/* Tear a snapshot down. Caller holds cblb_cmd_lock; the disk is not open. */
static void destroy(struct cblb_snapshot *s)
{
	lockdep_assert_held(&cblb_cmd_lock);
	slots[s->slot] = NULL;
	/* No sysfs reader may see what is freed below: this waits for running show()s. */
	cblb_snapsysfs_hide(s);
	/* Reads of /dev/<dev> fail from here on; those already sent finish first. */
	if (s->disk)
		cblb_reads_close(s);
	cblb_tracker_del(s);
	cblb_cbt_detach(s->cbt);	/* tracking of the origin goes on */
	WRITE_ONCE(s->dying, true);
	cblb_cow_exit(s);
	cblb_snapimage_destroy(s);
	cblb_store_exit(&s->store);
	cblb_bdev_close(&s->origin);
	trace_cblb_state(s->name, cblb_state_name(s->state), "removed");
	cblb_snapsysfs_del(s);	/* frees s */
}

/*
 * Is the snapshot disk in use? udev and blkid open a new disk for a moment to probe it,
 * so an unclaimed open is given up to CBLB_REMOVE_WAIT_MS to go away; a claimed one (a
 * mount) is not waited for.
 */
static bool snap_disk_busy(struct gendisk *disk)
{
	unsigned int waited = 0;

	if (!disk)
		return false;
	while (cblb_disk_open(disk)) {
		if (cblb_disk_claimed(disk) || waited >= CBLB_REMOVE_WAIT_MS)
			return true;
		msleep(20);
		waited += 20;
	}
	return false;
}

int cblb_cmd_remove(const char *name)
{
	struct cblb_snapshot *s;
	int err = 0;

	mutex_lock(&cblb_cmd_lock);
	s = cblb_find(name);
	if (!s) {
		pr_notice_ratelimited("remove %s: no such snapshot\n", name);
		err = -ENOENT;
	} else if (snap_disk_busy(s->disk)) {
		pr_notice_ratelimited("remove %s: /dev/%s is open or mounted\n", name, name);
		err = -EBUSY;
	} else {
		destroy(s);
	}
	mutex_unlock(&cblb_cmd_lock);
	return err;
}

int cblb_debug_show(char *buf)
{
	int i, used = 0, len;

	mutex_lock(&cblb_cmd_lock);
	for (i = 0; i < cblb_total; i++)
		used += !!slots[i];
	len = sysfs_emit(buf, "cblb %s total=%d used=%d\n", CBLB_VERSION, cblb_total, used);
	for (i = 0; i < cblb_total && len < PAGE_SIZE - 200; i++) {
		struct cblb_snapshot *s = slots[i];

		if (!s)
			continue;
		len += sysfs_emit_at(buf, len, "%s %s origin=%s files=%u/%u cow_chunks=%lld\n",
				     s->name, cblb_state_name(READ_ONCE(s->state)), s->origin_path,
				     s->store.files ? cblb_store_files(&s->store) : 0,
				     s->store.max_files,
				     (long long)atomic64_read(&s->cow_chunks));
	}
	mutex_unlock(&cblb_cmd_lock);
	return len;
}

int cblb_registry_init(void)
{
	slots = kcalloc(cblb_total, sizeof(*slots), GFP_KERNEL);
	return slots ? 0 : -ENOMEM;
}

/* Module exit: every snapshot goes. Open snapshot disks hold a module reference, so
 * none is open here. */
void cblb_registry_exit(void)
{
	int i;

	mutex_lock(&cblb_cmd_lock);
	for (i = 0; i < cblb_total; i++)
		if (slots[i])
			destroy(slots[i]);
	cblb_cbt_exit();
	mutex_unlock(&cblb_cmd_lock);
	kfree(slots);
}
