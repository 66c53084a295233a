/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Every difference between the kernels cblb supports lives here, decided by
 * LINUX_VERSION_CODE, so the rest of the module reads as one API. Built and checked:
 * Debian's 5.10 LTS (bullseye), 6.1 LTS (bookworm), 6.12 LTS (bookworm-backports) and
 * the newest in sid (7.2). Each helper names the release its API changed in.
 *
 * 5.10                               6.1 / 6.12 / 7.x
 * bio->bi_disk, bi_partno            bio->bi_bdev, BIO_REMAPPED (5.12)
 * bd_part->start_sect                bdev->bd_start_sect (5.11)
 * ftrace_func_t gets pt_regs         struct ftrace_regs, ftrace_get_regs() (5.11)
 * freeze_bdev returns the sb         freeze_bdev/thaw_bdev(bdev) (5.11), bdev_freeze (6.8)
 * lookup_bdev returns a bdev         lookup_bdev(path, &dev) (5.11)
 * vfs_unlink(dir, ...)               vfs_unlink(user_ns, ...) (5.12), (mnt_idmap, ...) (6.3)
 * file_open_root(dentry, mnt, ...)   file_open_root(path, ...) (5.12)
 * hd_struct part0                    disk->part0 is a block_device (5.11)
 * submit_bio returns blk_qc_t        returns void (5.16)
 * blk_alloc_queue + alloc_disk       blk_alloc_disk(node) (5.14), (&lim, node) (6.9)
 * add_disk returns void              add_disk returns int (5.15)
 * bio_alloc_bioset(gfp, n, bs)       bio_alloc_bioset(bdev, n, opf, gfp, bs) (5.18)
 * bio_clone_fast                     bio_alloc_clone (5.18)
 * filldir_t returns int (0: go on)   returns bool (true: go on) (6.1)
 * FS_IOC_FSGETXATTR only             vfs_fileattr_get (5.13), struct file_kattr (6.17)
 * lookup_one_len                     lookup_noperm(qstr) (6.16)
 * bin_attribute callbacks, lists     const bin_attribute (6.15), const lists (6.17)
 * kobject_init(kobj, ktype)          const kobj_type (6.1 stable, 6.2)
 * no media sequence number           disk->diskseq (5.15)
 * blkdev_get_by_dev/blkdev_put       bdev_file_open_by_dev/fput (6.9)
 * bdev_get_integrity in blkdev.h     in blk-integrity.h (5.16)
 * a workqueue is per-CPU by default  WQ_PERCPU says so (6.17; 7.x warns without it)
 * system_unbound_wq                  system_dfl_wq (6.17; 7.x logs the old one deprecated)
 * The kernels between 5.10 and 6.1 are not built here and are refused.
 */
#ifndef CBLB_COMPAT_H
#define CBLB_COMPAT_H

#include <linux/version.h>
#include <linux/blkdev.h>
#include <linux/blk-mq.h>
#include <linux/part_stat.h>
#include <linux/bio.h>
#include <linux/highmem.h>
#include <linux/fs.h>
#include <linux/err.h>
#include <linux/mount.h>
#include <linux/namei.h>
#include <linux/kobject.h>
#include <linux/sysfs.h>
#include <linux/ftrace.h>
#include <linux/overflow.h>
#include <linux/slab.h>
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 16, 0)
#include <linux/blk-integrity.h>
#endif
#include <linux/workqueue.h>

/*
 * Workqueues from 6.17 on: a per-CPU (bound) one says so (WQ_PERCPU; 7.x warns at
 * alloc_workqueue() when neither WQ_PERCPU nor WQ_UNBOUND is given; before, bound was the
 * default, and 6.12 stable's no-op WQ_PERCPU is left alone), and the shared unbound one is
 * system_dfl_wq (7.x logs system_unbound_wq as deprecated whenever work is queued on it).
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 17, 0)
#define CBLB_WQ_PERCPU	WQ_PERCPU
#define cblb_unbound_wq	system_dfl_wq
#else
#define CBLB_WQ_PERCPU	0
#define cblb_unbound_wq	system_unbound_wq
#endif

#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 10, 0) || \
	(LINUX_VERSION_CODE >= KERNEL_VERSION(5, 11, 0) && \
	 LINUX_VERSION_CODE < KERNEL_VERSION(6, 1, 0))
#error "cblb needs Linux 5.10 LTS, or 6.1 or newer"
#endif

#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 13, 0)
#include <linux/fileattr.h>
#else
#include <linux/mman.h>
#include <linux/uaccess.h>
#endif

/* ---- bios ------------------------------------------------------------------------- */

/* BIO_MAX_PAGES became BIO_MAX_VECS (an enum constant) in 5.12. */
#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 12, 0)
#define BIO_MAX_VECS BIO_MAX_PAGES
#endif

/* The disk a bio is aimed at: bio->bi_disk until 5.12, bio->bi_bdev->bd_disk since. */
static inline struct gendisk *cblb_bio_disk(struct bio *bio)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 12, 0)
	return bio->bi_bdev->bd_disk;
#else
	return bio->bi_disk;
#endif
}

/*
 * The bio's first sector counted from the start of its disk, whether or not its partition
 * was remapped yet. Since 5.12 a bio names its partition's block_device and BIO_REMAPPED
 * says the remap is done; before, bi_partno names the partition until the remap zeroes it.
 * Any context.
 */
static inline sector_t cblb_bio_disk_sector(struct bio *bio)
{
	sector_t sector = bio->bi_iter.bi_sector;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 12, 0)
	if (!bio_flagged(bio, BIO_REMAPPED))
		sector += bio->bi_bdev->bd_start_sect;
#else
	if (bio->bi_partno) {
		struct disk_part_tbl *ptbl;
		struct hd_struct *part;

		/* disk_get_part() is not exported: its RCU walk of the partition table */
		rcu_read_lock();
		ptbl = rcu_dereference(bio->bi_disk->part_tbl);
		part = bio->bi_partno < ptbl->len ? rcu_dereference(ptbl->part[bio->bi_partno]) :
						    NULL;
		if (part)
			sector += part->start_sect;
		rcu_read_unlock();
	}
#endif
	return sector;
}

/* The first sector of a partition on its disk: bdev->bd_start_sect since 5.11. */
static inline sector_t cblb_bdev_start(struct block_device *bdev)
{
	return get_start_sect(bdev);
}

#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 15, 0)
/* bdev_nr_sectors() came in 5.15. */
static inline sector_t bdev_nr_sectors(struct block_device *bdev)
{
	return i_size_read(bdev->bd_inode) >> SECTOR_SHIFT;
}
#endif

#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 12, 0)
/* krealloc_array() came in 5.12. */
static inline void *krealloc_array(void *p, size_t n, size_t size, gfp_t flags)
{
	size_t bytes;

	if (unlikely(check_mul_overflow(n, size, &bytes)))
		return NULL;
	return krealloc(p, bytes, flags);
}
#endif

/* A bio of nr_vecs pages from bs, aimed at bdev: bio_alloc_bioset() takes them all since
 * 5.18; before, the device and the operation were set afterwards. */
static inline struct bio *cblb_bio_alloc(struct block_device *bdev, unsigned short nr_vecs,
					 unsigned int opf, gfp_t gfp, struct bio_set *bs)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 18, 0)
	return bio_alloc_bioset(bdev, nr_vecs, opf, gfp, bs);
#else
	struct bio *bio = bio_alloc_bioset(gfp, nr_vecs, bs);

	if (bio) {
		bio_set_dev(bio, bdev);
		bio->bi_opf = opf;
	}
	return bio;
#endif
}

#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 18, 0)
/* bio_alloc_clone() came in 5.18; before, bio_clone_fast() and then the device. */
static inline struct bio *bio_alloc_clone(struct block_device *bdev, struct bio *src,
					  gfp_t gfp, struct bio_set *bs)
{
	struct bio *bio = bio_clone_fast(src, gfp, bs);

	if (bio)
		bio_set_dev(bio, bdev);
	return bio;
}
#endif

#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 14, 0)
#ifdef CONFIG_HIGHMEM
#error "cblb on 5.10 is built for 64-bit kernels without highmem"
#endif
/* bvec_kmap_local() came in 5.14: without highmem every page is mapped. */
static inline void *bvec_kmap_local(struct bio_vec *bvec)
{
	return page_address(bvec->bv_page) + bvec->bv_offset;
}

#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 11, 0)
/* kunmap_local() came in 5.11. */
#define kunmap_local(addr) do { (void)(addr); } while (0)
#endif

/* memcpy_to_bvec() came in 5.14. */
static inline void memcpy_to_bvec(struct bio_vec *bvec, const char *from)
{
	char *to = kmap_atomic(bvec->bv_page);

	memcpy(to + bvec->bv_offset, from, bvec->bv_len);
	kunmap_atomic(to);
}
#endif

/* ---- the ftrace hook ----------------------------------------------------------------- */

/*
 * An ftrace_func_t receives struct ftrace_regs (ftrace_get_regs() gives the pt_regs saved
 * with FTRACE_OPS_FL_SAVE_REGS) since 5.11; before, the pt_regs themselves. A handler
 * takes "struct cblb_ftrace_regs *" and calls ftrace_get_regs() on every kernel.
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 11, 0)
#define cblb_ftrace_regs ftrace_regs
#else
#define cblb_ftrace_regs pt_regs
static inline struct pt_regs *ftrace_get_regs(struct pt_regs *regs)
{
	return regs;
}
#endif

/*
 * Drop the hook's filter after unregistering it. ftrace_free_filter() is exported since
 * 6.2 and in 6.1's stable updates (Debian's 6.1 has it); 5.10 resets the filter instead,
 * which frees it the same way.
 */
static inline void cblb_ftrace_free_filter(struct ftrace_ops *ops)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 1, 0)
	ftrace_free_filter(ops);
#else
	ftrace_set_filter(ops, NULL, 0, 1);
#endif
}

/* ---- block devices and disks ------------------------------------------------------------- */

/* An open block device, whatever the kernel calls the handle. */
struct cblb_bdev {
	struct block_device *bdev;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 9, 0)
	struct file *file;
#endif
};

/* bdev_file_open_by_dev() (a struct file per open) replaced blkdev_get_by_dev() in 6.9. */
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

/* bio_split(): NULL on failure before 6.14, an ERR_PTR since; here NULL on both. */
static inline struct bio *cblb_bio_split(struct bio *bio, sector_t sectors, gfp_t gfp,
					 struct bio_set *bs)
{
	struct bio *split = bio_split(bio, sectors, gfp, bs);

	return IS_ERR(split) ? NULL : split;
}

/* The device number of the block device at path: lookup_bdev(path, &dev) since 5.11. */
static inline int cblb_lookup_bdev(const char *path, dev_t *dev)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 11, 0)
	return lookup_bdev(path, dev);
#else
	struct block_device *bdev = lookup_bdev(path);

	if (IS_ERR(bdev))
		return PTR_ERR(bdev);
	*dev = bdev->bd_dev;
	bdput(bdev);
	return 0;
#endif
}

/* The disk's media sequence number (5.15+; 0 before): a new loop file, a new medium. */
static inline u64 cblb_diskseq(struct gendisk *disk)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 15, 0)
	return disk->diskseq;
#else
	return 0;
#endif
}

/*
 * Freeze the filesystem on bdev. bdev_freeze() since 6.8; freeze_bdev() returned the
 * super_block until 5.11 and thaw_bdev() wanted it back. The 5.10 thaw finds it again the
 * way freeze_bdev() itself does for a nested freeze: the frozen sb holds an active
 * reference until its last thaw.
 * *fs is set when a filesystem on bdev itself is frozen now (doc/EDGES.md, "What freeze
 * says"): from 6.8 the device's holder is a filesystem that can be frozen through it;
 * 5.11 to 6.7 remember the frozen sb in bd_fsfreeze_sb; 5.10 returns it. Otherwise the
 * freeze only synced the device (nothing mounted on it, or its holder is dm, md or a
 * filesystem that the device does not lead to, such as btrfs before 6.8).
 */
static inline int cblb_freeze(struct block_device *bdev, bool *fs)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 8, 0)
	int err = bdev_freeze(bdev);

	mutex_lock(&bdev->bd_holder_lock);
	*fs = !err && bdev->bd_holder_ops && bdev->bd_holder_ops->freeze;
	mutex_unlock(&bdev->bd_holder_lock);
	return err;
#elif LINUX_VERSION_CODE >= KERNEL_VERSION(5, 11, 0)
	int err = freeze_bdev(bdev);

	*fs = !err && READ_ONCE(bdev->bd_fsfreeze_sb);
	return err;
#else
	struct super_block *sb = freeze_bdev(bdev);

	*fs = !IS_ERR_OR_NULL(sb);
	return PTR_ERR_OR_ZERO(sb);
#endif
}

/* Does anything hold bdev exclusively (a mounted filesystem, dm, md)? */
static inline bool cblb_bdev_held(struct block_device *bdev)
{
	return READ_ONCE(bdev->bd_holder) != NULL;
}

static inline void cblb_thaw(struct block_device *bdev)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 8, 0)
	bdev_thaw(bdev);
#elif LINUX_VERSION_CODE >= KERNEL_VERSION(5, 11, 0)
	thaw_bdev(bdev);
#else
	struct super_block *sb = get_super(bdev);

	if (sb)
		drop_super(sb);
	thaw_bdev(bdev, sb);
#endif
}

/*
 * A bio-based read-only disk that looks like the origin to the layers above it: the same
 * logical block size, largest request and optimal I/O size (read-ahead follows them).
 * blk_alloc_disk(node) came in 5.14 (before: blk_alloc_queue and alloc_disk), the limits
 * moved into blk_alloc_disk(&lim, node) in 6.9.
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
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 14, 0)
	struct gendisk *disk = blk_alloc_disk(NUMA_NO_NODE);

	if (!disk)
		return ERR_PTR(-ENOMEM);
#else
	struct request_queue *q = blk_alloc_queue(NUMA_NO_NODE);
	struct gendisk *disk;

	if (!q)
		return ERR_PTR(-ENOMEM);
	disk = alloc_disk(1);
	if (!disk) {
		blk_cleanup_queue(q);
		return ERR_PTR(-ENOMEM);
	}
	disk->queue = q;
#endif
	blk_queue_logical_block_size(disk->queue, lbs);
	blk_queue_physical_block_size(disk->queue, max_t(unsigned int, lbs, 4096));
	blk_queue_io_min(disk->queue, 4096);
	blk_queue_max_hw_sectors(disk->queue, max_hw);
	blk_queue_io_opt(disk->queue, io_opt);
	return disk;
#endif
}

/* add_disk() returns an error since 5.15; before it could not fail. */
static inline int cblb_add_disk(struct gendisk *disk)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 15, 0)
	return add_disk(disk);
#else
	add_disk(disk);
	return 0;
#endif
}

/*
 * Drop a disk from cblb_alloc_disk() (after del_gendisk() if it was added). Since 6.0
 * put_disk() frees the queue too; before, the queue was cleaned up first (5.14-5.19:
 * blk_cleanup_disk()).
 */
static inline void cblb_put_disk(struct gendisk *disk)
{
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 0, 0)
	blk_cleanup_queue(disk->queue);
#endif
	put_disk(disk);
}

/* GENHD_FL_NO_PART_SCAN became GENHD_FL_NO_PART (an enum constant) in 5.17. */
#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 17, 0)
#define GENHD_FL_NO_PART GENHD_FL_NO_PART_SCAN
#endif

/*
 * block_device_operations.submit_bio returns void since 5.16 (blk_qc_t before).
 * CBLB_SUBMIT_BIO(fn) defines fn_entry, the function to put in .submit_bio, around
 * "static void fn(struct bio *bio)".
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 16, 0)
#define CBLB_SUBMIT_BIO(fn) \
	static void fn##_entry(struct bio *bio) { fn(bio); }
#else
#define CBLB_SUBMIT_BIO(fn) \
	static blk_qc_t fn##_entry(struct bio *bio) { fn(bio); return BLK_QC_T_NONE; }
#endif

/* Is the disk open? disk->part0 is a block_device since 5.11 (an hd_struct before). */
static inline bool cblb_disk_open(struct gendisk *disk)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 11, 0)
	return atomic_read(&disk->part0->bd_openers) > 0;
#else
	struct block_device *b = bdget_disk(disk, 0);
	bool open = b && READ_ONCE(b->bd_openers) > 0;

	if (b)
		bdput(b);
	return open;
#endif
}

/* Held exclusively (a mount, dm, md): not a passing probe. A racy peek, used as a hint. */
static inline bool cblb_disk_claimed(struct gendisk *disk)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 11, 0)
	return READ_ONCE(disk->part0->bd_holder) != NULL;
#else
	struct block_device *b = bdget_disk(disk, 0);
	bool claimed = b && READ_ONCE(b->bd_holder) != NULL;

	if (b)
		bdput(b);
	return claimed;
#endif
}

/* ---- files ------------------------------------------------------------------------------- */

/* Open name relative to path: file_open_root() takes the path itself since 5.12. */
static inline struct file *cblb_file_open_root(const struct path *path, const char *name,
					       int flags, umode_t mode)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 12, 0)
	return file_open_root(path, name, flags, mode);
#else
	return file_open_root(path->dentry, path->mnt, name, flags, mode);
#endif
}

/*
 * Look name up in dir, whose inode the caller holds locked. lookup_one_len() became
 * lookup_noperm() (a qstr, and no exec permission check on dir) in 6.16; the check is
 * kept through lookup_one() with the mount's idmapping, as lookup_one_len() did.
 */
static inline struct dentry *cblb_lookup_one(struct vfsmount *mnt, struct dentry *dir,
					     const char *name)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 16, 0)
	struct qstr q = QSTR_INIT(name, strlen(name));

	return lookup_one(mnt_idmap(mnt), &q, dir);
#else
	return lookup_one_len(name, dir, strlen(name));
#endif
}

/* Unlink dentry from dir, seen through mount mnt (idmapped or not): vfs_unlink() takes the
 * user namespace since 5.12, the mount's idmapping since 6.3. */
static inline int cblb_vfs_unlink(struct vfsmount *mnt, struct inode *dir, struct dentry *dentry)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
	return vfs_unlink(mnt_idmap(mnt), dir, dentry, NULL);
#elif LINUX_VERSION_CODE >= KERNEL_VERSION(5, 12, 0)
	return vfs_unlink(mnt_user_ns(mnt), dir, dentry, NULL);
#else
	return vfs_unlink(dir, dentry, NULL);
#endif
}

/*
 * Is file an XFS realtime file (its data on another device than the one FIEMAP is read
 * for)? vfs_fileattr_get() came in 5.13 and struct fileattr became struct file_kattr in
 * 6.17; 5.10 asks FS_IOC_FSGETXATTR through a scratch page of the current user mm (the
 * DIRECT store has one, see store.c) and, lacking an mm, answers yes (not usable).
 */
static inline bool cblb_file_realtime(struct file *file)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 17, 0)
	struct file_kattr fa = {};

	return !vfs_fileattr_get(file->f_path.dentry, &fa) && (fa.fsx_xflags & FS_XFLAG_REALTIME);
#elif LINUX_VERSION_CODE >= KERNEL_VERSION(5, 13, 0)
	struct fileattr fa = {};

	return !vfs_fileattr_get(file->f_path.dentry, &fa) && (fa.fsx_xflags & FS_XFLAG_REALTIME);
#else
	struct fsxattr fa = {};
	unsigned long ubuf;
	long err = -ENOTTY;

	if (!current->mm)
		return true;
	if (!file->f_op->unlocked_ioctl)
		return false;
	ubuf = vm_mmap(NULL, 0, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, 0);
	if (IS_ERR_VALUE(ubuf))
		return true;
	err = file->f_op->unlocked_ioctl(file, FS_IOC_FSGETXATTR, ubuf);
	if (!err && copy_from_user(&fa, (void __user *)ubuf, sizeof(fa)))
		err = -EFAULT;
	vm_munmap(ubuf, PAGE_SIZE);
	if (err == -ENOTTY || err == -ENOIOCTLCMD || err == -EINVAL)
		return false;	/* no such attributes: not XFS */
	return err || (fa.fsx_xflags & FS_XFLAG_REALTIME);
#endif
}

/*
 * A filldir_t actor (iterate_dir) returns bool since 6.1, true to go on; before, an int,
 * 0 to go on. Declare it "static cblb_filldir_ret actor(...)" and return these.
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 1, 0)
typedef bool cblb_filldir_ret;
#define CBLB_FILLDIR_GO_ON	true
#define CBLB_FILLDIR_STOP	false
#else
typedef int cblb_filldir_ret;
#define CBLB_FILLDIR_GO_ON	0
#define CBLB_FILLDIR_STOP	1
#endif

/* ---- sysfs --------------------------------------------------------------------------- */

/*
 * kobject_init() and kobject_init_and_add() take a const kobj_type since 6.1 (6.2 in
 * mainline, in 6.1's stable updates); 5.10 takes a mutable one, which it never writes.
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 1, 0)
#define cblb_kobject_init(kobj, ktype) kobject_init(kobj, ktype)
#define cblb_kobject_init_and_add(kobj, ktype, parent, fmt, ...) \
	kobject_init_and_add(kobj, ktype, parent, fmt, ##__VA_ARGS__)
#else
#define cblb_kobject_init(kobj, ktype) kobject_init(kobj, (struct kobj_type *)(ktype))
#define cblb_kobject_init_and_add(kobj, ktype, parent, fmt, ...) \
	kobject_init_and_add(kobj, (struct kobj_type *)(ktype), parent, fmt, ##__VA_ARGS__)
#endif

/*
 * Binary sysfs attributes. Their read()/write() get a const bin_attribute since 6.15:
 * declare the argument "cblb_bin_attr_arg *attr". attribute_group::bin_attrs lists const
 * bin_attributes since 6.17 (6.13-6.16 had bin_attrs_new for those): declare the list
 * "static cblb_bin_attr_entry *list[]".
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 15, 0)
typedef const struct bin_attribute cblb_bin_attr_arg;
#else
typedef struct bin_attribute cblb_bin_attr_arg;
#endif
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 17, 0)
typedef const struct bin_attribute cblb_bin_attr_entry;
#else
typedef struct bin_attribute cblb_bin_attr_entry;
#endif

/*
 * Freeze a queue: wait for what holds its usage counter, new bios wait in bio_queue_enter()
 * until the unfreeze. blk_mq_freeze_queue() returns memflags for the unfreeze since 6.15.
 */
static inline unsigned int cblb_freeze_queue(struct request_queue *q)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 15, 0)
	return blk_mq_freeze_queue(q);
#else
	blk_mq_freeze_queue(q);
	return 0;
#endif
}

static inline void cblb_unfreeze_queue(struct request_queue *q, unsigned int memflags)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 15, 0)
	blk_mq_unfreeze_queue(q, memflags);
#else
	blk_mq_unfreeze_queue(q);
#endif
}

/*
 * dm's internal suspend (dm-mod exports it for dm-thin and dm-cache; declared in
 * drivers/md/dm.h, not in a public header, the same from 5.10 to 7.2).
 */
struct mapped_device;
void dm_internal_suspend_fast(struct mapped_device *md);
void dm_internal_resume_fast(struct mapped_device *md);

/*
 * Writes a bio-based disk (dm, md, ...) counts as in flight: bio_start_io_acct() to
 * bio_end_io_acct(), per CPU in the whole disk's statistics (part0: a struct hd_struct in
 * 5.10, a block_device from 5.11). Zero when the driver or the queue's iostats does not
 * account.
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 11, 0)
#define CBLB_PART0(disk)	((disk)->part0)
#else
#define CBLB_PART0(disk)	(&(disk)->part0)
#endif
static inline long cblb_disk_writes_in_flight(struct gendisk *disk)
{
	long n = 0;
	int cpu;

	for_each_possible_cpu(cpu)
		n += part_stat_local_read_cpu(CBLB_PART0(disk), in_flight[WRITE], cpu);
	return n;
}

#endif /* CBLB_COMPAT_H */
