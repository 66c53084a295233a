// SPDX-License-Identifier: GPL-2.0
/*
 * The COW store: temp files in the catalog folder, each <file size> 512-byte blocks,
 * at most <max files>. Which layouts use which path: kmod/doc/LAYOUTS.md.
 *
 * The catalog folder is resolved once, by "start", and pinned (st->catalog): every temp
 * file is opened relative to it, never by name again.
 *
 * DIRECT (ext4, xfs): a temp file is an unnamed O_TMPFILE file, fully allocated with
 * fallocate(), whose extents are read once with FIEMAP. From then on the module writes
 * and reads its slots with bios straight to the catalog's block device, never through the
 * filesystem: a copy made while the origin's filesystem commits its journal can never
 * wait on that same journal. When the catalog's filesystem is the origin itself the whole
 * store is made before the freeze, as named files unlinked right after the thaw, so that
 * no block the snapshot shows can later become a slot; the store's own writes are
 * recognised by their completion function (cblb_cow_endio) and not copied again.
 * Layout: kmod/doc/STORE.md.
 *
 * FILE (tmpfs, btrfs, overlayfs, NFS, ...): slots are written with kernel_write() by the
 * COW pipeline's completion workqueue and read with kernel_read() by st->read_wq for the
 * snapshot device. Refused when the catalog's filesystem lies on the origin or on a device
 * stacked on it.
 *
 * FIEMAP only reports to a user-space buffer. "start" runs in the writer's process and
 * maps the first file with a scratch mapping in that process; the preparer, a kernel
 * worker, borrows the same mm (kthread_use_mm) for the files that follow. That reference
 * keeps the whole address space alive, so it is held only while the store can still
 * grow, and the watch (mm_work, every CBLB_MM_WATCH) empties the address space once the
 * writer has gone (our reference is its last user): every mapping is unmapped, and a
 * starter that exited costs an empty mm_struct, not its memory. Why not a lazy reference
 * (mmgrab) taken for real only while preparing: the CLI exits right after "start", and a
 * store that could not grow after that would fail the snapshot. kmod/doc/STORE.md.
 *
 * Lock story:
 * - st->lock (spinlock) protects nr_ready, nr_preparing and prepare_error.
 * - files[i] is written once by the preparer, published with smp_store_release() before
 *   nr_ready counts it, read with smp_load_acquire(); it never changes until exit.
 * - next_slot belongs to the COW worker; the preparer only peeks at it.
 * - st->mm_lock (mutex) serialises every use of st->mm and mm_empty: the preparer's
 *   scratch mapping, the watch's unmapping and the release.
 * Context: cblb_store_alloc() runs in the COW worker, cblb_store_write_file() in the COW
 * pipeline's completion workqueue (done_wq); both may sleep. cblb_store_read_file() runs
 * in st->read_wq. cblb_store_locate() never sleeps (snapshot read submission, the COW
 * pipeline's store writes in write_wq).
 */
#define pr_fmt(fmt) "cblb: " fmt

#include <linux/fiemap.h>
#include <linux/mount.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/kthread.h>
#include <linux/mman.h>
#include <linux/mm.h>
#include <linux/namei.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <uapi/linux/magic.h>
#include "cblb.h"
#include "stack.h"
#include "store.h"
#include "cblb_trace.h"

#define FIEMAP_BATCH	64
#define FIEMAP_BAD	(FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC | \
			 FIEMAP_EXTENT_ENCODED | FIEMAP_EXTENT_DATA_ENCRYPTED | \
			 FIEMAP_EXTENT_NOT_ALIGNED | FIEMAP_EXTENT_DATA_INLINE | \
			 FIEMAP_EXTENT_DATA_TAIL | FIEMAP_EXTENT_SHARED)

static struct cblb_store_file *store_file(struct cblb_store *st, unsigned int i)
{
	return smp_load_acquire(&st->files[i]);
}

/* Read the file's extents through a scratch user mapping of the current mm. */
static int store_map_extents(struct cblb_store *st, struct cblb_store_file *sf)
{
	struct inode *inode = file_inode(sf->file);
	struct fiemap_extent *kext;
	unsigned long ubuf;
	unsigned int cap = 8, n = 0, i;
	u64 pos = 0, dev_sectors = bdev_nr_sectors(st->bdev);
	int err = 0;

	if (!inode->i_op->fiemap)
		return -EOPNOTSUPP;
	kext = kmalloc_array(FIEMAP_BATCH, sizeof(*kext), GFP_KERNEL);
	sf->extents = kmalloc_array(cap, sizeof(*sf->extents), GFP_KERNEL);
	if (!kext || !sf->extents) {
		err = -ENOMEM;
		goto out_free;
	}
	ubuf = vm_mmap(NULL, 0, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, 0);
	if (IS_ERR_VALUE(ubuf)) {
		err = (int)ubuf;
		goto out_free;
	}
	while (pos < st->file_bytes) {
		struct fiemap_extent_info fi = {
			.fi_flags = FIEMAP_FLAG_SYNC,
			.fi_extents_max = FIEMAP_BATCH,
			.fi_extents_start = (struct fiemap_extent __user *)ubuf,
		};
		bool last = false;

		err = inode->i_op->fiemap(inode, &fi, pos, st->file_bytes - pos);
		if (err)
			break;
		if (!fi.fi_extents_mapped) {
			err = -EIO;	/* a hole: fallocate did not allocate it */
			break;
		}
		if (copy_from_user(kext, (void __user *)ubuf, fi.fi_extents_mapped * sizeof(*kext))) {
			err = -EFAULT;
			break;
		}
		for (i = 0; i < fi.fi_extents_mapped; i++) {
			struct fiemap_extent *e = &kext[i];
			u64 end = min(e->fe_logical + e->fe_length, st->file_bytes);

			if (e->fe_logical != pos || (e->fe_flags & FIEMAP_BAD) ||
			    (e->fe_physical & (SECTOR_SIZE - 1)) || (end & (SECTOR_SIZE - 1))) {
				err = -EOPNOTSUPP;
				goto out_unmap;
			}
			/* Never a raw write outside the device the filesystem says it is on. */
			if ((e->fe_physical + (end - pos)) >> SECTOR_SHIFT > dev_sectors) {
				err = -EXDEV;
				goto out_unmap;
			}
			if (n == cap) {
				struct cblb_extent *grown;

				cap *= 2;
				grown = krealloc_array(sf->extents, cap, sizeof(*grown), GFP_KERNEL);
				if (!grown) {
					err = -ENOMEM;
					goto out_unmap;
				}
				sf->extents = grown;
			}
			sf->extents[n].offset = pos;
			sf->extents[n].len = end - pos;
			sf->extents[n].sector = e->fe_physical >> SECTOR_SHIFT;
			n++;
			pos = end;
			if ((e->fe_flags & FIEMAP_EXTENT_LAST) || pos >= st->file_bytes)
				last = true;
		}
		if (last && pos < st->file_bytes) {
			err = -EIO;
			break;
		}
	}
out_unmap:
	vm_munmap(ubuf, PAGE_SIZE);
out_free:
	kfree(kext);
	if (err) {
		kfree(sf->extents);
		sf->extents = NULL;
	} else {
		sf->nr_extents = n;
	}
	return err;
}

static void store_file_free(struct cblb_store_file *sf)
{
	if (!sf)
		return;
	if (sf->file)
		fput(sf->file);
	kfree(sf->extents);
	kfree(sf);
}

/*
 * Unlink name from the pinned catalog if it is the inode expected, or (expected NULL) any
 * regular file: a temp file this module left behind when the machine went down.
 */
static int store_unlink_name(struct cblb_store *st, const char *name, struct inode *expected)
{
	struct dentry *dir = st->catalog.dentry, *d;
	int err;

	err = mnt_want_write(st->catalog.mnt);
	if (err)
		return err;
	inode_lock_nested(d_inode(dir), I_MUTEX_PARENT);
	d = cblb_lookup_one(st->catalog.mnt, dir, name);
	if (IS_ERR(d)) {
		err = PTR_ERR(d);
	} else {
		if (d_is_reg(d) && (!expected || d_inode(d) == expected))
			err = cblb_vfs_unlink(st->catalog.mnt, d_inode(dir), d);
		dput(d);
	}
	inode_unlock(d_inode(dir));
	mnt_drop_write(st->catalog.mnt);
	return err;
}

/* A named temp file loses its name (it stays open: its blocks stay allocated). */
static void store_unlink(struct cblb_store *st, struct cblb_store_file *sf)
{
	int err;

	if (!sf->named)
		return;
	sf->named = false;
	err = store_unlink_name(st, sf->name, file_inode(sf->file));
	if (err)
		pr_notice("%s: cannot unlink temp file %s in %s (%d); delete it by hand\n",
			  st->snap->name, sf->name, st->catalog_name, err);
}

/* Create a named temp file; a leftover of the same name (a crash) is replaced. */
static struct file *store_create_named(struct cblb_store *st, const char *name, int flags)
{
	struct file *f = cblb_file_open_root(&st->catalog, name, O_CREAT | O_EXCL | flags, 0600);

	if (PTR_ERR_OR_ZERO(f) == -EEXIST && !store_unlink_name(st, name, NULL)) {
		pr_notice("%s: removed %s left in %s by an earlier run\n", st->snap->name, name,
			  st->catalog_name);
		f = cblb_file_open_root(&st->catalog, name, O_CREAT | O_EXCL | flags, 0600);
	}
	return f;
}

/*
 * Open temp file idx in the pinned catalog: named when the whole store is made before the
 * freeze (LAYOUTS.md), unnamed (O_TMPFILE) otherwise, or named and unlinked at once where
 * the filesystem has no O_TMPFILE.
 */
static int store_open(struct cblb_store *st, struct cblb_store_file *sf, unsigned int idx)
{
	const int flags = O_RDWR | O_LARGEFILE | O_NOATIME;
	struct file *f = ERR_PTR(-EOPNOTSUPP);

	snprintf(sf->name, sizeof(sf->name), ".cblb-%s-%u", st->snap->name, idx);
	if (!st->on_origin)
		f = cblb_file_open_root(&st->catalog, ".", O_TMPFILE | flags, 0600);
	if (IS_ERR(f) && (st->on_origin || PTR_ERR(f) == -EOPNOTSUPP || PTR_ERR(f) == -EISDIR)) {
		f = store_create_named(st, sf->name, flags);
		if (!IS_ERR(f))
			sf->named = true;
	}
	if (IS_ERR(f))
		return PTR_ERR(f);
	sf->file = f;
	/* A mount over the catalog after start cannot move the store. */
	if (file_inode(f)->i_sb != st->catalog.dentry->d_sb)
		return -EXDEV;
	if (sf->named && !st->on_origin)
		store_unlink(st, sf);
	return 0;
}

/* XFS realtime files keep their data on another device than the one FIEMAP is read for. */
static bool store_file_realtime(struct cblb_store_file *sf)
{
	return cblb_file_realtime(sf->file);
}

/*
 * Create temp file idx. DIRECT: allocate and map it (needs a user mm, see the top).
 * FILE: space is taken as slots are written (a tmpfs store costs only what it holds).
 */
static int store_prepare_file(struct cblb_store *st, unsigned int idx)
{
	struct cblb_store_file *sf;
	int err;

	sf = kzalloc(sizeof(*sf), GFP_KERNEL);
	if (!sf)
		return -ENOMEM;
	err = store_open(st, sf, idx);
	if (err)
		goto fail;
	if (st->kind == CBLB_STORE_DIRECT) {
		if (!current->mm || store_file_realtime(sf)) {
			err = -EOPNOTSUPP;
			goto fail;
		}
		err = vfs_fallocate(sf->file, 0, 0, st->file_bytes);
		if (err)
			goto fail;
		err = store_map_extents(st, sf);
		if (err)
			goto fail;
	}
	smp_store_release(&st->files[idx], sf);
	trace_cblb_file(st->snap->name, idx, st->file_bytes >> SECTOR_SHIFT);
	return 0;

fail:
	if (sf->file)
		store_unlink(st, sf);
	store_file_free(sf);
	return err;
}

/* Creating a temp file may then wait on the origin's filesystem, whose writes we hold. */
static bool store_shares_origin_disk(struct cblb_store *st)
{
	return st->bdev && st->bdev->bd_disk == st->snap->origin_disk;
}

static bool store_wants_more(struct cblb_store *st)
{
	u64 ready_chunks = (u64)st->nr_ready * st->file_chunks;
	u64 used = READ_ONCE(st->next_slot);

	return st->nr_ready < st->max_files && !st->prepare_error &&
	       ready_chunks - min(used, ready_chunks) <
	       max_t(u64, st->file_chunks + (used ? 1 : 0),
		     store_shares_origin_disk(st) ? CBLB_AHEAD_CHUNKS_SHARED : CBLB_AHEAD_CHUNKS);
}

/* Could the store still take another temp file? */
static bool store_may_grow(struct cblb_store *st)
{
	bool may;

	spin_lock(&st->lock);
	may = st->nr_ready < st->max_files && !st->prepare_error;
	spin_unlock(&st->lock);
	return may && !READ_ONCE(st->snap->dying);
}

/* The borrowed address space is needed no more: give it back. */
static void store_release_mm(struct cblb_store *st)
{
	lockdep_assert_held(&st->mm_lock);
	if (st->mm)
		mmput(st->mm);
	st->mm = NULL;
}

/*
 * Once our reference is the address space's last user (the writer of "start" and all its
 * threads have exited, and nothing else can take a new user reference without a task that
 * has it), unmap everything in it: only the preparer's scratch page will ever live there.
 */
static void store_empty_orphan_mm(struct cblb_store *st)
{
	lockdep_assert_held(&st->mm_lock);
	if (!st->mm || st->mm_empty || atomic_read(&st->mm->mm_users) != 1)
		return;
	kthread_use_mm(st->mm);
	vm_munmap(0, TASK_SIZE);
	kthread_unuse_mm(st->mm);
	st->mm_empty = true;
	pr_debug("%s: the address space of the writer of start, gone, is emptied\n",
		 st->snap->name);
}

static void store_mm_watch(struct work_struct *work)
{
	struct cblb_store *st = container_of(to_delayed_work(work), struct cblb_store, mm_work);
	bool again;

	mutex_lock(&st->mm_lock);
	if (!store_may_grow(st))
		store_release_mm(st);
	else
		store_empty_orphan_mm(st);
	again = st->mm && !st->mm_empty;
	mutex_unlock(&st->mm_lock);
	if (again)
		queue_delayed_work(cblb_unbound_wq, &st->mm_work, CBLB_MM_WATCH);
}

static void store_prepare_work(struct work_struct *work)
{
	struct cblb_store *st = container_of(work, struct cblb_store, prepare_work);
	bool borrowed = false;

	mutex_lock(&st->mm_lock);
	if (!current->mm && st->mm) {
		kthread_use_mm(st->mm);
		borrowed = true;
	}
	for (;;) {
		unsigned int idx;
		int err;

		spin_lock(&st->lock);
		if (!store_wants_more(st) || READ_ONCE(st->snap->dying)) {
			spin_unlock(&st->lock);
			break;
		}
		idx = st->nr_ready;
		st->nr_preparing = 1;
		spin_unlock(&st->lock);

		err = store_prepare_file(st, idx);

		spin_lock(&st->lock);
		st->nr_preparing = 0;
		if (err)
			st->prepare_error = err;
		else
			st->nr_ready++;
		spin_unlock(&st->lock);
		wake_up_all(&st->ready_wq);
		if (err) {
			pr_notice_ratelimited("%s: creating temp file %u in %s failed: %d\n",
					      st->snap->name, idx, st->catalog_name, err);
			break;
		}
	}
	if (borrowed)
		kthread_unuse_mm(st->mm);
	if (!store_may_grow(st))
		store_release_mm(st);
	mutex_unlock(&st->mm_lock);
}

static bool store_has(struct cblb_store *st, u64 need)
{
	bool ok;

	spin_lock(&st->lock);
	ok = (u64)st->nr_ready * st->file_chunks >= need || st->prepare_error ||
	     (!st->nr_preparing && !store_wants_more(st));
	spin_unlock(&st->lock);
	return ok;
}

/*
 * Reserve n consecutive slots for the COW worker. Waits (bounded) for the preparer when
 * the next temp file is late; fails the snapshot when the store is full or broken.
 */
int cblb_store_alloc(struct cblb_store *st, unsigned int n, u64 *first)
{
	u64 need = st->next_slot + n;
	unsigned int ready;
	int perr;

	spin_lock(&st->lock);
	ready = st->nr_ready;
	spin_unlock(&st->lock);
	if (need > (u64)ready * st->file_chunks && ready < st->max_files) {
		/*
		 * The next file is late. When the catalog shares the origin's disk the
		 * preparer may itself wait on the origin's filesystem, hence the short bound.
		 */
		queue_work(cblb_unbound_wq, &st->prepare_work);
		wait_event_timeout(st->ready_wq, store_has(st, need),
				   store_shares_origin_disk(st) ? 2 * HZ : 30 * HZ);
	}
	spin_lock(&st->lock);
	ready = st->nr_ready;
	perr = st->prepare_error;
	spin_unlock(&st->lock);
	if (need > (u64)ready * st->file_chunks) {
		if (ready == st->max_files)
			cblb_fail(st->snap, "store full: all %u temp files of %llu blocks are used; start again with a larger file size or more files",
				  st->max_files, st->file_bytes >> SECTOR_SHIFT);
		else if (perr)
			cblb_fail(st->snap, "creating temp file %u in %s failed (error %d)",
				  ready + 1, st->catalog_name, perr);
		else
			cblb_fail(st->snap, "temp file %u in %s was not ready in time; use larger temp files",
				  ready + 1, st->catalog_name);
		return -ENOSPC;
	}
	*first = st->next_slot;
	WRITE_ONCE(st->next_slot, need);
	spin_lock(&st->lock);
	if (!st->nr_preparing && store_wants_more(st))
		queue_work(cblb_unbound_wq, &st->prepare_work);
	spin_unlock(&st->lock);
	return 0;
}

/*
 * Where byte off of slot lives on the store device: *sector gets the first sector, the
 * result is how many bytes from there are contiguous (at most to the slot's end).
 */
unsigned int cblb_store_locate(struct cblb_store *st, u64 slot, unsigned int off,
			       sector_t *sector)
{
	struct cblb_store_file *sf = store_file(st, div64_u64(slot, st->file_chunks));
	u64 foff = (slot - div64_u64(slot, st->file_chunks) * st->file_chunks) *
		   CBLB_CHUNK_SIZE + off;
	unsigned int lo = 0, hi = sf->nr_extents;

	while (hi - lo > 1) {
		unsigned int mid = (lo + hi) / 2;

		if (sf->extents[mid].offset <= foff)
			lo = mid;
		else
			hi = mid;
	}
	*sector = sf->extents[lo].sector + ((foff - sf->extents[lo].offset) >> SECTOR_SHIFT);
	return min_t(u64, sf->extents[lo].offset + sf->extents[lo].len - foff,
		     CBLB_CHUNK_SIZE - off);
}

unsigned int cblb_store_files(struct cblb_store *st)
{
	unsigned int n;

	spin_lock(&st->lock);
	n = st->nr_ready;
	spin_unlock(&st->lock);
	return n;
}

u64 cblb_store_capacity(struct cblb_store *st)
{
	return (u64)st->max_files * st->file_chunks;
}

/* The temp files' extents that lie on the origin, in origin-relative sectors. */
int cblb_store_show_extents(struct cblb_store *st, char *buf)
{
	struct cblb_snapshot *s = st->snap;
	unsigned int i, j, n = cblb_store_files(st);
	sector_t base;
	int len = 0;

	if (!st->bdev || st->bdev->bd_disk != s->origin_disk)
		return 0;
	base = cblb_bdev_start(st->bdev);
	for (i = 0; i < n; i++) {
		struct cblb_store_file *sf = store_file(st, i);

		for (j = 0; j < sf->nr_extents; j++) {
			sector_t abs = sf->extents[j].sector + base;
			sector_t cnt = sf->extents[j].len >> SECTOR_SHIFT;

			if (abs + cnt <= s->origin_start || abs >= s->origin_start + s->origin_sectors)
				continue;
			if (len > PAGE_SIZE - 48)
				return len;
			len += sysfs_emit_at(buf, len, "%llu %llu\n",
					     (unsigned long long)(abs - s->origin_start),
					     (unsigned long long)cnt);
		}
	}
	return len;
}

/* FILE: where slot lives in its temp file. */
static struct file *store_slot_file(struct cblb_store *st, u64 slot, loff_t *pos)
{
	u64 idx = div64_u64(slot, st->file_chunks);

	*pos = (slot - idx * st->file_chunks) << CBLB_CHUNK_SHIFT;
	return store_file(st, idx)->file;
}

/*
 * FILE: write one chunk to its slot through the filesystem. done_wq context. The
 * worker must not be throttled on other devices' dirty pages (the origin's writeback may
 * be waiting for it) nor recurse into I/O to reclaim memory: loop's flags.
 */
int cblb_store_write_file(struct cblb_store *st, u64 slot, struct page *page)
{
	unsigned int noio = memalloc_noio_save();
	unsigned int throttle = current->flags & PF_LOCAL_THROTTLE;
	char *p = page_address(page);
	size_t done = 0;
	loff_t pos;
	struct file *f = store_slot_file(st, slot, &pos);
	int err = 0;

	current->flags |= PF_LOCAL_THROTTLE;
	while (done < CBLB_CHUNK_SIZE) {
		ssize_t n = kernel_write(f, p + done, CBLB_CHUNK_SIZE - done, &pos);

		if (n <= 0) {
			err = n ? (int)n : -EIO;
			break;
		}
		done += n;
	}
	if (!throttle)
		current->flags &= ~PF_LOCAL_THROTTLE;
	memalloc_noio_restore(noio);
	return err;
}

/* FILE: read len bytes at off of slot into buf. Process context (st->read_wq). */
int cblb_store_read_file(struct cblb_store *st, u64 slot, unsigned int off, void *buf,
			 unsigned int len)
{
	unsigned int noio = memalloc_noio_save();
	loff_t pos;
	struct file *f = store_slot_file(st, slot, &pos);
	unsigned int done = 0;
	int err = 0;

	pos += off;
	while (done < len) {
		ssize_t n = kernel_read(f, buf + done, len - done, &pos);

		if (n < 0) {
			err = n;
			break;
		}
		if (!n) {		/* never written past here: cannot happen for a slot */
			err = -EIO;
			break;
		}
		done += n;
	}
	memalloc_noio_restore(noio);
	return err;
}

static bool sb_is_direct(struct super_block *sb)
{
	return sb->s_bdev && (sb->s_magic == EXT4_SUPER_MAGIC || sb->s_magic == XFS_SUPER_MAGIC);
}

/* Refuse a catalog device built on the origin, or one the walk cannot see through. */
static int store_check_stack(struct cblb_store *st, struct block_device *bdev)
{
	struct cblb_snapshot *s = st->snap;
	char top[BDEVNAME_SIZE];
	int res = cblb_stack_reaches_origin(s, bdev, top, sizeof(top));

	if (res > 0)
		pr_notice_ratelimited("start %s: catalog %s is on %s, which is stacked on the origin %s; put the catalog on another device\n",
				      s->name, st->catalog_name, top, s->origin_path);
	else if (res < 0)
		pr_notice_ratelimited("start %s: cannot tell whether %s (catalog %s) is built on the origin %s (no /sys here, or a loop device without a backing path); put the catalog on another device\n",
				      s->name, top, st->catalog_name, s->origin_path);
	return res ? -ELOOP : 0;
}

/* FILE: the catalog must not write through anything that reaches the origin. */
static int store_check_file_backing(struct cblb_store *st)
{
	struct cblb_snapshot *s = st->snap;
	struct inode *real = d_real_inode(st->files[0]->file->f_path.dentry);
	char top[BDEVNAME_SIZE];
	int res;

	st->home_sb = real ? real->i_sb : st->files[0]->file->f_path.dentry->d_sb;
	st->home = st->home_sb->s_bdev;
	if (!st->home) {
		/* btrfs (no s_bdev: its device list is walked), tmpfs, NFS, FUSE, ... */
		res = cblb_sb_reaches_origin(s, st->home_sb, top, sizeof(top));
		if (res > 0)
			pr_notice_ratelimited("start %s: catalog %s is on %s, which writes to the origin %s or a device built on it; put the catalog on another device\n",
					      s->name, st->catalog_name, top, s->origin_path);
		else if (res < 0)
			pr_notice_ratelimited("start %s: cannot name the devices of the %s filesystem of catalog %s, so cannot tell whether it writes to the origin %s; put the catalog on another filesystem\n",
					      s->name, st->home_sb->s_type->name, st->catalog_name,
					      s->origin_path);
		return res ? -ELOOP : 0;
	}
	if (cblb_bdev_overlaps_origin(s, st->home)) {
		pr_notice_ratelimited("start %s: catalog %s is on the origin's filesystem, which is not ext4 or xfs; only those can hold their own catalog\n",
				      s->name, st->catalog_name);
		return -EOPNOTSUPP;
	}
	return store_check_stack(st, st->home);
}

/* DIRECT: decide where the store goes; refuse a device stacked on the origin. */
static int store_check_direct(struct cblb_store *st)
{
	struct cblb_snapshot *s = st->snap;

	st->home = st->bdev;
	/* a slot is read at any 512-byte offset the snapshot is read at */
	if (bdev_logical_block_size(st->bdev) > s->origin_lbs) {
		pr_notice_ratelimited("start %s: catalog %s is on %pg, whose %u-byte blocks are larger than the origin's %u; put the catalog on another device\n",
				      s->name, st->catalog_name, st->bdev,
				      bdev_logical_block_size(st->bdev), s->origin_lbs);
		return -EOPNOTSUPP;
	}
	st->on_origin = cblb_bdev_overlaps_origin(s, st->bdev);
	if (st->on_origin) {
		if (cblb_bdev_start(st->bdev) != s->origin_start) {
			pr_notice_ratelimited("start %s: catalog %s is on %pg, which overlaps the origin %s without being it\n",
					      s->name, st->catalog_name, st->bdev, s->origin_path);
			return -ELOOP;
		}
		return 0;
	}
	return store_check_stack(st, st->bdev);
}

/* Make the files that must exist before the freeze: all of them on the origin, else one. */
static int store_make_first_files(struct cblb_store *st)
{
	unsigned int i, n = st->on_origin ? st->max_files : 1;
	int err;

	for (i = 0; i < n; i++) {
		err = store_prepare_file(st, i);
		if (err) {
			if (st->on_origin)
				pr_notice_ratelimited("start %s: the catalog is on the origin, so all %u temp files of %llu blocks are made now; file %u failed (%d)\n",
						      st->snap->name, st->max_files,
						      st->file_bytes >> SECTOR_SHIFT, i, err);
			return err;
		}
		st->nr_ready = i + 1;
	}
	return 0;
}

int cblb_store_init(struct cblb_snapshot *s, const char *catalog, u64 file_blocks,
		    u32 max_files)
{
	struct cblb_store *st = &s->store;
	struct super_block *sb;
	unsigned int i;
	int err;

	st->snap = s;
	spin_lock_init(&st->lock);
	init_waitqueue_head(&st->ready_wq);
	INIT_WORK(&st->prepare_work, store_prepare_work);
	mutex_init(&st->mm_lock);
	INIT_DELAYED_WORK(&st->mm_work, store_mm_watch);
	st->max_files = max_files;
	st->file_chunks = (file_blocks << SECTOR_SHIFT) >> CBLB_CHUNK_SHIFT;
	st->file_bytes = st->file_chunks << CBLB_CHUNK_SHIFT;
	if (!st->file_chunks || cblb_store_capacity(st) > CBLB_MAX_SLOTS)
		return -EINVAL;
	if (catalog[0] != '/')
		return -EINVAL;

	err = kern_path(catalog, LOOKUP_FOLLOW | LOOKUP_DIRECTORY, &st->catalog);
	if (err)
		return err;
	sb = st->catalog.dentry->d_sb;
	if (sb->s_bdev && cblb_is_snapimage(sb->s_bdev->bd_disk)) {
		err = -EXDEV;
		goto fail_path;
	}
	if (READ_ONCE(sb->s_writers.frozen) != SB_UNFROZEN) {
		err = -EBUSY;	/* file creation would wait for the thaw */
		goto fail_path;
	}
	st->catalog_name = kstrdup(catalog, GFP_KERNEL);
	st->files = kcalloc(max_files, sizeof(*st->files), GFP_KERNEL);
	if (!st->catalog_name || !st->files) {
		err = -ENOMEM;
		goto fail_alloc;
	}
	if (sb_is_direct(sb)) {
		st->kind = CBLB_STORE_DIRECT;
		st->bdev = sb->s_bdev;
		err = store_check_direct(st);
		if (err)
			goto fail_alloc;
	} else {
		st->kind = CBLB_STORE_FILE;
		st->read_wq = alloc_workqueue("cblb_rd_%s", WQ_UNBOUND | WQ_MEM_RECLAIM, 0,
					      s->name);
		if (!st->read_wq) {
			err = -ENOMEM;
			goto fail_alloc;
		}
	}
	/* Made here, before the freeze, so that origin writes after the point in time never
	 * wait for them. */
	err = store_make_first_files(st);
	if (err)
		goto fail_files;
	if (st->kind == CBLB_STORE_FILE) {
		err = store_check_file_backing(st);
		if (err)
			goto fail_files;
	}
	if (st->kind == CBLB_STORE_DIRECT && st->nr_ready < max_files)
		st->mm = get_task_mm(current);
	return 0;

fail_files:
	for (i = 0; i < max_files; i++) {
		if (st->files[i]) {
			store_unlink(st, st->files[i]);
			store_file_free(st->files[i]);
		}
	}
	st->nr_ready = 0;
fail_alloc:
	if (st->read_wq)
		destroy_workqueue(st->read_wq);
	st->read_wq = NULL;
	kfree(st->files);
	st->files = NULL;
	kfree(st->catalog_name);
	st->catalog_name = NULL;
	st->bdev = NULL;
fail_path:
	path_put(&st->catalog);
	memset(&st->catalog, 0, sizeof(st->catalog));
	return err;
}

/* After the thaw: the names of a store made before the freeze go (the files stay open). */
void cblb_store_unname(struct cblb_store *st)
{
	unsigned int i;

	for (i = 0; i < st->nr_ready; i++)
		store_unlink(st, st->files[i]);
}

/* After the thaw of a started snapshot: names go, the preparer keeps files ahead. */
void cblb_store_started(struct cblb_store *st)
{
	cblb_store_unname(st);
	if (st->nr_ready < st->max_files)
		queue_work(cblb_unbound_wq, &st->prepare_work);
	if (st->mm)
		queue_delayed_work(cblb_unbound_wq, &st->mm_work, CBLB_MM_WATCH);
}

/* Called once nothing can reach the store any more (tracker gone, worker drained). */
void cblb_store_exit(struct cblb_store *st)
{
	unsigned int i;

	if (!st->files)
		return;
	cancel_delayed_work_sync(&st->mm_work);
	cancel_work_sync(&st->prepare_work);
	if (st->read_wq)
		destroy_workqueue(st->read_wq);
	st->read_wq = NULL;
	for (i = 0; i < st->max_files; i++) {
		if (st->files[i])
			store_unlink(st, st->files[i]);
		store_file_free(st->files[i]);
	}
	kfree(st->files);
	st->files = NULL;
	mutex_lock(&st->mm_lock);
	store_release_mm(st);
	mutex_unlock(&st->mm_lock);
	kfree(st->catalog_name);
	st->catalog_name = NULL;
	path_put(&st->catalog);
	st->bdev = NULL;
}
