/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Every difference between the kernels cblb supports (6.1 LTS and 6.12 LTS) lives here,
 * decided by LINUX_VERSION_CODE, so the rest of the module reads as one API.
 *
 * 6.1                              6.12
 * blkdev_get_by_dev/blkdev_put     bdev_file_open_by_dev/fput (a struct file per open)
 * freeze_bdev/thaw_bdev            bdev_freeze/bdev_thaw
 * blk_alloc_disk(node)             blk_alloc_disk(&queue_limits, node) returning ERR_PTR
 * blk_queue_*_block_size()         limits passed at allocation
 * vfs_unlink(user_namespace, ...)  vfs_unlink(mnt_idmap, ...) (6.3)
 */
#ifndef CBLB_COMPAT_H
#define CBLB_COMPAT_H

#include <linux/version.h>
#include <linux/blkdev.h>
#include <linux/fs.h>
#include <linux/err.h>
#include <linux/mount.h>

#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 1, 0)
#error "cblb needs Linux 6.1 or newer"
#endif

/* An open block device, whatever the kernel calls the handle. */
struct cblb_bdev {
	struct block_device *bdev;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 9, 0)
	struct file *file;
#endif
};

static inline int cblb_bdev_open(dev_t dev, struct cblb_bdev *h)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 9, 0)
	struct file *f = bdev_file_open_by_dev(dev, BLK_OPEN_READ, NULL, NULL);

	if (IS_ERR(f))
		return PTR_ERR(f);
	h->file = f;
	h->bdev = file_bdev(f);
#else
	struct block_device *b = blkdev_get_by_dev(dev, FMODE_READ, NULL);

	if (IS_ERR(b))
		return PTR_ERR(b);
	h->bdev = b;
#endif
	return 0;
}

static inline void cblb_bdev_close(struct cblb_bdev *h)
{
	if (!h->bdev)
		return;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 9, 0)
	fput(h->file);
	h->file = NULL;
#else
	blkdev_put(h->bdev, FMODE_READ);
#endif
	h->bdev = NULL;
}

static inline int cblb_freeze(struct block_device *bdev)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 8, 0)
	return bdev_freeze(bdev);
#else
	return freeze_bdev(bdev);
#endif
}

static inline void cblb_thaw(struct block_device *bdev)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 8, 0)
	bdev_thaw(bdev);
#else
	thaw_bdev(bdev);
#endif
}

/*
 * A bio-based read-only disk that looks like the origin to the layers above it: the same
 * logical block size, largest request and optimal I/O size (read-ahead follows them).
 */
static inline struct gendisk *cblb_alloc_disk(struct block_device *origin)
{
	unsigned int lbs = bdev_logical_block_size(origin);
	unsigned int max_hw = queue_max_hw_sectors(bdev_get_queue(origin));
	unsigned int io_opt = bdev_io_opt(origin);
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 9, 0)
	struct queue_limits lim = {
		.logical_block_size = lbs,
		.physical_block_size = max_t(unsigned int, lbs, 4096),
		.io_min = 4096,
		.max_hw_sectors = max_hw,
		.io_opt = io_opt,
	};

	return blk_alloc_disk(&lim, NUMA_NO_NODE);
#else
	struct gendisk *disk = blk_alloc_disk(NUMA_NO_NODE);

	if (!disk)
		return ERR_PTR(-ENOMEM);
	blk_queue_logical_block_size(disk->queue, lbs);
	blk_queue_physical_block_size(disk->queue, max_t(unsigned int, lbs, 4096));
	blk_queue_io_min(disk->queue, 4096);
	blk_queue_max_hw_sectors(disk->queue, max_hw);
	blk_queue_io_opt(disk->queue, io_opt);
	return disk;
#endif
}

/* Unlink dentry from dir, seen through mount mnt (idmapped or not). */
static inline int cblb_vfs_unlink(struct vfsmount *mnt, struct inode *dir, struct dentry *dentry)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
	return vfs_unlink(mnt_idmap(mnt), dir, dentry, NULL);
#else
	return vfs_unlink(mnt_user_ns(mnt), dir, dentry, NULL);
#endif
}

static inline bool cblb_disk_open(struct gendisk *disk)
{
	return atomic_read(&disk->part0->bd_openers) > 0;
}

/* Held exclusively (a mount, dm, md): not a passing probe. A racy peek, used as a hint. */
static inline bool cblb_disk_claimed(struct gendisk *disk)
{
	return READ_ONCE(disk->part0->bd_holder) != NULL;
}

#endif /* CBLB_COMPAT_H */
