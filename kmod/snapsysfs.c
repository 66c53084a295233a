// SPDX-License-Identifier: GPL-2.0
/*
 * /sys/kernel/cblb/<dev>: one folder per snapshot, its attributes (kmod/doc/INTERFACE.md),
 * and the kobject whose release frees the snapshot.
 *
 * Lock story: attribute show() reads snapshot fields without locks (READ_ONCE, atomics;
 * the store's under its store_mutex); removing a snapshot's kobject (cblb_snapsysfs_hide)
 * waits for running show() calls, and the kobject's release frees the snapshot.
 */
#define pr_fmt(fmt) "cblb: " fmt

#include <linux/kernel.h>
#include <linux/kobject.h>
#include <linux/slab.h>
#include <linux/sysfs.h>
#include "cblb.h"
#include "cbt.h"
#include "store.h"
#include "snapsysfs.h"

static struct kobject *parent;		/* /sys/kernel/cblb, set once by cblb_snapsysfs_init() */

void cblb_snapsysfs_init(struct kobject *root)
{
	parent = root;
}

static struct cblb_snapshot *to_snap(struct kobject *kobj)
{
	return container_of(kobj, struct cblb_snapshot, kobj);
}

#define SNAP_ATTR(_name, _fmt, ...)						\
static ssize_t snap_##_name##_show(struct kobject *kobj,			\
				   struct kobj_attribute *attr, char *buf)	\
{										\
	struct cblb_snapshot *s = to_snap(kobj);				\
										\
	(void)s;								\
	return sysfs_emit(buf, _fmt "\n", __VA_ARGS__);			\
}										\
static struct kobj_attribute snap_##_name##_attr =				\
	__ATTR(_name, 0444, snap_##_name##_show, NULL)

SNAP_ATTR(state, "%s", cblb_state_name(READ_ONCE(s->state)));
SNAP_ATTR(origin, "%s", s->origin_path);
SNAP_ATTR(origin_dev, "%u:%u", MAJOR(s->origin_dev), MINOR(s->origin_dev));

SNAP_ATTR(file_size, "%llu", (unsigned long long)(s->store.file_bytes >> SECTOR_SHIFT));
SNAP_ATTR(max_files, "%u", s->store.max_files);
SNAP_ATTR(chunk_size, "%u", CBLB_CHUNK_SIZE);
SNAP_ATTR(cow_chunks, "%lld", (long long)atomic64_read(&s->cow_chunks));
SNAP_ATTR(cow_bytes, "%lld", (long long)atomic64_read(&s->cow_chunks) << CBLB_CHUNK_SHIFT);
SNAP_ATTR(store_capacity, "%llu", (unsigned long long)cblb_store_capacity(&s->store));
SNAP_ATTR(start_time_ns, "%llu", (unsigned long long)s->start_time_ns);
SNAP_ATTR(start_latency_us, "%llu", (unsigned long long)s->start_latency_us);
SNAP_ATTR(freeze, "%s", s->freeze);
SNAP_ATTR(set, "%s", s->set_name);
SNAP_ATTR(frozen_us, "%llu", (unsigned long long)s->frozen_us);
/* Changed-block tracking of this start (doc/CBT.md); meaningful once cbt_ready. */
SNAP_ATTR(cbt_generation, "%pUb", &s->cbt_generation);
SNAP_ATTR(cbt_sequence, "%llu", (unsigned long long)s->cbt_sequence);
SNAP_ATTR(cbt_block_size, "%u", cblb_cbt_block_size(s));
SNAP_ATTR(cbt_changed_blocks, "%llu", (unsigned long long)s->cbt_changed);

static ssize_t snap_cbt_map_read(struct file *f, struct kobject *kobj,
				 cblb_bin_attr_arg *attr, char *buf, loff_t off, size_t count)
{
	return cblb_cbt_read_map(to_snap(kobj), buf, off, count);
}

/* Size 0: sysfs does not clip reads; the read stops at the map's end. */
static struct bin_attribute snap_cbt_map_attr = {
	.attr = { .name = "cbt_map", .mode = 0400 },
	.read = snap_cbt_map_read,
};

static cblb_bin_attr_entry *snap_bin_attrs[] = {
	&snap_cbt_map_attr,
	NULL,
};
/* xarray leaf nodes: 576 bytes per 64 entries, each entry holding two chunks. */
SNAP_ATTR(index_bytes, "%lld",
	  (long long)DIV_ROUND_UP(atomic64_read(&s->index_entries), 64) * 576);

static ssize_t snap_error_show(struct kobject *kobj, struct kobj_attribute *attr, char *buf)
{
	struct cblb_snapshot *s = to_snap(kobj);
	ssize_t n;

	spin_lock(&s->state_lock);
	n = sysfs_emit(buf, "%s\n", s->error);
	spin_unlock(&s->state_lock);
	return n;
}
static struct kobj_attribute snap_error_attr = __ATTR(error, 0444, snap_error_show, NULL);

/* Attributes that look into the store: under store_mutex (a failed start frees it). */
static ssize_t snap_store_extents_show(struct kobject *kobj, struct kobj_attribute *attr,
				       char *buf)
{
	struct cblb_snapshot *s = to_snap(kobj);
	ssize_t n = 0;

	mutex_lock(&s->store_mutex);
	if (s->store.files)
		n = cblb_store_show_extents(&s->store, buf);
	mutex_unlock(&s->store_mutex);
	return n;
}

/* Like SNAP_ATTR, for values that look into the store: under store_mutex. */
#define SNAP_STORE_ATTR(_name, _fmt, ...)					\
static ssize_t snap_##_name##_show(struct kobject *kobj,			\
				   struct kobj_attribute *attr, char *buf)	\
{										\
	struct cblb_snapshot *s = to_snap(kobj);				\
	ssize_t n;								\
										\
	mutex_lock(&s->store_mutex);						\
	n = sysfs_emit(buf, _fmt "\n", __VA_ARGS__);				\
	mutex_unlock(&s->store_mutex);						\
	return n;								\
}										\
static struct kobj_attribute snap_##_name##_attr =				\
	__ATTR(_name, 0444, snap_##_name##_show, NULL)

static struct kobj_attribute snap_store_extents_attr =
	__ATTR(store_extents, 0444, snap_store_extents_show, NULL);

SNAP_STORE_ATTR(catalog, "%s", s->store.catalog_name ? s->store.catalog_name : "");
SNAP_STORE_ATTR(files_used, "%u", s->store.files ? cblb_store_files(&s->store) : 0);

static struct attribute *snap_attrs[] = {
	&snap_state_attr.attr, &snap_origin_attr.attr, &snap_origin_dev_attr.attr,
	&snap_catalog_attr.attr, &snap_file_size_attr.attr, &snap_max_files_attr.attr,
	&snap_files_used_attr.attr, &snap_chunk_size_attr.attr, &snap_cow_chunks_attr.attr,
	&snap_cow_bytes_attr.attr, &snap_store_capacity_attr.attr, &snap_error_attr.attr,
	&snap_start_time_ns_attr.attr, &snap_start_latency_us_attr.attr, &snap_freeze_attr.attr,
	&snap_store_extents_attr.attr, &snap_index_bytes_attr.attr, &snap_set_attr.attr,
	&snap_frozen_us_attr.attr, &snap_cbt_generation_attr.attr, &snap_cbt_sequence_attr.attr,
	&snap_cbt_block_size_attr.attr, &snap_cbt_changed_blocks_attr.attr,
	NULL,
};

static const struct attribute_group snap_group = {
	.attrs = snap_attrs,
	.bin_attrs = snap_bin_attrs,
};

static const struct attribute_group *snap_groups[] = {
	&snap_group,
	NULL,
};

static void snap_release(struct kobject *kobj)
{
	struct cblb_snapshot *s = to_snap(kobj);

	cblb_bdev_close(&s->origin);
	kfree(s->origin_path);
	kfree(s);
}

static const struct kobj_type snap_ktype = {
	.release = snap_release,
	.sysfs_ops = &kobj_sysfs_ops,
	.default_groups = snap_groups,
};

/* On failure the snapshot is freed (through the kobject's release). */
int cblb_snapsysfs_add(struct cblb_snapshot *s)
{
	int err = cblb_kobject_init_and_add(&s->kobj, &snap_ktype, parent, "%s", s->name);

	if (err)
		kobject_put(&s->kobj);
	return err;
}

/* Remove the snapshot's folder; returns once no show() of it runs. */
void cblb_snapsysfs_hide(struct cblb_snapshot *s)
{
	kobject_del(&s->kobj);
}

/* Drop the registry's reference: the release frees s. After cblb_snapsysfs_hide(). */
void cblb_snapsysfs_del(struct cblb_snapshot *s)
{
	kobject_put(&s->kobj);
}
