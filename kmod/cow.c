// SPDX-License-Identifier: GPL-2.0
/*
 * Copy-on-write: before an origin write lands on a chunk, the chunk's old data is read
 * into memory; the write then goes on, and the data is written to the store in the
 * background. The whole pipeline, step by step: kmod/doc/COW.md.
 *
 * Origin writes whose chunks are all copied (in the index, or staged in a flight) pass
 * straight through. The others are queued in arrival order on snapshot->pending; one work
 * item per snapshot (never running twice at once) gathers their chunks into a batch, reads
 * runs of consecutive chunks with one bio each into a free flight's pages, stages the
 * flight, hands the flight's store writes to write_wq, then releases the writes. A write
 * to a chunk already queued is queued behind it, so no write ever passes a copy in progress.
 *
 * Lock story:
 * - pending_lock (irq-safe spinlock) protects pending; bios are queued from submitters
 *   in any context.
 * - read_lock (irq-safe spinlock, reads.c) protects snapshot->flights. A chunk is
 *   "taken" (copied or being copied) when it is in the index or in a staged flight;
 *   both are looked at under read_lock, and a flight leaves the list (under read_lock)
 *   only after its chunks are in the index, so a chunk never looks untaken once taken.
 * - flight_lock (spinlock) protects free_flights and nr_free_flights; the worker waits
 *   on flight_wq for one. nr_flights (flights with pages) belongs to the worker.
 * - The index has one writer: done_wq, an ordered workqueue that lands flights.
 * - write_wq (ordered) sends each staged flight's store writes; a flight is on it between
 *   staging and its last store write, so the worker never waits on the store's queue.
 * - Snapshot reads of the origin are registered by chunk range (reads.c). Before any
 *   write is released the worker waits for registered reads overlapping it; the chunks
 *   are staged first, so no new read of them registers. A write to chunks already taken
 *   passes straight through only when no registered read overlaps it; otherwise it is
 *   queued like a first write, so it never passes a snapshot read that started before
 *   the copy was staged.
 * Context: cblb_cow_intercept() runs in the submitter's context and never blocks; the
 * worker, write_wq and done_wq run in process context (WQ_MEM_RECLAIM: they are on the writeback
 * path) and allocate with GFP_NOIO; store-write completions run in any context. The worker's
 * queue is bound: it runs on the CPU that queued the write (COW.md, step 1).
 */
#define pr_fmt(fmt) "cblb: " fmt

#include <linux/bitmap.h>
#include <linux/blkdev.h>
#include <linux/bsearch.h>
#include <linux/delay.h>
#include <linux/mm.h>
#include <linux/slab.h>
#include <linux/sort.h>
#include <linux/ktime.h>
#include "cblb.h"
#include "index.h"
#include "reads.h"
#include "store.h"
#include "cow.h"
#include "cblb_trace.h"

static int cmp_u64(const void *a, const void *b)
{
	u64 x = *(const u64 *)a, y = *(const u64 *)b;

	return x < y ? -1 : x > y;
}

/*
 * The page staging chunk's old data, or NULL when the chunk is not staged. Caller holds
 * read_lock, which keeps the page valid (a flight leaves the list under it).
 */
struct page *cblb_cow_staged(struct cblb_snapshot *s, u64 chunk)
{
	struct cblb_flight *f;
	u64 *p;

	lockdep_assert_held(&s->read_lock);
	list_for_each_entry(f, &s->flights, node) {
		if (chunk < f->chunks[0] || chunk > f->chunks[f->n - 1])
			continue;
		p = bsearch(&chunk, f->chunks, f->n, sizeof(u64), cmp_u64);
		if (p)
			return f->pages[p - f->chunks];
	}
	return NULL;
}

/*
 * Set bit i of map for each chunk first + i (i < n) staged in a flight; other bits are
 * left alone. Caller holds read_lock. Each flight's chunks are sorted: one binary search
 * per flight that overlaps the range.
 */
static void cow_staged_map(struct cblb_snapshot *s, u64 first, unsigned int n,
			   unsigned long *map)
{
	u64 last = first + n - 1;
	struct cblb_flight *f;
	unsigned int lo, hi, mid;

	list_for_each_entry(f, &s->flights, node) {
		if (last < f->chunks[0] || first > f->chunks[f->n - 1])
			continue;
		for (lo = 0, hi = f->n; lo < hi;) {	/* the first chunk >= first */
			mid = lo + (hi - lo) / 2;
			if (f->chunks[mid] < first)
				lo = mid + 1;
			else
				hi = mid;
		}
		for (; lo < f->n && f->chunks[lo] <= last; lo++)
			__set_bit(f->chunks[lo] - first, map);
	}
}

/*
 * Bit i of map (cleared first) set for each chunk first + i (i < n) copied or being
 * copied: in the index (one walk) or staged in a flight. Caller holds read_lock: a chunk
 * leaves its flight only once it is in the index, so none is missed by both.
 */
void cblb_cow_taken_map(struct cblb_snapshot *s, u64 first, unsigned int n, unsigned long *map)
{
	lockdep_assert_held(&s->read_lock);
	bitmap_zero(map, n);
	cblb_index_present(s, first, n, map);
	cow_staged_map(s, first, n, map);
}

/* Copied or being copied. Caller holds read_lock. */
static bool chunk_taken_locked(struct cblb_snapshot *s, u64 chunk)
{
	return cblb_index_get(s, chunk) || cblb_cow_staged(s, chunk);
}

static bool chunk_taken(struct cblb_snapshot *s, u64 chunk)
{
	unsigned long flags;
	bool taken;

	if (cblb_index_get(s, chunk))
		return true;		/* an index entry never goes away */
	spin_lock_irqsave(&s->read_lock, flags);
	taken = chunk_taken_locked(s, chunk);
	spin_unlock_irqrestore(&s->read_lock, flags);
	return taken;
}

/* Is the snapshot still copying? Any context. */
static bool cow_live(struct cblb_snapshot *s)
{
	return cblb_snapshot_active(s) && !READ_ONCE(s->dying);
}

/*
 * May a write to chunks [first, last] pass now: all taken, and no snapshot read of them
 * in flight? One look under read_lock (see the lock story).
 */
static bool range_may_pass(struct cblb_snapshot *s, u64 first, u64 last)
{
	u64 c = cblb_index_first_missing(s, first, last);
	unsigned long flags;
	bool ok = true;

	if (c > last)
		return !cblb_reads_overlap(s, first, last);	/* the common rewrite */
	spin_lock_irqsave(&s->read_lock, flags);
	for (; c <= last && ok; c++)
		ok = chunk_taken_locked(s, c);
	spin_unlock_irqrestore(&s->read_lock, flags);
	return ok && !cblb_reads_overlap(s, first, last);
}

/*
 * The hook's question before it redirects an origin write of [rel, rel + len) (sectors
 * of the origin; tracker.c): may the write go on untouched, decided without a lock? Yes
 * when the snapshot no longer copies, or when every chunk the write touches is in the
 * index and no snapshot read is registered at all (the common rewrite, which then passes
 * the ftrace trampoline once). Otherwise the write is redirected and
 * cblb_cow_intercept() decides under read_lock; a false "no" costs only that.
 *
 * Why "no read registered" may be read without read_lock: the reads a rewrite must wait
 * for are the reads of its chunks' origin data that registered before the chunks were
 * staged (a later read finds them taken and reads the copy). Such a read registered
 * under read_lock before the worker staged the chunk under read_lock, and the chunk's
 * index entry was stored after that (released by the xarray's store). Having seen the
 * entry, the smp_rmb() makes this reader see the registration too, or its removal.
 * Any context; never blocks, takes no lock.
 */
bool cblb_cow_passes_unlocked(struct cblb_snapshot *s, sector_t rel, sector_t len)
{
	u64 last = sector_to_chunk(rel + len - 1);

	if (!cow_live(s))
		return true;
	if (cblb_index_first_missing(s, sector_to_chunk(rel), last) <= last)
		return false;
	smp_rmb();		/* the index entries, then the read list (see above) */
	return cblb_reads_none(s);
}

/*
 * Decide the fate of an origin write. Returns true when the bio was taken (queued for
 * the worker, or a discard completed here); false when the caller must pass it on.
 * Caller holds rcu_read_lock(); never blocks.
 */
bool cblb_cow_intercept(struct cblb_snapshot *s, struct bio *bio, sector_t rel, sector_t len)
{
	unsigned long flags;

	if (!cow_live(s))
		return false;
	if (range_may_pass(s, sector_to_chunk(rel), sector_to_chunk(rel + len - 1)))
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

static void release_ready(struct cblb_snapshot *s, struct bio_list *list);

/* ---- reading the old data ---- */

struct cow_read {
	atomic_t pending;
	blk_status_t status;
	struct completion done;
};

static void cow_read_endio(struct bio *bio)
{
	struct cow_read *rd = bio->bi_private;

	if (bio->bi_status)
		rd->status = bio->bi_status;
	bio_put(bio);
	if (atomic_dec_and_test(&rd->pending))
		complete(&rd->done);
}

/* Bytes of a chunk that lie inside the origin (the last chunk may be partial). */
static unsigned int chunk_bytes(struct cblb_snapshot *s, u64 chunk)
{
	sector_t left = s->origin_sectors - chunk_to_sector(chunk);

	return min_t(sector_t, left, CBLB_CHUNK_SECTORS) << SECTOR_SHIFT;
}

/* Read the flight's chunks from the origin: one bio per run of consecutive chunks. */
static int cow_read_flight(struct cblb_snapshot *s, struct cblb_flight *f)
{
	struct cow_read rd;
	struct blk_plug plug;
	unsigned int i = 0, j;

	atomic_set(&rd.pending, 1);
	rd.status = BLK_STS_OK;
	init_completion(&rd.done);
	blk_start_plug(&plug);
	while (i < f->n) {
		struct bio *bio;

		for (j = i + 1; j < f->n && j - i < BIO_MAX_VECS &&
		     f->chunks[j] == f->chunks[j - 1] + 1; j++)
			;
		bio = cblb_bio_alloc(s->origin.bdev, j - i, REQ_OP_READ | REQ_SYNC, GFP_NOIO,
				     &s->cow_bs);
		bio->bi_iter.bi_sector = chunk_to_sector(f->chunks[i]);
		for (; i < j; i++)
			__bio_add_page(bio, f->pages[i], chunk_bytes(s, f->chunks[i]), 0);
		bio->bi_end_io = cow_read_endio;
		bio->bi_private = &rd;
		atomic_inc(&rd.pending);
		submit_bio(bio);
	}
	blk_finish_plug(&plug);
	if (!atomic_dec_and_test(&rd.pending))
		wait_for_completion_io(&rd.done);
	return rd.status == BLK_STS_OK ? 0 : -EIO;
}

/* ---- flights ---- */

/* A free flight, or NULL. */
static struct cblb_flight *flight_try_get(struct cblb_snapshot *s)
{
	struct cblb_flight *f;

	spin_lock(&s->flight_lock);
	f = list_first_entry_or_null(&s->free_flights, struct cblb_flight, node);
	if (f) {
		list_del(&f->node);
		s->nr_free_flights--;
	}
	spin_unlock(&s->flight_lock);
	return f;
}

/*
 * Give the next flight its pages, if memory is at hand now (never waits for reclaim:
 * the worker is on the writeback path). Worker only: flights get pages in order.
 */
static bool flight_grow(struct cblb_snapshot *s)
{
	struct cblb_flight *f;
	unsigned int j;

	if (s->nr_flights == CBLB_FLIGHTS)
		return false;
	f = s->flight_mem[s->nr_flights];
	for (j = 0; j < CBLB_BATCH_CHUNKS; j++) {
		if (f->pages[j])
			continue;
		f->pages[j] = alloc_page(GFP_NOIO | __GFP_NORETRY | __GFP_NOWARN);
		if (!f->pages[j])
			return false;	/* kept for the next try; freed at exit */
	}
	s->nr_flights++;
	return true;
}

/* A free flight; waits for one to land when all are in the air. Worker only. */
static struct cblb_flight *flight_get(struct cblb_snapshot *s)
{
	struct cblb_flight *f = flight_try_get(s);

	if (!f && flight_grow(s))
		return s->flight_mem[s->nr_flights - 1];
	if (!f)
		wait_event(s->flight_wq, (f = flight_try_get(s)) != NULL);
	f->n = 0;
	f->status = BLK_STS_OK;
	return f;
}

static void flight_put(struct cblb_snapshot *s, struct cblb_flight *f)
{
	spin_lock(&s->flight_lock);
	list_add(&f->node, &s->free_flights);
	s->nr_free_flights++;
	spin_unlock(&s->flight_lock);
	wake_up_all(&s->flight_wq);
}

static bool all_landed(struct cblb_snapshot *s)
{
	bool landed;

	spin_lock(&s->flight_lock);
	landed = s->nr_free_flights == s->nr_flights;
	spin_unlock(&s->flight_lock);
	return landed;
}

/*
 * Store writes of a flight are done (or the flight never wrote): record its chunks in
 * the index, take it off the list, free it. done_wq (ordered) only.
 */
static void flight_done_fn(struct work_struct *work)
{
	struct cblb_flight *f = container_of(work, struct cblb_flight, done_work);
	struct cblb_snapshot *s = f->snap;
	struct cblb_store *st = &s->store;
	unsigned int i;
	int err = 0;

	if (st->kind == CBLB_STORE_FILE && f->status == BLK_STS_OK) {
		for (i = 0; i < f->n && !err; i++)
			err = cblb_store_write_file(st, f->first_slot + i, f->pages[i]);
		if (err)
			cblb_fail(s, "writing a temp file in %s failed (error %d)", st->catalog_name,
				  err);
	} else if (f->status != BLK_STS_OK) {
		cblb_fail(s, "writing a temp file in %s failed (I/O error)", st->catalog_name);
		err = -EIO;
	}
	for (i = 0; i < f->n && !err; i++) {
		err = cblb_index_set(s, f->chunks[i], f->first_slot + i);
		if (err)
			cblb_fail(s, "out of memory for the copied-chunk index");
	}
	spin_lock_irq(&s->read_lock);
	list_del(&f->node);
	spin_unlock_irq(&s->read_lock);
	flight_put(s, f);
}

/* A store write of a flight completed. Any context. */
void cblb_cow_endio(struct bio *bio)
{
	struct cblb_flight *f = bio->bi_private;

	if (bio->bi_status)
		f->status = bio->bi_status;
	bio_put(bio);
	if (atomic_dec_and_test(&f->pending))
		queue_work(f->snap->done_wq, &f->done_work);
}

/*
 * How many pages a store write starting at piece (slot i, byte off, at sector) can take:
 * the slots that follow it contiguously on the store device, at most BIO_MAX_VECS.
 */
static unsigned int store_run(struct cblb_store *st, struct cblb_flight *f, unsigned int i,
			      unsigned int off, sector_t sector)
{
	sector_t next, want;
	unsigned int len = cblb_store_locate(st, f->first_slot + i, off, &next), n = 1;

	if (off + len != CBLB_CHUNK_SIZE)
		return 1;		/* the slot goes on elsewhere */
	want = sector + (len >> SECTOR_SHIFT);
	for (i++; i < f->n && n < BIO_MAX_VECS; i++, n++) {
		len = cblb_store_locate(st, f->first_slot + i, 0, &next);
		if (next != want)
			break;
		want += len >> SECTOR_SHIFT;
		if (len != CBLB_CHUNK_SIZE) {
			n++;
			break;
		}
	}
	return n;
}

/*
 * Store writes are flagged like O_DIRECT writes (REQ_SYNC | REQ_IDLE): writeback
 * throttling (wbt) leaves those alone. As plain writes they were held to a queue depth of
 * one or two whenever the store's latency exceeded wbt's target, and the pipeline with them.
 */
#define CBLB_COPY_WRITE		(REQ_SYNC | REQ_IDLE)

/*
 * Write the flight's pages to their slots (DIRECT): pieces that are contiguous on the
 * store device share a bio. The flight lands in done_wq when the last one completes; a
 * FILE store is written there instead. Runs in write_wq, so that the COW worker never
 * waits for the store device's queue: it goes on to the next origin write at once.
 */
static void flight_write_fn(struct work_struct *work)
{
	struct cblb_flight *f = container_of(work, struct cblb_flight, write_work);
	struct cblb_snapshot *s = f->snap;
	struct cblb_store *st = &s->store;
	struct bio *bio = NULL;
	struct blk_plug plug;
	unsigned int i;

	atomic_set(&f->pending, 1);
	if (st->kind == CBLB_STORE_DIRECT) {
		blk_start_plug(&plug);
		for (i = 0; i < f->n; i++) {
			unsigned int off = 0;

			while (off < CBLB_CHUNK_SIZE) {
				sector_t sector;
				unsigned int len = cblb_store_locate(st, f->first_slot + i, off,
								     &sector);

				if (bio && (bio_end_sector(bio) != sector ||
					    bio_add_page(bio, f->pages[i], len, off) != len)) {
					submit_bio(bio);
					bio = NULL;
				}
				if (!bio) {
					bio = cblb_bio_alloc(st->bdev,
							     store_run(st, f, i, off, sector),
							     REQ_OP_WRITE | CBLB_COPY_WRITE,
							     GFP_NOIO,
							     &s->cow_bs);
					bio->bi_iter.bi_sector = sector;
					bio->bi_end_io = cblb_cow_endio;
					bio->bi_private = f;
					atomic_inc(&f->pending);
					__bio_add_page(bio, f->pages[i], len, off);
				}
				off += len;
			}
		}
		if (bio)
			submit_bio(bio);
		blk_finish_plug(&plug);
	}
	if (atomic_dec_and_test(&f->pending))
		queue_work(s->done_wq, &f->done_work);
}

/*
 * Copy the flight's chunks into memory: reserve slots, read the old data, stage the
 * flight. Worker context. True when staged: the caller sends the store writes
 * (flight_write_fn), then releases the writes. On failure the snapshot has failed and the
 * flight is free again.
 */
static bool cow_stage_flight(struct cblb_snapshot *s, struct cblb_flight *f)
{
	ktime_t t0 = ktime_get();
	unsigned int n = f->n;

	sort(f->chunks, n, sizeof(u64), cmp_u64, NULL);
	/* Room in the index now, so that landing never needs memory. Short of even a few
	 * nodes, the writes wait while reclaim goes on: they never fail for it. */
	while (cblb_index_reserve(s, f->chunks, n)) {
		if (!cow_live(s))
			goto fail;
		msleep(CBLB_INDEX_RETRY_MS);
	}
	if (cblb_store_alloc(&s->store, n, &f->first_slot))
		goto fail;		/* the store failed the snapshot */
	if (cow_read_flight(s, f)) {
		cblb_fail(s, "reading the origin's old data failed (I/O error)");
		goto fail;
	}
	spin_lock_irq(&s->read_lock);
	list_add_tail(&f->node, &s->flights);
	spin_unlock_irq(&s->read_lock);
	atomic64_add(n, &s->cow_chunks);
	trace_cblb_cow(s->name, n, (u64)n << CBLB_CHUNK_SHIFT,
		       ktime_to_ns(ktime_sub(ktime_get(), t0)));
	return true;
fail:
	flight_put(s, f);
	return false;
}

/*
 * Stage f, start its store writes (in write_wq, so they run while the worker goes on),
 * then let the writes waiting for it go. The worker does not touch f again: it may land
 * and be free before release_ready() is done.
 */
static void cow_copy_flight(struct cblb_snapshot *s, struct cblb_flight *f,
			    struct bio_list *ready)
{
	if (cow_stage_flight(s, f))
		queue_work(s->write_wq, &f->write_work);
	release_ready(s, ready);
}

/* Is c in the batch being filled? Chunks mostly come in rising order: one compare. */
static bool batch_has(const struct cblb_flight *f, u64 c)
{
	unsigned int i;

	if (!f->n || c > f->top)
		return false;
	for (i = f->n; i > 0; i--)
		if (f->chunks[i - 1] == c)
			return true;
	return false;
}

/*
 * The chunks [*first, *last] of the origin that bio touches; false when it touches none
 * (it was clamped away).
 */
static bool bio_chunks(struct cblb_snapshot *s, struct bio *bio, u64 *first, u64 *last)
{
	sector_t rel = cblb_bio_disk_sector(bio), len = bio_sectors(bio);

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
 * were staged is in flight.
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

static void cow_work_fn(struct work_struct *work)
{
	struct cblb_snapshot *s = container_of(work, struct cblb_snapshot, cow_work);
	struct cblb_flight *f = NULL;
	struct bio_list todo, ready;
	struct bio *bio;

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
			while (c <= last && cow_live(s)) {
				if ((f && batch_has(f, c)) || chunk_taken(s, c)) {
					c++;
					continue;
				}
				if (f && f->n == CBLB_BATCH_CHUNKS) {
					cow_copy_flight(s, f, &ready);
					f = NULL;
					continue;
				}
				if (!f)
					f = flight_get(s);
				if (!f->n || c > f->top)
					f->top = c;
				f->chunks[f->n++] = c++;
			}
			bio_list_add(&ready, bio);
		}
		if (f && f->n && cow_live(s)) {
			cow_copy_flight(s, f, &ready);
			f = NULL;
		}
		release_ready(s, &ready);
	}
	if (f)
		flight_put(s, f);
}

/* Release every queued write; used when the snapshot fails or goes away. */
void cblb_cow_drain(struct cblb_snapshot *s)
{
	if (s->wq) {
		queue_work(s->wq, &s->cow_work);
		flush_workqueue(s->wq);
	}
}

static void cow_free_flights(struct cblb_snapshot *s)
{
	unsigned int i, j;

	for (i = 0; i < CBLB_FLIGHTS; i++) {
		struct cblb_flight *f = s->flight_mem[i];

		if (!f)
			continue;
		for (j = 0; j < CBLB_BATCH_CHUNKS; j++)
			if (f->pages[j])
				__free_page(f->pages[j]);
		kfree(f);
		s->flight_mem[i] = NULL;
	}
}

int cblb_cow_init(struct cblb_snapshot *s)
{
	unsigned int i, j;
	int err = -ENOMEM;

	xa_init(&s->index);
	spin_lock_init(&s->pending_lock);
	bio_list_init(&s->pending);
	INIT_WORK(&s->cow_work, cow_work_fn);
	spin_lock_init(&s->flight_lock);
	INIT_LIST_HEAD(&s->free_flights);
	INIT_LIST_HEAD(&s->flights);
	init_waitqueue_head(&s->flight_wq);
	s->nr_free_flights = 0;
	s->nr_flights = 0;
	atomic64_set(&s->cow_chunks, 0);	/* a refused start may have copied some */
	atomic64_set(&s->index_entries, 0);

	/* Flights are small; their pages (1 MiB each) come as needed, the first one now. */
	for (i = 0; i < CBLB_FLIGHTS; i++) {
		struct cblb_flight *f = kzalloc(sizeof(*f), GFP_KERNEL);

		if (!f)
			goto fail_flights;
		s->flight_mem[i] = f;
		f->snap = s;
		INIT_WORK(&f->write_work, flight_write_fn);
		INIT_WORK(&f->done_work, flight_done_fn);
	}
	for (j = 0; j < CBLB_BATCH_CHUNKS; j++) {
		s->flight_mem[0]->pages[j] = alloc_page(GFP_KERNEL);
		if (!s->flight_mem[0]->pages[j])
			goto fail_flights;
	}
	s->nr_flights = 1;
	list_add(&s->flight_mem[0]->node, &s->free_flights);
	s->nr_free_flights = 1;
	err = bioset_init(&s->cow_bs, CBLB_FLIGHTS * 4, 0, BIOSET_NEED_BVECS);
	if (err)
		goto fail_flights;
	err = -ENOMEM;
	s->wq = alloc_workqueue("cblb_cow_%s", CBLB_WQ_PERCPU | WQ_MEM_RECLAIM, 1, s->name);
	if (!s->wq)
		goto fail_wq;
	s->done_wq = alloc_ordered_workqueue("cblb_done_%s", WQ_MEM_RECLAIM, s->name);
	if (!s->done_wq)
		goto fail_done_wq;
	s->write_wq = alloc_ordered_workqueue("cblb_write_%s", WQ_MEM_RECLAIM, s->name);
	if (!s->write_wq)
		goto fail_write_wq;
	return 0;

fail_write_wq:
	destroy_workqueue(s->done_wq);
	s->done_wq = NULL;
fail_done_wq:
	destroy_workqueue(s->wq);
	s->wq = NULL;
fail_wq:
	bioset_exit(&s->cow_bs);
fail_flights:
	cow_free_flights(s);
	return err;
}

/* The tracker no longer sends bios here; release what is queued, land every flight,
 * free everything. */
void cblb_cow_exit(struct cblb_snapshot *s)
{
	if (!s->wq)
		return;
	WRITE_ONCE(s->dying, true);
	cblb_cow_drain(s);
	destroy_workqueue(s->wq);
	s->wq = NULL;
	/* every flight's store writes sent; those still in the air queue their landing
	 * when they complete */
	destroy_workqueue(s->write_wq);
	s->write_wq = NULL;
	wait_event(s->flight_wq, all_landed(s));
	destroy_workqueue(s->done_wq);
	s->done_wq = NULL;
	bioset_exit(&s->cow_bs);
	cow_free_flights(s);
	xa_destroy(&s->index);
}
