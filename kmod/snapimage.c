// SPDX-License-Identifier: GPL-2.0
/*
 * The snapshot device /dev/<dev>: a read-only, bio-based disk of the origin's size.
 *
 * A read is cut at chunk boundaries; each piece is cloned and sent to the temp file's
 * sectors when the chunk was copied, to the origin otherwise. The parent completes when
 * its last clone does (bio_inc_remaining / bio_endio).
 *
 * Lock story:
 * - A piece bound for the origin is counted in snapshot->reads[chunk % buckets] under
 *   snapshot->read_lock, after checking the index under the same lock; the COW worker
 *   waits for those counts before it lets a write overwrite a chunk (see cow.c). The
 *   count drops in the clone's completion (any context, hence the irq-safe lock).
 * - Nothing else is shared: the index and the store's file table are read lock-free.
 * Context: cblb_snap_submit_bio() runs in the submitter's context and does not wait for
 * I/O; clones go to the block layer through current->bio_list.
 */
#define pr_fmt(fmt) "cblb: " fmt

#include <linux/blkdev.h>
#include <linux/bio.h>
#include <linux/module.h>
#include "cblb.h"

static int cblb_major;

struct cblb_clone {
	struct bio *parent;
	struct cblb_snapshot *snap;
	int bucket;		/* reads[] bucket counted, or -1 for a temp-file read */
	struct bio bio;		/* last: the bio_set's front_pad ends here */
};

static void snap_clone_endio(struct bio *bio)
{
	struct cblb_clone *c = container_of(bio, struct cblb_clone, bio);
	struct bio *parent = c->parent;

	if (bio->bi_status && !parent->bi_status)
		parent->bi_status = bio->bi_status;
	if (c->bucket >= 0 && atomic_dec_and_test(&c->snap->reads[c->bucket]))
		wake_up_all(&c->snap->read_wq);
	bio_put(bio);
	bio_endio(parent);
}

/* Send one piece (inside one chunk) of parent, described by iter, to where it lives. */
static void snap_read_piece(struct cblb_snapshot *s, struct bio *parent,
			    struct bvec_iter *iter, unsigned int bytes)
{
	u64 chunk = sector_to_chunk(iter->bi_sector);
	unsigned int off = (iter->bi_sector - chunk_to_sector(chunk)) << SECTOR_SHIFT;
	struct block_device *target;
	struct cblb_clone *c;
	struct bio *clone;
	sector_t sector;
	unsigned long flags;
	u64 slot;
	int bucket = -1;

	slot = cblb_index_get(s, chunk);
	if (!slot) {
		bucket = chunk % CBLB_READ_BUCKETS;
		spin_lock_irqsave(&s->read_lock, flags);
		slot = cblb_index_get(s, chunk);
		if (!slot)
			atomic_inc(&s->reads[bucket]);
		spin_unlock_irqrestore(&s->read_lock, flags);
		if (slot)
			bucket = -1;
	}
	if (slot) {
		bytes = min(bytes, cblb_store_locate(&s->store, slot - 1, off, &sector));
		target = s->store.bdev;
	} else {
		sector = iter->bi_sector;
		target = s->origin.bdev;
	}

	clone = bio_alloc_clone(target, parent, GFP_NOIO, &s->read_bs);
	c = container_of(clone, struct cblb_clone, bio);
	c->parent = parent;
	c->snap = s;
	c->bucket = bucket;
	clone->bi_iter = *iter;
	clone->bi_iter.bi_size = bytes;
	clone->bi_iter.bi_sector = sector;
	clone->bi_end_io = snap_clone_endio;
	bio_inc_remaining(parent);
	bio_advance_iter(parent, iter, bytes);
	submit_bio_noacct(clone);
}

static void cblb_snap_submit_bio(struct bio *bio)
{
	struct cblb_snapshot *s = bio->bi_bdev->bd_disk->private_data;
	struct bvec_iter iter = bio->bi_iter;

	if (bio_op(bio) != REQ_OP_READ) {
		if (op_is_flush(bio->bi_opf) && !bio_sectors(bio))
			bio_endio(bio);
		else
			bio_io_error(bio);
		return;
	}
	if (READ_ONCE(s->state) != CBLB_ACTIVE) {
		bio_io_error(bio);
		return;
	}
	while (iter.bi_size) {
		u64 chunk = sector_to_chunk(iter.bi_sector);
		sector_t end = chunk_to_sector(chunk + 1);
		unsigned int bytes = min_t(u64, iter.bi_size,
					   (end - iter.bi_sector) << SECTOR_SHIFT);

		snap_read_piece(s, bio, &iter, bytes);
	}
	bio_endio(bio);
}

static const struct block_device_operations cblb_snap_fops = {
	.owner = THIS_MODULE,
	.submit_bio = cblb_snap_submit_bio,
};

bool cblb_is_snapimage(struct gendisk *disk)
{
	return disk && disk->fops == &cblb_snap_fops;
}

int cblb_snapimage_create(struct cblb_snapshot *s)
{
	struct gendisk *disk;
	int err;

	err = bioset_init(&s->read_bs, BIO_POOL_SIZE, offsetof(struct cblb_clone, bio), 0);
	if (err)
		return err;
	disk = cblb_alloc_disk(s->origin_lbs);
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
	err = add_disk(disk);
	if (err)
		goto fail_add;
	s->disk = disk;
	return 0;

fail_add:
	put_disk(disk);
fail_disk:
	bioset_exit(&s->read_bs);
	return err;
}

void cblb_snapimage_destroy(struct cblb_snapshot *s)
{
	if (!s->disk)
		return;
	del_gendisk(s->disk);
	put_disk(s->disk);
	s->disk = NULL;
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
