// SPDX-License-Identifier: GPL-2.0
/*
 * Overlaid snapshot reads: a run of a snapshot read that starts and ends at uncopied
 * chunks, with scattered copied chunks between, goes to the origin as one bio whose pages
 * are the parent's, except at the copied chunks, where it reads into the snapshot's sink
 * page; the copied chunks are read from the store straight into the parent's pages. Why
 * and which runs: kmod/doc/COW.md, "Overlaid runs".
 *
 * Lock story:
 * - The run is built lock-free from one walk of the index, whose entries never go away.
 * - Under snapshot->read_lock it is decided for good, as snapimage.c decides a plain origin
 *   run: reads open, each chunk the build took as uncopied still neither in the index nor
 *   staged (else the run is cut before it), the run registered in the reads in flight
 *   (reads.c) and counted once in nr_clones.
 * - struct cblb_overlay (the origin bio's front pad) belongs to the run's bios: pending
 *   counts them (+1 while submitting); whoever drops it to zero completes the piece.
 * - The registered range marks the copied chunks (ov->copied): origin writes to them do not
 *   wait for this read, only writes to its uncopied chunks do (reads.c).
 * Context: cblb_overlay_read() runs in the snapshot device's submit_bio (may sleep for a
 * bio from a mempool, never for I/O); completions run in any context.
 */
#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/bitmap.h>
#include <linux/slab.h>
#include "cblb.h"
#include "index.h"
#include "reads.h"
#include "store.h"
#include "cow.h"
#include "overlay.h"

/* Copied chunks in a row that still ride in one origin bio; a longer stretch ends it. */
#define CBLB_OVERLAY_STRETCH	16

struct cblb_overlay {
	struct cblb_snapshot *snap;
	struct bio *parent;
	atomic_t pending;		/* bios in the air, +1 while submitting */
	blk_status_t status;
	struct cblb_read_range range;	/* in snap->reads until the origin bio completes */
	DECLARE_BITMAP(copied, CBLB_READ_RUN);	/* bit i: chunk range.first + i is read
						 * from the store (into the sink here) */
	struct bio bio;			/* the origin read; last: the bio_set's front_pad */
};

/*
 * A bio of the run is done. The last one completes the parent's piece; the snapshot may
 * be freed once cblb_reads_end() has run (remove waits for nr_clones), so that comes
 * last, after the origin bio (and ov with it) went back to its bio_set.
 */
static void overlay_put(struct cblb_overlay *ov)
{
	struct cblb_snapshot *s = ov->snap;
	struct bio *parent = ov->parent;
	blk_status_t status;

	if (!atomic_dec_and_test(&ov->pending))
		return;
	status = READ_ONCE(ov->status);
	bio_put(&ov->bio);
	cblb_read_piece_done(parent, status);
	cblb_reads_end(s);
}

static void overlay_origin_endio(struct bio *bio)
{
	struct cblb_overlay *ov = container_of(bio, struct cblb_overlay, bio);
	blk_status_t status = bio->bi_status;

	/* as for any origin read: a snapshot that failed meanwhile no longer holds writes back */
	if (!status && !cblb_snapshot_active(ov->snap))
		status = BLK_STS_IOERR;
	if (status)
		WRITE_ONCE(ov->status, status);
	cblb_reads_forget(ov->snap, &ov->range);
	overlay_put(ov);		/* the bio itself is put with the last one */
}

static void overlay_store_endio(struct bio *bio)
{
	struct cblb_overlay *ov = bio->bi_private;

	if (bio->bi_status)
		WRITE_ONCE(ov->status, bio->bi_status);
	bio_put(bio);
	overlay_put(ov);
}

/* Add bytes of parent's pages at *pit to bio; advance *pit. False when bio is full. */
static bool overlay_add_parent(struct bio *bio, struct bio *parent, struct bvec_iter *pit,
			       unsigned int bytes)
{
	while (bytes) {
		struct bio_vec bv = bio_iter_iovec(parent, *pit);
		unsigned int len = min(bv.bv_len, bytes);

		if (bio_add_page(bio, bv.bv_page, len, bv.bv_offset) != len)
			return false;
		bio_advance_iter(parent, pit, len);
		bytes -= len;
	}
	return true;
}

/* Bytes of the read at iter up to the end of chunk c. */
static unsigned int bytes_to_end_of(struct bvec_iter *iter, u64 c)
{
	return min_t(u64, iter->bi_size,
		     (chunk_to_sector(c + 1) - iter->bi_sector) << SECTOR_SHIFT);
}

/*
 * Fill bio, lock-free, with the run from first (uncopied) on: parent's pages for uncopied
 * chunks, the sink page for copied ones (their bits set in copied, by offset from first).
 * Sets *end to the run's last uncopied chunk; returns how many copied chunks lie before it.
 */
static unsigned int overlay_build(struct cblb_snapshot *s, struct bio *bio,
				  struct bio *parent, struct bvec_iter *iter,
				  const unsigned long *present, unsigned long *copied, u64 *end)
{
	u64 first = sector_to_chunk(iter->bi_sector), c;
	u64 last = sector_to_chunk(iter->bi_sector + (iter->bi_size >> SECTOR_SHIFT) - 1);
	unsigned int k = 0, stretch = 0, len;
	struct bvec_iter pit = *iter;

	*end = first;
	last = min(last, first + CBLB_READ_RUN - 1);
	for (c = first; c <= last; c++) {
		len = bytes_to_end_of(iter, c) - (iter->bi_size - pit.bi_size);
		if (c == first || !test_bit(c - first, present)) {
			if (!overlay_add_parent(bio, parent, &pit, len))
				break;
			k += stretch;
			stretch = 0;
			*end = c;
			continue;
		}
		if (++stretch > CBLB_OVERLAY_STRETCH ||
		    bio_add_page(bio, s->sink_page, len, 0) != len)
			break;
		__set_bit(c - first, copied);
		bio_advance_iter(parent, &pit, len);
	}
	return k;
}

/*
 * Under read_lock: is the run still [first, *end]? A chunk built as uncopied that is now
 * copied or staged cuts it before that chunk, at the last uncopied one. False when first
 * itself is taken now, or reads are closed.
 */
static bool overlay_decide(struct cblb_snapshot *s, u64 first, u64 *end,
			   const unsigned long *copied)
{
	unsigned int n = *end - first + 1, cut, i;
	DECLARE_BITMAP(taken, CBLB_READ_RUN);

	lockdep_assert_held(&s->read_lock);
	if (s->reads_closed)
		return false;
	/* Walked again under the lock, not the build's map: a chunk may have entered the
	 * index, and its flight left the list, since; it would be in neither map. */
	cblb_cow_taken_map(s, first, n, taken);
	bitmap_andnot(taken, taken, copied, n);	/* copied chunks stay in the index */
	cut = find_first_bit(taken, n);
	if (!cut)
		return false;
	if (cut < n) {
		for (i = cut - 1; test_bit(i, copied); i--)
			;	/* bit 0 (first) is never copied */
		*end = first + i;
	}
	return true;
}

/*
 * Read the run's copied chunks (strictly between first and end) from the store into the
 * parent's pages: neighbours whose slots follow each other on the store share a clone.
 */
static void overlay_read_copies(struct cblb_snapshot *s, struct cblb_overlay *ov,
				struct bvec_iter *iter, u64 end, const unsigned long *copied)
{
	u64 first = sector_to_chunk(iter->bi_sector), c;
	struct bvec_iter pit = *iter, at;
	struct bio *clone = NULL;
	unsigned int off, len;
	sector_t sector;

	bio_advance_iter(ov->parent, &pit, bytes_to_end_of(iter, first));
	for (c = first + 1; c < end; c++, bio_advance_iter(ov->parent, &pit, CBLB_CHUNK_SIZE)) {
		if (!test_bit(c - first, copied)) {
			if (clone)
				submit_bio_noacct(clone);
			clone = NULL;
			continue;
		}
		for (off = 0; off < CBLB_CHUNK_SIZE; off += len) {
			len = cblb_store_locate(&s->store, cblb_index_get(s, c) - 1, off, &sector);
			if (clone && bio_end_sector(clone) == sector) {
				clone->bi_iter.bi_size += len;
				continue;
			}
			if (clone)
				submit_bio_noacct(clone);
			clone = bio_alloc_clone(s->store.bdev, ov->parent, GFP_NOIO, &s->read_bs);
			at = pit;
			bio_advance_iter(ov->parent, &at, off);
			clone->bi_iter = at;
			clone->bi_iter.bi_sector = sector;
			clone->bi_iter.bi_size = len;
			clone->bi_end_io = overlay_store_endio;
			clone->bi_private = ov;
			atomic_inc(&ov->pending);
		}
	}
	if (clone)
		submit_bio_noacct(clone);
}

/*
 * The chunks of the run at iter from first on (at most CBLB_READ_RUN) that are in the
 * index, in present (bit i: chunk first + i), by one walk; their number is returned.
 */
static unsigned int overlay_lookup(struct cblb_snapshot *s, struct bvec_iter *iter, u64 first,
				   unsigned long *present)
{
	u64 last = sector_to_chunk(iter->bi_sector + (iter->bi_size >> SECTOR_SHIFT) - 1);
	unsigned int n = min_t(u64, last - first + 1, CBLB_READ_RUN);

	bitmap_zero(present, n);
	cblb_index_present(s, first, n, present);
	return n;
}

/*
 * Send the run of parent that starts at *iter as an overlaid run, and advance *iter past
 * it. False (nothing sent, *iter untouched) when the run does not start at an uncopied
 * chunk or holds no copied chunk: the caller cuts it the plain way.
 */
bool cblb_overlay_read(struct cblb_snapshot *s, struct bio *parent, struct bvec_iter *iter)
{
	u64 first = sector_to_chunk(iter->bi_sector), end;
	DECLARE_BITMAP(present, CBLB_READ_RUN);
	struct cblb_overlay *ov;
	unsigned long flags;
	struct bio *bio;
	unsigned int n;

	if (!s->overlay_ok || s->store.kind != CBLB_STORE_DIRECT)
		return false;
	/* Worth it only from an uncopied chunk with a copied one before the run's last
	 * chunk: a run over unchanged chunks takes no bio. */
	n = overlay_lookup(s, iter, first, present);
	if (test_bit(0, present) || find_next_bit(present, n - 1, 1) >= n - 1)
		return false;
	/*
	 * Never waits: the run's store clones come from read_bs and complete it, and they may
	 * sit on this task's bio list unsent while it waits (the rescuer punts only the pool
	 * it waits on). Without a bio now, the run takes the plain path.
	 */
	bio = cblb_bio_alloc(s->origin.bdev, BIO_MAX_VECS, parent->bi_opf,
			     GFP_NOWAIT | __GFP_NOWARN, &s->overlay_bs);
	if (!bio)
		return false;
	ov = container_of(bio, struct cblb_overlay, bio);
	bio->bi_iter.bi_sector = iter->bi_sector;
	bio->bi_ioprio = parent->bi_ioprio;
	bio_clone_blkg_association(bio, parent);
	bitmap_zero(ov->copied, CBLB_READ_RUN);
	if (!overlay_build(s, bio, parent, iter, present, ov->copied, &end))
		goto plain;

	spin_lock_irqsave(&s->read_lock, flags);
	if (!overlay_decide(s, first, &end, ov->copied)) {
		spin_unlock_irqrestore(&s->read_lock, flags);
		goto plain;
	}
	cblb_reads_begin(s, &ov->range, first, end, ov->copied);
	atomic_inc(&s->nr_clones);
	spin_unlock_irqrestore(&s->read_lock, flags);

	ov->snap = s;
	ov->parent = parent;
	ov->status = BLK_STS_OK;
	atomic_set(&ov->pending, 2);		/* the origin bio, and submission */
	bio->bi_iter.bi_size = bytes_to_end_of(iter, end);	/* the rest of its pages unused */
	bio->bi_end_io = overlay_origin_endio;
	bio_inc_remaining(parent);
	submit_bio_noacct(bio);
	overlay_read_copies(s, ov, iter, end, ov->copied);
	bio_advance_iter(parent, iter, bytes_to_end_of(iter, end));
	overlay_put(ov);
	return true;

plain:
	bio_put(bio);
	return false;
}

/*
 * Origins that read a page back after the device filled it (a bio-based driver such as
 * dm-integrity or dm-crypt with authenticated encryption, or a disk verifying protection
 * information) would see several chunks land in the one sink page: their reads of
 * snapshots take the plain path.
 */
static bool overlay_origin_ok(struct block_device *bdev)
{
	return queue_is_mq(bdev_get_queue(bdev)) && !bdev_get_integrity(bdev);
}

int cblb_overlay_init(struct cblb_snapshot *s)
{
	int err;

	s->overlay_ok = overlay_origin_ok(s->origin.bdev);

	s->sink_page = alloc_page(GFP_KERNEL);
	if (!s->sink_page)
		return -ENOMEM;
	/* several bios per read inside one submit_bio: the rescuer keeps them moving */
	err = bioset_init(&s->overlay_bs, BIO_POOL_SIZE, offsetof(struct cblb_overlay, bio),
			  BIOSET_NEED_BVECS | BIOSET_NEED_RESCUER);
	if (err)
		goto fail_bs;
	return 0;

fail_bs:
	__free_page(s->sink_page);
	s->sink_page = NULL;
	return err;
}

void cblb_overlay_exit(struct cblb_snapshot *s)
{
	bioset_exit(&s->overlay_bs);
	__free_page(s->sink_page);
	s->sink_page = NULL;
}
