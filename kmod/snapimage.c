// SPDX-License-Identifier: GPL-2.0
/*
 * The snapshot device /dev/<dev>: a read-only, bio-based disk of the origin's size.
 *
 * A read is cut into runs: a run of chunks none of which is copied goes to the origin as
 * one clone (registered in the snapshot's in-flight reads, see reads.c); copied chunks
 * whose slots follow each other on the store device go as one clone (DIRECT) or as a work
 * item that reads the temp file (FILE); a chunk whose copy is still in memory (a staged
 * flight, cow.c) is copied from there at once. A run of uncopied chunks with scattered
 * copied chunks between goes to the origin as one clone, the copied chunks laid over it
 * from the store (overlay.c). The parent completes when its last piece does
 * (bio_inc_remaining / bio_endio).
 *
 * Lock story:
 * - Under snapshot->read_lock a run checks that reads are open (remove has not begun),
 *   looks the chunks up in the index and the staged flights (copying a staged chunk
 *   while the lock keeps its page), registers an origin run and counts the piece in
 *   nr_clones; the COW worker waits for registered runs before it lets a write overwrite
 *   a chunk (cow.c), remove waits for nr_clones to drain (reads.c).
 * - Nothing else is shared: the index and the store's file table are read lock-free.
 * Context: cblb_snap_submit_bio() runs in the submitter's context and does not wait for
 * I/O; clones go to the block layer through current->bio_list; file reads run in the
 * store's read workqueue.
 */
#define pr_fmt(fmt) "cblb: " fmt

#include <linux/blkdev.h>
#include <linux/bio.h>
#include <linux/bitmap.h>
#include <linux/highmem.h>
#include <linux/module.h>
#include <linux/slab.h>
#include "cblb.h"
#include "index.h"
#include "reads.h"
#include "store.h"
#include "cow.h"
#include "overlay.h"
#include "snapimage.h"

static int cblb_major;

struct cblb_clone {
	struct bio *parent;
	struct cblb_snapshot *snap;
	bool origin;			/* range is registered in snap->reads */
	struct cblb_read_range range;
	struct bio bio;		/* last: the bio_set's front_pad ends here */
};

/* FILE backend: one copied chunk's piece of a parent read, served by a worker. */
struct cblb_file_read {
	struct work_struct work;
	struct cblb_snapshot *snap;
	struct bio *parent;
	struct bvec_iter iter;		/* the piece, in the parent's pages */
	u64 slot;
	unsigned int off;		/* byte offset of the piece in its chunk */
};

/*
 * A clone is done. The snapshot may be freed as soon as cblb_reads_end() has run (remove
 * waits for nr_clones), so that comes last, after the clone went back to its bio_set.
 */
static void snap_clone_endio(struct bio *bio)
{
	struct cblb_clone *c = container_of(bio, struct cblb_clone, bio);
	struct cblb_snapshot *s = c->snap;
	struct bio *parent = c->parent;
	blk_status_t status = bio->bi_status;
	bool origin = c->origin;
	struct cblb_read_range *range = origin ? &c->range : NULL;

	/*
	 * A snapshot that failed while this read of the origin was in flight no longer holds
	 * writes back: what was read may be newer than the point in time.
	 */
	if (origin && !status && !cblb_snapshot_active(s))
		status = BLK_STS_IOERR;
	if (range)
		cblb_reads_forget(s, range);	/* before the clone (and range) is freed */
	bio_put(bio);
	cblb_read_piece_done(parent, status);
	cblb_reads_end(s);
}

static void snap_file_read_fn(struct work_struct *work)
{
	struct cblb_file_read *fr = container_of(work, struct cblb_file_read, work);
	struct cblb_snapshot *s = fr->snap;
	unsigned int off = fr->off;
	struct bvec_iter it;
	struct bio_vec bv;
	int err = 0;

	__bio_for_each_segment(bv, fr->parent, it, fr->iter) {
		char *p = bvec_kmap_local(&bv);

		err = cblb_store_read_file(&s->store, fr->slot, off, p, bv.bv_len);
		kunmap_local(p);
		if (err)
			break;
		off += bv.bv_len;
	}
	cblb_read_piece_done(fr->parent, err ? BLK_STS_IOERR : BLK_STS_OK);
	kfree(fr);
	cblb_reads_end(s);
}

/* FILE backend: read a copied chunk's piece through the temp file, in a worker. */
static void snap_queue_file_read(struct cblb_snapshot *s, struct bio *parent,
				 struct bvec_iter *iter, unsigned int bytes, u64 slot,
				 unsigned int off)
{
	struct cblb_file_read *fr = kmalloc(sizeof(*fr), GFP_NOIO);

	bio_inc_remaining(parent);
	if (!fr) {
		bio_advance_iter(parent, iter, bytes);
		cblb_read_piece_done(parent, BLK_STS_RESOURCE);
		cblb_reads_end(s);
		return;
	}
	INIT_WORK(&fr->work, snap_file_read_fn);
	fr->snap = s;
	fr->parent = parent;
	fr->iter = *iter;
	fr->iter.bi_size = bytes;
	fr->slot = slot;
	fr->off = off;
	bio_advance_iter(parent, iter, bytes);
	queue_work(s->store.read_wq, &fr->work);
}

/* Copy bytes of a staged chunk (from src) into parent's pages at iter. */
static void snap_copy_staged(struct bio *parent, struct bvec_iter iter, unsigned int bytes,
			     const char *src)
{
	struct bvec_iter it;
	struct bio_vec bv;

	iter.bi_size = bytes;
	__bio_for_each_segment(bv, parent, it, iter) {
		memcpy_to_bvec(&bv, src);
		src += bv.bv_len;
	}
}

/*
 * A copied piece starts at slot (of chunk), byte off, on the store device at *sector,
 * bytes long; grow it over the following chunks while their slots follow on the device.
 */
static unsigned int snap_grow_copied(struct cblb_snapshot *s, u64 chunk, unsigned int off,
				     sector_t sector, unsigned int bytes, unsigned int left)
{
	u64 c = chunk + 1, slot;
	sector_t next;
	unsigned int len;

	if (off + bytes != CBLB_CHUNK_SIZE)
		return bytes;		/* the piece ends inside its chunk */
	while (bytes < left) {
		slot = cblb_index_get(s, c);
		if (!slot)
			break;
		len = cblb_store_locate(&s->store, slot - 1, 0, &next);
		if (next != sector + (bytes >> SECTOR_SHIFT))
			break;
		len = min(len, left - bytes);
		bytes += len;
		if (len != CBLB_CHUNK_SIZE)
			break;
		c++;
	}
	return bytes;
}

/*
 * Send the next run of parent (at *iter) to where it lives; advance *iter past it.
 * Returns false (nothing sent) once remove has begun.
 */
static bool snap_read_run(struct cblb_snapshot *s, struct bio *parent, struct bvec_iter *iter)
{
	u64 chunk = sector_to_chunk(iter->bi_sector), c, slot;
	u64 last = sector_to_chunk(iter->bi_sector + (iter->bi_size >> SECTOR_SHIFT) - 1);
	unsigned int off = (iter->bi_sector - chunk_to_sector(chunk)) << SECTOR_SHIFT;
	DECLARE_BITMAP(taken, CBLB_READ_RUN);
	unsigned int bytes, n;
	struct cblb_clone *cl;
	struct bio *clone;
	struct page *staged;
	sector_t sector = iter->bi_sector;
	unsigned long flags;

	if (cblb_overlay_read(s, parent, iter))
		return true;		/* one origin clone under scattered copied chunks */
	/* Allocated first (it may sleep), aimed at the origin until the index says otherwise. */
	clone = bio_alloc_clone(s->origin.bdev, parent, GFP_NOIO, &s->read_bs);
	cl = container_of(clone, struct cblb_clone, bio);

	spin_lock_irqsave(&s->read_lock, flags);
	if (s->reads_closed) {
		spin_unlock_irqrestore(&s->read_lock, flags);
		bio_put(clone);
		return false;
	}
	slot = cblb_index_get(s, chunk);
	staged = slot ? NULL : cblb_cow_staged(s, chunk);
	if (staged) {
		/* copied to memory, not yet to the store: served from there, no I/O */
		bytes = min_t(u64, iter->bi_size, CBLB_CHUNK_SIZE - off);
		snap_copy_staged(parent, *iter, bytes, page_address(staged) + off);
		spin_unlock_irqrestore(&s->read_lock, flags);
		bio_put(clone);
		bio_advance_iter(parent, iter, bytes);
		return true;
	}
	if (!slot) {
		/* one registration covers at most CBLB_READ_RUN chunks: a write to one of them
		 * waits for no more than that; the run ends at the first chunk taken */
		last = min(last, chunk + CBLB_READ_RUN - 1);
		n = last - chunk + 1;
		cblb_cow_taken_map(s, chunk, n, taken);
		c = chunk + find_next_bit(taken, n, 1);
		bytes = min_t(u64, iter->bi_size, (chunk_to_sector(c) - sector) << SECTOR_SHIFT);
		cblb_reads_begin(s, &cl->range, chunk, c - 1, NULL);
	} else {
		bytes = min_t(u64, iter->bi_size, CBLB_CHUNK_SIZE - off);
	}
	cl->origin = !slot;
	atomic_inc(&s->nr_clones);
	spin_unlock_irqrestore(&s->read_lock, flags);

	if (slot && s->store.kind == CBLB_STORE_FILE) {
		bio_put(clone);
		snap_queue_file_read(s, parent, iter, bytes, slot - 1, off);
		return true;
	}
	if (slot) {
		bytes = min(bytes, cblb_store_locate(&s->store, slot - 1, off, &sector));
		bytes = snap_grow_copied(s, chunk, off, sector, bytes, iter->bi_size);
		bio_set_dev(clone, s->store.bdev);
	}
	cl->parent = parent;
	cl->snap = s;
	clone->bi_iter = *iter;
	clone->bi_iter.bi_size = bytes;
	clone->bi_iter.bi_sector = sector;
	clone->bi_end_io = snap_clone_endio;
	bio_inc_remaining(parent);
	bio_advance_iter(parent, iter, bytes);
	submit_bio_noacct(clone);
	return true;
}

static void cblb_snap_submit_bio(struct bio *bio)
{
	struct cblb_snapshot *s = cblb_bio_disk(bio)->private_data;
	struct bvec_iter iter = bio->bi_iter;

	if (bio_op(bio) != REQ_OP_READ) {
		if (op_is_flush(bio->bi_opf) && !bio_sectors(bio))
			bio_endio(bio);
		else
			bio_io_error(bio);
		return;
	}
	if (!cblb_snapshot_active(s)) {
		bio_io_error(bio);
		return;
	}
	while (iter.bi_size) {
		if (!snap_read_run(s, bio, &iter)) {
			/* remove has begun: what was not sent fails, never reads live data */
			bio->bi_status = BLK_STS_IOERR;
			break;
		}
	}
	bio_endio(bio);
}
CBLB_SUBMIT_BIO(cblb_snap_submit_bio)

static const struct block_device_operations cblb_snap_fops = {
	.owner = THIS_MODULE,
	.submit_bio = cblb_snap_submit_bio_entry,
};

int cblb_snapimage_create(struct cblb_snapshot *s)
{
	struct gendisk *disk;
	int err;

	/* One read may need several clones from this pool inside one submit_bio: the
	 * rescuer keeps them moving under memory pressure. */
	err = bioset_init(&s->read_bs, BIO_POOL_SIZE, offsetof(struct cblb_clone, bio),
			  BIOSET_NEED_RESCUER);
	if (err)
		return err;
	err = cblb_overlay_init(s);
	if (err)
		goto fail_overlay;
	disk = cblb_alloc_disk(s->origin.bdev);
	if (IS_ERR(disk)) {
		err = PTR_ERR(disk);
		goto fail_disk;
	}
	disk->major = cblb_major;
	disk->first_minor = s->slot;
	disk->minors = 1;
	disk->flags |= GENHD_FL_NO_PART;
	disk->fops = &cblb_snap_fops;
	disk->private_data = s;
	strscpy(disk->disk_name, s->name, sizeof(disk->disk_name));
	set_capacity(disk, s->origin_sectors);
	set_disk_ro(disk, true);
	err = cblb_add_disk(disk);
	if (err)
		goto fail_add;
	s->disk = disk;
	return 0;

fail_add:
	cblb_put_disk(disk);
fail_disk:
	cblb_overlay_exit(s);
fail_overlay:
	bioset_exit(&s->read_bs);
	return err;
}

void cblb_snapimage_destroy(struct cblb_snapshot *s)
{
	if (!s->disk)
		return;
	del_gendisk(s->disk);
	cblb_put_disk(s->disk);
	s->disk = NULL;
	cblb_overlay_exit(s);
	bioset_exit(&s->read_bs);
}

int cblb_snapimage_init(void)
{
	cblb_major = register_blkdev(0, "cblb");
	return cblb_major < 0 ? cblb_major : 0;
}

void cblb_snapimage_exit(void)
{
	unregister_blkdev(cblb_major, "cblb");
}
