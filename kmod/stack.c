// SPDX-License-Identifier: GPL-2.0
/*
 * Does a block device depend on the origin? The stack walk behind `start`'s ELOOP refusal
 * (kmod/doc/LAYOUTS.md): a catalog whose writes would reach the origin through dm, md, a
 * loop device or overlayfs would make every copy need another copy, without end.
 *
 * From a device, the walk goes down: the devices its disk is built on
 * (/sys/class/block/<disk>/slaves/, filled by dm and md), and for a loop device the
 * filesystem that holds its backing file (/sys/class/block/<disk>/loop/backing_file),
 * whose device is walked in turn. It stops at the origin (or any device overlapping it),
 * or at a device built on nothing. Anything it cannot resolve (no /sys in the caller's
 * namespace, a loop device whose backing file has no path, more than CBLB_STACK_DEPTH
 * levels, CBLB_STACK_SLAVES slaves or CBLB_STACK_DEVICES devices) makes the answer
 * "unknown", which `start` refuses like a hit: never a guess that lets writes loop.
 *
 * Lock story: none. Runs in the `start` writer's process context, under
 * cblb_cmd_lock, before the freeze; it opens devices read-only and reads sysfs files.
 */
#define pr_fmt(fmt) "cblb: " fmt

#include <linux/blkdev.h>
#include <linux/dcache.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/kdev_t.h>
#include <linux/namei.h>
#include <linux/slab.h>
#include <uapi/linux/magic.h>
#include "cblb.h"
#include "stack.h"

#define CBLB_STACK_DEPTH	8
#define CBLB_STACK_DEVICES	64
#define CBLB_STACK_SLAVES	16

struct stack_walk {
	struct cblb_snapshot *snap;
	unsigned int visited;
	char culprit[BDEVNAME_SIZE];	/* the first device on the way down */
};

struct slave_names {
	struct dir_context ctx;
	bool overflow;
	unsigned int n;
	char name[CBLB_STACK_SLAVES][BDEVNAME_SIZE];
};

static cblb_filldir_ret collect_slave(struct dir_context *ctx, const char *name, int len,
				      loff_t off, u64 ino, unsigned int type)
{
	struct slave_names *sn = container_of(ctx, struct slave_names, ctx);

	if (name[0] == '.')
		return CBLB_FILLDIR_GO_ON;
	if (sn->n == CBLB_STACK_SLAVES || len >= BDEVNAME_SIZE) {
		sn->overflow = true;
		return CBLB_FILLDIR_STOP;
	}
	memcpy(sn->name[sn->n], name, len);
	sn->name[sn->n][len] = '\0';
	sn->n++;
	return CBLB_FILLDIR_GO_ON;
}

/* Read a small sysfs text file into buf (NUL-terminated, trailing newline cut). */
static int read_text(const char *path, char *buf, size_t size)
{
	struct file *f = filp_open(path, O_RDONLY, 0);
	loff_t pos = 0;
	ssize_t n;

	if (IS_ERR(f))
		return PTR_ERR(f);
	n = kernel_read(f, buf, size - 1, &pos);
	fput(f);
	if (n < 0)
		return n;
	buf[n] = '\0';
	if (n && buf[n - 1] == '\n')
		buf[n - 1] = '\0';
	return 0;
}

/* Results of a walk: the origin was reached, it was not, or the walk could not tell. */
#define WALK_NO		0
#define WALK_HIT	1
#define WALK_UNKNOWN	(-1)

static int walk_dev(struct stack_walk *w, dev_t dev, unsigned int depth);
static int walk_sb(struct stack_walk *w, struct super_block *sb, unsigned int depth);

/* The filesystem holding path: the device it lives on, overlayfs' upper layer included. */
static int walk_path(struct stack_walk *w, const char *name, unsigned int depth)
{
	struct path path;
	struct inode *real;
	int res = WALK_NO;

	if (kern_path(name, LOOKUP_FOLLOW, &path))
		return WALK_UNKNOWN;
	real = d_real_inode(path.dentry);
	res = walk_sb(w, real ? real->i_sb : path.dentry->d_sb, depth);
	path_put(&path);
	return res;
}

/* Walk every device named in the sysfs folder dirpath (dm/md slaves, btrfs devices). */
static int walk_named(struct stack_walk *w, char *p, unsigned int depth)
{
	struct slave_names *sn;
	struct file *dir;
	unsigned int i;
	int res = WALK_UNKNOWN;

	sn = kzalloc(sizeof(*sn), GFP_KERNEL);
	if (!p || !sn)
		goto out;
	dir = filp_open(p, O_RDONLY | O_DIRECTORY, 0);
	if (IS_ERR(dir))
		goto out;	/* every disk has the folder: no /sys here */
	sn->ctx.actor = collect_slave;
	iterate_dir(dir, &sn->ctx);
	fput(dir);
	if (sn->overflow)
		goto out;
	res = WALK_NO;
	for (i = 0; i < sn->n && res == WALK_NO; i++) {
		char devno[24];
		unsigned int maj, min;

		kfree(p);
		p = kasprintf(GFP_KERNEL, "/sys/class/block/%s/dev", sn->name[i]);
		if (!p || read_text(p, devno, sizeof(devno)) ||
		    sscanf(devno, "%u:%u", &maj, &min) != 2) {
			res = WALK_UNKNOWN;
			break;
		}
		res = walk_dev(w, MKDEV(maj, min), depth + 1);
	}
out:
	kfree(sn);
	kfree(p);
	return res;
}

static int walk_slaves(struct stack_walk *w, const char *disk, unsigned int depth)
{
	return walk_named(w, kasprintf(GFP_KERNEL, "/sys/class/block/%s/slaves", disk), depth);
}

/* Filesystems with no block device under them that cblb accepts as catalogs. */
static bool sb_has_no_device(struct super_block *sb)
{
	static const char * const types[] = {
		"tmpfs", "ramfs", "nfs", "nfs4", "cifs", "smb3", "9p", "virtiofs", "ceph",
	};
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(types); i++)
		if (!strcmp(sb->s_type->name, types[i]))
			return true;
	return false;
}

/*
 * The devices a filesystem writes to: its s_bdev; for btrfs, which leaves s_bdev empty,
 * every device of /sys/fs/btrfs/<fsid>/devices/; none for tmpfs, NFS and the like. Any
 * other filesystem without a device (FUSE, which may sit on any device) cannot be told.
 */
static int walk_sb(struct stack_walk *w, struct super_block *sb, unsigned int depth)
{
	if (sb->s_bdev)
		return walk_dev(w, sb->s_bdev->bd_dev, depth + 1);
	if (sb->s_magic == BTRFS_SUPER_MAGIC) {
		if (!w->culprit[0])
			snprintf(w->culprit, sizeof(w->culprit), "btrfs");
		return walk_named(w, kasprintf(GFP_KERNEL, "/sys/fs/btrfs/%pU/devices",
					       &sb->s_uuid), depth);
	}
	return sb_has_no_device(sb) ? WALK_NO : WALK_UNKNOWN;
}

static int walk_loop(struct stack_walk *w, const char *disk, unsigned int depth)
{
	char *p = kasprintf(GFP_KERNEL, "/sys/class/block/%s/loop/backing_file", disk);
	char *backing = kmalloc(PATH_MAX, GFP_KERNEL);
	int res = WALK_UNKNOWN, err;

	if (!p || !backing)
		goto out;
	err = read_text(p, backing, PATH_MAX);
	if (err == -ENOENT) {
		res = WALK_NO;		/* not a loop device */
		goto out;
	}
	if (!err && backing[0] == '/')
		res = walk_path(w, backing, depth);
out:
	kfree(backing);
	kfree(p);
	return res;
}

/* Does bdev share sectors with the origin of s (the origin itself, its disk, a neighbour
 * partition that overlaps it)? */
bool cblb_bdev_overlaps_origin(struct cblb_snapshot *s, struct block_device *bdev)
{
	sector_t start = cblb_bdev_start(bdev), end = start + bdev_nr_sectors(bdev);

	return bdev->bd_disk == s->origin_disk && start < s->origin_start + s->origin_sectors &&
	       end > s->origin_start;
}

static int walk_dev(struct stack_walk *w, dev_t dev, unsigned int depth)
{
	struct cblb_bdev h = {};
	char disk[BDEVNAME_SIZE];
	int res;

	if (depth > CBLB_STACK_DEPTH || ++w->visited > CBLB_STACK_DEVICES)
		return WALK_UNKNOWN;
	if (cblb_bdev_open(dev, &h))
		return WALK_UNKNOWN;
	if (!w->culprit[0])
		snprintf(w->culprit, sizeof(w->culprit), "%pg", h.bdev);
	res = cblb_bdev_overlaps_origin(w->snap, h.bdev) ? WALK_HIT : WALK_NO;
	strscpy(disk, h.bdev->bd_disk->disk_name, sizeof(disk));
	cblb_bdev_close(&h);
	if (res == WALK_NO)
		res = walk_slaves(w, disk, depth);
	if (res == WALK_NO)
		res = walk_loop(w, disk, depth);
	return res;
}

/**
 * cblb_stack_reaches_origin - would writes to @bdev reach the origin of @s?
 * @s:        the snapshot whose origin is looked for
 * @bdev:     the device a catalog's filesystem lives on
 * @top:      filled with the name of @bdev
 * @top_size: size of @top
 *
 * 1 when @bdev is the origin or overlaps it, or is built (dm, md, loop, in any mix) on a
 * device that does; 0 when it is not; -1 when the walk cannot tell (see the top).
 * Context: process, may sleep.
 */
int cblb_stack_reaches_origin(struct cblb_snapshot *s, struct block_device *bdev,
			      char *top, size_t top_size)
{
	struct stack_walk w = { .snap = s };
	int res = walk_dev(&w, bdev->bd_dev, 0);

	strscpy(top, w.culprit[0] ? w.culprit : "?", top_size);
	return res;
}

/**
 * cblb_sb_reaches_origin - would writes of the filesystem @sb reach the origin of @s?
 * As cblb_stack_reaches_origin(), from every device the filesystem writes to (walk_sb):
 * btrfs's whole device list; -1 for a filesystem whose devices cannot be named.
 * Context: process, may sleep.
 */
int cblb_sb_reaches_origin(struct cblb_snapshot *s, struct super_block *sb, char *top,
			   size_t top_size)
{
	struct stack_walk w = { .snap = s };
	int res = walk_sb(&w, sb, 0);

	strscpy(top, w.culprit[0] ? w.culprit : sb->s_type->name, top_size);
	return res;
}
