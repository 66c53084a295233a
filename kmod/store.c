// SPDX-License-Identifier: GPL-2.0
/*
 * The COW store: temp files in the catalog folder, each <file size> 512-byte blocks,
 * at most <max files>, created as they are needed.
 *
 * A temp file is an unnamed O_TMPFILE file in the catalog (a crash can never leave one
 * behind), fully allocated with fallocate(), whose extents are read once with FIEMAP.
 * From then on the module writes and reads its slots with bios straight to the
 * catalog's block device, never through the filesystem: a copy made while the origin's
 * filesystem commits its journal can never wait on that same journal, and when the
 * catalog lives on the origin itself the store's own writes are recognised by their
 * completion function (cblb_cow_endio) and not copied again. Layout: kmod/doc/STORE.md.
 *
 * FIEMAP only reports to a user-space buffer. "start" runs in the writer's process and
 * maps the first file with a scratch mapping in that process; the preparer, a kernel
 * worker, borrows the same mm (kthread_use_mm) for the files that follow.
 *
 * Lock story:
 * - st->lock (spinlock) protects nr_ready, nr_preparing and prepare_error.
 * - files[i] is written once by the preparer, published with smp_store_release() before
 *   nr_ready counts it, read with smp_load_acquire(); it never changes until exit.
 * - next_slot belongs to the COW worker; the preparer only peeks at it.
 * Context: cblb_store_alloc() runs in the COW worker and may sleep a bounded time
 * waiting for the preparer; cblb_store_locate() never sleeps (submit paths).
 */
#define pr_fmt(fmt) "cblb: " fmt

#include <linux/fiemap.h>
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
	u64 pos = 0;
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

/* Create, allocate and map temp file number idx. Needs a user mm (see the top). */
static int store_prepare_file(struct cblb_store *st, unsigned int idx)
{
	struct cblb_store_file *sf;
	int err;

	sf = kzalloc(sizeof(*sf), GFP_KERNEL);
	if (!sf)
		return -ENOMEM;
	sf->file = filp_open(st->catalog_name, O_TMPFILE | O_RDWR | O_LARGEFILE, 0600);
	if (IS_ERR(sf->file)) {
		err = PTR_ERR(sf->file);
		sf->file = NULL;
		goto fail;
	}
	err = vfs_fallocate(sf->file, 0, 0, st->file_bytes);
	if (err)
		goto fail;
	err = store_map_extents(st, sf);
	if (err)
		goto fail;
	smp_store_release(&st->files[idx], sf);
	trace_cblb_file(st->snap->name, idx, st->file_bytes >> SECTOR_SHIFT);
	return 0;

fail:
	store_file_free(sf);
	return err;
}

/* Creating a temp file may then wait on the origin's filesystem, whose writes we hold. */
static bool store_shares_origin_disk(struct cblb_store *st)
{
	return st->bdev->bd_disk == st->snap->origin_disk;
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

static void store_prepare_work(struct work_struct *work)
{
	struct cblb_store *st = container_of(work, struct cblb_store, prepare_work);
	bool borrowed = false;

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

		err = current->mm ? store_prepare_file(st, idx) : -EOPNOTSUPP;

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
		queue_work(system_unbound_wq, &st->prepare_work);
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
		queue_work(system_unbound_wq, &st->prepare_work);
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
	base = st->bdev->bd_start_sect;
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

int cblb_store_init(struct cblb_snapshot *s, const char *catalog, u64 file_blocks,
		    u32 max_files)
{
	struct cblb_store *st = &s->store;
	struct super_block *sb;
	int err;

	st->snap = s;
	spin_lock_init(&st->lock);
	init_waitqueue_head(&st->ready_wq);
	INIT_WORK(&st->prepare_work, store_prepare_work);
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
	if (!sb->s_bdev || (sb->s_magic != EXT4_SUPER_MAGIC && sb->s_magic != XFS_SUPER_MAGIC)) {
		err = -EOPNOTSUPP;
		goto fail_path;
	}
	if (cblb_is_snapimage(sb->s_bdev->bd_disk)) {
		err = -EXDEV;
		goto fail_path;
	}
	if (READ_ONCE(sb->s_writers.frozen) != SB_UNFROZEN) {
		err = -EBUSY;	/* fallocate would wait for the thaw */
		goto fail_path;
	}
	st->bdev = sb->s_bdev;
	st->on_origin = st->bdev->bd_dev == s->origin_dev;
	st->catalog_name = kstrdup(catalog, GFP_KERNEL);
	st->files = kcalloc(max_files, sizeof(*st->files), GFP_KERNEL);
	if (!st->catalog_name || !st->files) {
		err = -ENOMEM;
		goto fail_alloc;
	}
	if (!current->mm) {
		err = -EOPNOTSUPP;
		goto fail_alloc;
	}
	/* The first file is made here, before the freeze, so that origin writes after the
	 * point in time never wait for it. */
	err = store_prepare_file(st, 0);
	if (err)
		goto fail_alloc;
	st->nr_ready = 1;
	if (max_files > 1)
		st->mm = get_task_mm(current);
	return 0;

fail_alloc:
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

/* Called once nothing can reach the store any more (tracker gone, worker drained). */
void cblb_store_exit(struct cblb_store *st)
{
	unsigned int i;

	if (!st->files)
		return;
	cancel_work_sync(&st->prepare_work);
	for (i = 0; i < st->max_files; i++)
		store_file_free(st->files[i]);
	kfree(st->files);
	st->files = NULL;
	if (st->mm)
		mmput(st->mm);
	st->mm = NULL;
	kfree(st->catalog_name);
	st->catalog_name = NULL;
	path_put(&st->catalog);
	st->bdev = NULL;
}
