// SPDX-License-Identifier: GPL-2.0
/*
 * /sys/kernel/cblb: the seed's command file, the debug summary, one folder per snapshot.
 *
 * Commands (kmod/doc/INTERFACE.md): "create <dev> <partition> begin end",
 * "start <dev> <catalog> <file size> <max files>", "remove <dev>", and
 * "startset <set> <dev> <catalog> <file size> <max files> ..." (doc/SETS.md). One per write();
 * blanks separate words; a trailing newline is accepted. A refused command fails the
 * write() with its errno and logs one rate-limited line saying why. Writing needs
 * CAP_SYS_ADMIN (EPERM otherwise).
 *
 * Lock story: attribute show() reads snapshot fields without locks (READ_ONCE, atomics);
 * removing a snapshot's kobject waits for running show() calls, and the kobject's
 * release frees the snapshot. Commands take cblb_registry_lock in registry.c.
 */
#define pr_fmt(fmt) "cblb: " fmt

#include <linux/capability.h>
#include <linux/kernel.h>
#include <linux/kobject.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/sysfs.h>
#include "cblb.h"

#define CMD_MAX		PAGE_SIZE
#define CMD_WORDS	(2 + 4 * CBLB_SET_MAX)

struct kobject *cblb_kobj;

static int split_words(char *line, char **words, int max)
{
	int n = 0;
	char *w;

	while ((w = strsep(&line, " \t\n")) != NULL) {
		if (!*w)
			continue;
		if (n == max)
			return -E2BIG;
		words[n++] = w;
	}
	return n;
}

/* "startset <set>" followed by 1..CBLB_SET_MAX groups of the words of "start". */
static int run_startset(char **w, int n)
{
	struct cblb_start_member *m;
	int i, nr = (n - 2) / 4, err = -EINVAL;

	if (n < 6 || (n - 2) % 4)
		goto usage;
	m = kcalloc(nr, sizeof(*m), GFP_KERNEL);
	if (!m)
		return -ENOMEM;
	for (i = 0; i < nr; i++) {
		char **g = w + 2 + 4 * i;
		unsigned long long blocks;
		unsigned int files;

		if (kstrtoull(g[2], 10, &blocks) || kstrtouint(g[3], 10, &files)) {
			kfree(m);
			goto usage;
		}
		m[i].name = g[0];
		m[i].catalog = g[1];
		m[i].file_blocks = blocks;
		m[i].max_files = files;
	}
	err = cblb_cmd_start_set(w[1], m, nr);
	kfree(m);
	return err;
usage:
	pr_notice_ratelimited("startset: usage: startset <set> <dev> <catalog> <file size> <max files> [<dev> <catalog> <file size> <max files> ...] (1..%d members)\n",
			      CBLB_SET_MAX);
	return err;
}

static int run_cmd(char *line, char **w)
{
	int n = split_words(line, w, CMD_WORDS);
	unsigned long long blocks;
	unsigned int files;

	if (n == -E2BIG && !strcmp(w[0], "startset")) {
		pr_notice_ratelimited("startset: at most %d members\n", CBLB_SET_MAX);
		return -E2BIG;
	}
	if (n <= 0)
		goto usage;
	if (!strcmp(w[0], "create")) {
		if (n != 5 || strcmp(w[3], "begin") || strcmp(w[4], "end")) {
			pr_notice_ratelimited("create: usage: create <dev> <partition> begin end\n");
			return -EINVAL;
		}
		return cblb_cmd_create(w[1], w[2]);
	}
	if (!strcmp(w[0], "start")) {
		if (n != 5 || kstrtoull(w[3], 10, &blocks) || kstrtouint(w[4], 10, &files)) {
			pr_notice_ratelimited("start: usage: start <dev> <catalog> <file size> <max files>\n");
			return -EINVAL;
		}
		return cblb_cmd_start(w[1], w[2], blocks, files);
	}
	if (!strcmp(w[0], "startset"))
		return run_startset(w, n);
	if (!strcmp(w[0], "track") || !strcmp(w[0], "untrack")) {
		if (n != 2) {
			pr_notice_ratelimited("%s: usage: %s <partition>\n", w[0], w[0]);
			return -EINVAL;
		}
		return w[0][0] == 't' ? cblb_cmd_track(w[1]) : cblb_cmd_untrack(w[1]);
	}
	if (!strcmp(w[0], "remove")) {
		if (n != 2) {
			pr_notice_ratelimited("remove: usage: remove <dev>\n");
			return -EINVAL;
		}
		return cblb_cmd_remove(w[1]);
	}
usage:
	pr_notice_ratelimited("unknown command; use create, start, startset, remove, track or untrack\n");
	return -EINVAL;
}

static ssize_t cmd_store(struct kobject *kobj, struct kobj_attribute *attr, const char *buf,
			 size_t count)
{
	char *line, **words;
	int err;

	/* The file's mode is not enough: a root without CAP_SYS_ADMIN may not snapshot. */
	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	if (count >= CMD_MAX) {
		pr_notice_ratelimited("command longer than %lu bytes\n", (unsigned long)CMD_MAX - 1);
		return -E2BIG;
	}
	line = kmemdup_nul(buf, count, GFP_KERNEL);
	if (!line)
		return -ENOMEM;
	words = kmalloc_array(CMD_WORDS, sizeof(*words), GFP_KERNEL);
	if (!words) {
		err = -ENOMEM;
		goto out_line;
	}
	err = run_cmd(line, words);
	kfree(words);
out_line:
	kfree(line);
	return err ? err : count;
}

static ssize_t debug_show(struct kobject *kobj, struct kobj_attribute *attr, char *buf)
{
	return cblb_debug_show(buf);
}

static ssize_t set_refused_show(struct kobject *kobj, struct kobj_attribute *attr, char *buf)
{
	return cblb_set_refused_show(buf);
}

static struct kobj_attribute cmd_attr = __ATTR_WO(cmd);
static struct kobj_attribute debug_attr = __ATTR_RO(debug);
static struct kobj_attribute set_refused_attr = __ATTR_RO(set_refused);

static struct attribute *cblb_root_attrs[] = {
	&cmd_attr.attr,
	&debug_attr.attr,
	&set_refused_attr.attr,
	NULL,
};

static const struct attribute_group cblb_root_group = {
	.attrs = cblb_root_attrs,
};

/* ---- per-snapshot folder ---- */

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
int cblb_sysfs_add(struct cblb_snapshot *s)
{
	int err = cblb_kobject_init_and_add(&s->kobj, &snap_ktype, cblb_kobj, "%s", s->name);

	if (err)
		kobject_put(&s->kobj);
	return err;
}

/* Remove the snapshot's folder; returns once no show() of it runs. */
void cblb_sysfs_hide(struct cblb_snapshot *s)
{
	kobject_del(&s->kobj);
}

/* Drop the registry's reference: the release frees s. After cblb_sysfs_hide(). */
void cblb_sysfs_del(struct cblb_snapshot *s)
{
	kobject_put(&s->kobj);
}

int cblb_sysfs_init(void)
{
	int err;

	cblb_kobj = kobject_create_and_add("cblb", kernel_kobj);
	if (!cblb_kobj)
		return -ENOMEM;
	err = sysfs_create_group(cblb_kobj, &cblb_root_group);
	if (err)
		goto fail_group;
	return 0;

fail_group:
	kobject_put(cblb_kobj);
	cblb_kobj = NULL;
	return err;
}

void cblb_sysfs_exit(void)
{
	sysfs_remove_group(cblb_kobj, &cblb_root_group);
	kobject_put(cblb_kobj);
}
