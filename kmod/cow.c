// SPDX-License-Identifier: GPL-2.0
/*
 * Copy-on-write: before an origin write lands on a chunk, the chunk's old data is read
 * from the origin and written to the next free slot of the temp files; the index then
 * maps the chunk to that slot and the write is released.
 *
 * Origin writes whose chunks are all copied pass straight through (a lock-free index
 * lookup). The others are queued in arrival order on snapshot->pending; one work item
 * per snapshot (never running twice at once) takes them in batches of up to
 * CBLB_BATCH_CHUNKS chunks: reads all of a batch's chunks at once, writes them to the
 * store at once, records them, then releases the waiting writes in order. A write to a
 * chunk already queued is queued behind it, so no write ever passes a copy in progress.
 *
 * The index is an xarray keyed by chunk / 2: each value entry holds the (slot + 1) of two
 * neighbouring chunks in 31 bits each, 0 meaning "not copied". Nothing is allocated for
 * chunks never written; a dense region costs 576 bytes of xarray node per 128 chunks,
 * 4.5 bytes per copied 4 KiB chunk.
 *
 * Lock story:
 * - pending_lock (irq-safe spinlock) protects pending; bios are queued from submitters
 *   in any context.
 * - The index has one writer (the worker); readers use xa_load() under RCU.
 * - Snapshot reads of the origin are registered by chunk range (reads.c). Before any
 *   write is released the worker waits for registered reads overlapping it; it has
 *   recorded the batch in the index first, so no new read of those chunks registers.
 *   A write to chunks already copied passes straight through only when no registered
 *   read overlaps it; otherwise it is queued like a first write, so it never passes a
 *   snapshot read that started before the copy was recorded.
 * Context: cblb_cow_intercept() runs in the submitter's context and never blocks; the
 * worker runs in process context (WQ_MEM_RECLAIM: it is on the writeback path) and
 * allocates with GFP_NOIO.
 */
#define pr_fmt(fmt) "cblb: " fmt

#include <linux/blkdev.h>
#include <linux/mm.h>
#include <linux/slab.h>
#include <linux/sort.h>
#include <linux/ktime.h>
#include "cblb.h"
#include "cblb_trace.h"

#define SLOT_BITS	31
#define SLOT_MASK	((1UL << SLOT_BITS) - 1)

u64 cblb_index_get(struct cblb_snapshot *s, u64 chunk)
{
	void *e = xa_load(&s->index, chunk >> 1);
	unsigned long v;

	if (!e)
		return 0;
	v = xa_to_value(e);
	return (chunk & 1) ? (v >> SLOT_BITS) & SLOT_MASK : v & SLOT_MASK;
}

/* Worker only: the index has a single writer, so read-modify-write needs no lock. */
static int index_set(struct cblb_snapshot *s, u64 chunk, u64 slot)
{
	void *e = xa_load(&s->index, chunk >> 1);
	unsigned long v = e ? xa_to_value(e) : 0;
	unsigned int shift = (chunk & 1) ? SLOT_BITS : 0;

	v &= ~(SLOT_MASK << shift);
	v |= (unsigned long)(slot + 1) << shift;
	if (!e)
		atomic64_inc(&s->index_entries);
	return xa_err(xa_store(&s->index, chunk >> 1, xa_mk_value(v), GFP_NOIO));
}

static bool range_copied(struct cblb_snapshot *s, sector_t rel, sector_t len)
{
	u64 c, first = sector_to_chunk(rel), last = sector_to_chunk(rel + len - 1);

	for (c = first; c <= last; c++)
		if (!cblb_index_get(s, c))
			return false;
	return true;
}

/*
 * Decide the fate of an origin write. Returns true when the bio was taken (queued for
 * the worker, or a discard completed here); false when the caller must pass it on.
 * Caller holds rcu_read_lock(); never blocks.
 */
bool cblb_cow_intercept(struct cblb_snapshot *s, struct bio *bio, sector_t rel, sector_t len)
{
	unsigned long flags;

	if (READ_ONCE(s->state) != CBLB_ACTIVE || READ_ONCE(s->dying))
		return false;
	if (range_copied(s, rel, len) &&
	    !cblb_reads_overlap(s, sector_to_chunk(rel), sector_to_chunk(rel + len - 1)))
		return false;
	if (bio_op(bio) == REQ_OP_DISCARD) {
		/*
		 * A discard is advisory: dropping it keeps the old data the snapshot still
		 * needs without copying what the filesystem no longer wants.
		 */
		bio_endio(bio);
		return true;
	}
	spin_lock_irqsave(&s->pending_lock, flags);
	bio_list_add(&s->pending, bio);
	spin_unlock_irqrestore(&s->pending_lock, flags);
	queue_work(s->wq, &s->cow_work);
	return true;
}

struct cow_io {
	atomic_t pending;
	blk_status_t status;
	struct completion done;
};

void cblb_cow_endio(struct bio *bio)
{
	struct cow_io *io = bio->bi_private;

	if (bio->bi_status)
		io->status = bio->bi_status;
	bio_put(bio);
	if (atomic_dec_and_test(&io->pending))
		complete(&io->done);
}

static void cow_io_init(struct cow_io *io)
{
	atomic_set(&io->pending, 1);
	io->status = BLK_STS_OK;
	init_completion(&io->done);
}

static blk_status_t cow_io_wait(struct cow_io *io)
{
	if (!atomic_dec_and_test(&io->pending))
		wait_for_completion_io(&io->done);
	return io->status;
}

static void cow_submit(struct cow_io *io, struct block_device *bdev, blk_opf_t opf,
		       sector_t sector, struct page *page, unsigned int off, unsigned int len,
		       struct bio_set *bs)
{
	struct bio *bio = bio_alloc_bioset(bdev, 1, opf, GFP_NOIO, bs);

	bio->bi_iter.bi_sector = sector;
	__bio_add_page(bio, page, len, off);
	bio->bi_end_io = cblb_cow_endio;
	bio->bi_private = io;
	atomic_inc(&io->pending);
	submit_bio(bio);
}

static int cmp_u64(const void *a, const void *b)
{
	u64 x = *(const u64 *)a, y = *(const u64 *)b;

	return x < y ? -1 : x > y;
}

/* Bytes of a chunk that lie inside the origin (the last chunk may be partial). */
static unsigned int chunk_bytes(struct cblb_snapshot *s, u64 chunk)
{
	sector_t left = s->origin_sectors - chunk_to_sector(chunk);

	return min_t(sector_t, left, CBLB_CHUNK_SECTORS) << SECTOR_SHIFT;
}

/* Write the batch's pages to slots first_slot.. of the store. Worker context. */
static int cow_write_store(struct cblb_snapshot *s, u64 first_slot, unsigned int n)
{
	struct cblb_store *st = &s->store;
	struct blk_plug plug;
	struct cow_io io;
	unsigned int i;
	int err;

	if (st->kind == CBLB_STORE_FILE) {
		for (i = 0; i < n; i++) {
			err = cblb_store_write_file(st, first_slot + i, s->cow_pages[i]);
			if (err) {
				cblb_fail(s, "writing a temp file in %s failed (error %d)",
					  st->catalog_name, err);
				return err;
			}
		}
		return 0;
	}
	cow_io_init(&io);
	blk_start_plug(&plug);
	for (i = 0; i < n; i++) {
		unsigned int off = 0;

		while (off < CBLB_CHUNK_SIZE) {
			sector_t sector;
			unsigned int len = cblb_store_locate(st, first_slot + i, off, &sector);

			cow_submit(&io, st->bdev, REQ_OP_WRITE, sector, s->cow_pages[i], off, len,
				   &s->cow_bs);
			off += len;
		}
	}
	blk_finish_plug(&plug);
	if (cow_io_wait(&io) != BLK_STS_OK) {
		cblb_fail(s, "writing a temp file in %s failed (I/O error)", st->catalog_name);
		return -EIO;
	}
	return 0;
}

/* Copy the batch's chunks to the store and record them. Worker context. */
static int cow_copy_batch(struct cblb_snapshot *s, unsigned int n)
{
	struct cblb_store *st = &s->store;
	u64 *chunks = s->batch_chunks, first_slot;
	struct blk_plug plug;
	struct cow_io io;
	ktime_t t0 = ktime_get();
	unsigned int i;
	int err;

	if (!n)
		return 0;
	sort(chunks, n, sizeof(*chunks), cmp_u64, NULL);
	err = cblb_store_alloc(st, n, &first_slot);
	if (err)
		return err;

	cow_io_init(&io);
	blk_start_plug(&plug);
	for (i = 0; i < n; i++)
		cow_submit(&io, s->origin.bdev, REQ_OP_READ, chunk_to_sector(chunks[i]),
			   s->cow_pages[i], 0, chunk_bytes(s, chunks[i]), &s->cow_bs);
	blk_finish_plug(&plug);
	if (cow_io_wait(&io) != BLK_STS_OK) {
		cblb_fail(s, "reading the origin's old data failed (I/O error)");
		return -EIO;
	}

	err = cow_write_store(s, first_slot, n);
	if (err)
		return err;

	for (i = 0; i < n; i++) {
		err = index_set(s, chunks[i], first_slot + i);
		if (err) {
			cblb_fail(s, "out of memory for the copied-chunk index");
			return err;
		}
	}
	atomic64_add(n, &s->cow_chunks);
	/* Snapshot reads that saw these chunks uncopied finish before the writes go:
	 * release_ready() waits for them, write by write. */
	trace_cblb_cow(s->name, n, (u64)n << CBLB_CHUNK_SHIFT,
		       ktime_to_ns(ktime_sub(ktime_get(), t0)));
	return 0;
}

static bool batch_has(const u64 *chunks, unsigned int n, u64 c)
{
	unsigned int i;

	for (i = n; i > 0; i--)
		if (chunks[i - 1] == c)
			return true;
	return false;
}

/*
 * The chunks [*first, *last] of the origin that bio touches; false when it touches none
 * (it was clamped away, or the origin range moved).
 */
static bool bio_chunks(struct cblb_snapshot *s, struct bio *bio, u64 *first, u64 *last)
{
	sector_t rel = bio->bi_iter.bi_sector, len = bio_sectors(bio);

	if (!bio_flagged(bio, BIO_REMAPPED))
		rel += bio->bi_bdev->bd_start_sect;
	/* clamp to the origin, as the tracker did */
	if (rel < s->origin_start) {
		len -= min(len, s->origin_start - rel);
		rel = s->origin_start;
	}
	rel -= s->origin_start;
	len = min(len, s->origin_sectors - min(rel, s->origin_sectors));
	if (!len)
		return false;
	*first = sector_to_chunk(rel);
	*last = sector_to_chunk(rel + len - 1);
	return true;
}

/*
 * Pass the writes on, each once no snapshot read of its chunks that began before they
 * were recorded as copied is in flight.
 */
static void release_ready(struct cblb_snapshot *s, struct bio_list *list)
{
	struct bio *bio;
	u64 first, last;

	while ((bio = bio_list_pop(list))) {
		if (bio_chunks(s, bio, &first, &last))
			cblb_reads_wait(s, first, last);
		cblb_pass_bio(bio);
	}
}

static bool cow_live(struct cblb_snapshot *s)
{
	return READ_ONCE(s->state) == CBLB_ACTIVE && !READ_ONCE(s->dying);
}

static void cow_work_fn(struct work_struct *work)
{
	struct cblb_snapshot *s = container_of(work, struct cblb_snapshot, cow_work);
	struct bio_list todo, ready;
	struct bio *bio;
	unsigned int n = 0;

	bio_list_init(&ready);
	for (;;) {
		spin_lock_irq(&s->pending_lock);
		todo = s->pending;
		bio_list_init(&s->pending);
		spin_unlock_irq(&s->pending_lock);
		if (bio_list_empty(&todo))
			break;

		while ((bio = bio_list_pop(&todo))) {
			u64 c, last;

			if (!cow_live(s) || !bio_chunks(s, bio, &c, &last)) {
				bio_list_add(&ready, bio);
				continue;
			}
			while (c <= last) {
				if (!cow_live(s))
					break;
				if (cblb_index_get(s, c) || batch_has(s->batch_chunks, n, c)) {
					c++;
					continue;
				}
				if (n == CBLB_BATCH_CHUNKS) {
					cow_copy_batch(s, n);
					n = 0;
					release_ready(s, &ready);
					continue;
				}
				s->batch_chunks[n++] = c++;
			}
			bio_list_add(&ready, bio);
		}
		if (cow_live(s))
			cow_copy_batch(s, n);
		n = 0;
		release_ready(s, &ready);
	}
}

/* Release every queued write; used when the snapshot fails or goes away. */
void cblb_cow_drain(struct cblb_snapshot *s)
{
	if (s->wq) {
		queue_work(s->wq, &s->cow_work);
		flush_workqueue(s->wq);
	}
}

int cblb_cow_init(struct cblb_snapshot *s)
{
	unsigned int i;
	int err;

	xa_init(&s->index);
	spin_lock_init(&s->pending_lock);
	bio_list_init(&s->pending);
	INIT_WORK(&s->cow_work, cow_work_fn);

	s->batch_chunks = kcalloc(CBLB_BATCH_CHUNKS, sizeof(u64), GFP_KERNEL);
	if (!s->batch_chunks)
		return -ENOMEM;
	s->cow_pages = kcalloc(CBLB_BATCH_CHUNKS, sizeof(struct page *), GFP_KERNEL);
	if (!s->cow_pages) {
		err = -ENOMEM;
		goto fail_pages_array;
	}
	for (i = 0; i < CBLB_BATCH_CHUNKS; i++) {
		s->cow_pages[i] = alloc_page(GFP_KERNEL);
		if (!s->cow_pages[i]) {
			err = -ENOMEM;
			goto fail_pages;
		}
	}
	err = bioset_init(&s->cow_bs, CBLB_BATCH_CHUNKS * 2, 0, BIOSET_NEED_BVECS);
	if (err)
		goto fail_pages;
	s->wq = alloc_workqueue("cblb_cow_%s", WQ_UNBOUND | WQ_MEM_RECLAIM, 1, s->name);
	if (!s->wq) {
		err = -ENOMEM;
		goto fail_wq;
	}
	return 0;

fail_wq:
	bioset_exit(&s->cow_bs);
fail_pages:
	for (i = 0; i < CBLB_BATCH_CHUNKS; i++)
		if (s->cow_pages[i])
			__free_page(s->cow_pages[i]);
	kfree(s->cow_pages);
	s->cow_pages = NULL;
fail_pages_array:
	kfree(s->batch_chunks);
	s->batch_chunks = NULL;
	return err;
}

/* The tracker no longer sends bios here; release what is queued and free everything. */
void cblb_cow_exit(struct cblb_snapshot *s)
{
	unsigned int i;

	if (!s->wq)
		return;
	WRITE_ONCE(s->dying, true);
	cblb_cow_drain(s);
	destroy_workqueue(s->wq);
	s->wq = NULL;
	bioset_exit(&s->cow_bs);
	for (i = 0; i < CBLB_BATCH_CHUNKS; i++)
		__free_page(s->cow_pages[i]);
	kfree(s->cow_pages);
	kfree(s->batch_chunks);
	xa_destroy(&s->index);
}
