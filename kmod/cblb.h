/* SPDX-License-Identifier: GPL-2.0 */
/*
 * cblb: copy-on-write snapshots of live block devices.
 *
 * The types every layer shares (struct cblb_snapshot and its parts) and layer 0
 * (state.c). Each other file's offer to the layers above it is in a header of its own
 * (store.h for store.c, ...): a file includes only headers of its own layer or below, so
 * an upward call shows as an include in review. The layers, lowest first
 * (kmod/doc/LAYERS.md, checked by tests/host/test_kmod_layers.py):
 *   0 state.c      a snapshot's state, cblb_fail(), the name rule, the command mutex
 *   1 index.c      the copied-chunk index (chunk -> slot)
 *     reads.c      snapshot reads of the origin in flight (what a copy must wait for)
 *     stack.c      does a device depend on the origin (dm, md, loop, overlayfs)?
 *     cbt.c        changed-block tracking per origin, across snapshots (doc/CBT.md)
 *   2 store.c      temp files in the catalog: creation, extent map, slot I/O
 *   3 cow.c        the copy-on-write pipeline: worker, flights, write-back (doc/COW.md)
 *   4 overlay.c    snapshot reads of origin runs with scattered copied chunks over them
 *     snapimage.c  the read-only snapshot block device /dev/<dev>
 *     tracker.c    ftrace hook on submit_bio_noacct: finds origin writes (hash by disk)
 *   5 snapsysfs.c  /sys/kernel/cblb/<dev>, whose release frees the snapshot
 *   6 registry.c   slots under total=N, create/remove
 *     start.c      start and startset: the point in time of one or several snapshots
 *   7 sysfs.c      the /sys/kernel/cblb/cmd parser
 *     main.c       module init and exit
 * Which layouts are handled and which refused: kmod/doc/LAYOUTS.md.
 *
 * Lock story (the big picture; each file details its own):
 *   cblb_cmd_lock (mutex)  slots[], the tracker hash's writers, every command.
 *                               Taken only from sysfs writes and module init/exit.
 *   tracker hash                RCU: writers hold cblb_cmd_lock, readers are
 *                               the ftrace handler and the redirected submitter.
 *   snapshot->pending_lock      (spinlock, irq-safe) the queue of origin writes that
 *                               wait for their chunks to be copied.
 *   snapshot->state_lock        (spinlock) state transitions and the error text.
 *   snapshot->read_lock         (spinlock, irq-safe) the list of snapshot reads of the
 *                               origin in flight; orders them against chunks marked
 *                               copied (reads.c).
 *   store->lock                 (spinlock) the count of ready temp files.
 *   The index (xarray) has its own lock; it has a single writer, the ordered
 *   completion workqueue of the COW pipeline (cow.c).
 *   snapshot->flight_lock       (spinlock) the free flights.
 */
#ifndef CBLB_H
#define CBLB_H

#include <linux/types.h>
#include <linux/blkdev.h>
#include <linux/bio.h>
#include <linux/kobject.h>
#include <linux/xarray.h>
#include <linux/workqueue.h>
#include <linux/wait.h>
#include <linux/path.h>
#include <linux/uuid.h>
#include "compat.h"

#define CBLB_VERSION		"0.17.0"
#define CBLB_NAME_MAX		31
#define CBLB_TOTAL_MAX		255
/* Members of one "startset" (doc/SETS.md). */
#define CBLB_SET_MAX		16
#define CBLB_MAX_FILES		4096
#define CBLB_MIN_FILE_BLOCKS	8

#define CBLB_CHUNK_SHIFT	12
#define CBLB_CHUNK_SIZE		(1U << CBLB_CHUNK_SHIFT)
#define CBLB_CHUNK_SECTORS	(CBLB_CHUNK_SIZE >> SECTOR_SHIFT)
/* Chunks copied per batch (one flight): 1 MiB. */
#define CBLB_BATCH_CHUNKS	256
/* Chunks one origin clone of a snapshot read covers at most (1 MiB). */
#define CBLB_READ_RUN		256
/* Batches in the air at once per snapshot: caps staged copies at 4 MiB (doc/COW.md).
 * One flight's pages are allocated at start, the others when writes need them. */
#define CBLB_FLIGHTS		4
/*
 * The preparer keeps the next whole temp file, and at least 16 MiB, ready ahead; 64 MiB
 * when the catalog shares the origin's disk, where creating a file can wait for the
 * origin's journal, whose writes wait for free slots (see store.c).
 */
#define CBLB_AHEAD_CHUNKS	4096
#define CBLB_AHEAD_CHUNKS_SHARED	16384
/* How often the store looks whether the writer of "start" has gone (store.c). */
#define CBLB_MM_WATCH		(5 * HZ)
/* start waits this long for writes sent before the instant to leave a bio-based origin. */
#define CBLB_DRAIN_WAIT_MS	10000
/* The COW worker, short of memory for index nodes, tries again after this long. */
#define CBLB_INDEX_RETRY_MS	10
/* remove waits this long for a passing probe (udev, blkid) to close the snapshot disk. */
#define CBLB_REMOVE_WAIT_MS	2000
/* Slots are stored +1 in 31 bits of the index: the store holds at most 2^31 - 2 chunks. */
#define CBLB_MAX_SLOTS		((1ULL << 31) - 2)

static inline sector_t chunk_to_sector(u64 chunk)
{
	return chunk << (CBLB_CHUNK_SHIFT - SECTOR_SHIFT);
}

static inline u64 sector_to_chunk(sector_t sector)
{
	return sector >> (CBLB_CHUNK_SHIFT - SECTOR_SHIFT);
}

/**
 * enum cblb_state - life of a snapshot.
 * @CBLB_CREATED: registered by "create"; origin opened, nothing tracked.
 * @CBLB_ACTIVE:  "start" done: origin writes are copied first, /dev/<dev> serves reads.
 * @CBLB_FAILED:  the store filled up or a copy failed: origin writes pass untouched,
 *                snapshot reads fail with EIO, "remove" still cleans up.
 *
 * 0 -> CREATED -> ACTIVE -> FAILED; "remove" ends any state.
 */
enum cblb_state {
	CBLB_CREATED,
	CBLB_ACTIVE,
	CBLB_FAILED,
};

const char *cblb_state_name(enum cblb_state state);

/*
 * One batch of copied chunks, from the origin read until its slots are on disk
 * (doc/COW.md). While on snapshot->flights (under read_lock) its pages serve snapshot
 * reads of its chunks.
 */
struct cblb_flight {
	struct list_head node;		/* snapshot->flights (read_lock) or free (flight_lock) */
	struct cblb_snapshot *snap;
	unsigned int n;
	u64 top;			/* while filling: the largest chunk in chunks[] */
	u64 first_slot;			/* chunks[i] is in slot first_slot + i */
	atomic_t pending;		/* store writes in the air, +1 while submitting */
	blk_status_t status;
	struct work_struct write_work;	/* write_wq: send the store writes */
	struct work_struct done_work;
	u64 chunks[CBLB_BATCH_CHUNKS];	/* sorted */
	struct page *pages[CBLB_BATCH_CHUNKS];
};

/*
 * A snapshot read of origin chunks [first, last] in flight, see reads.c. An overlaid run
 * (overlay.c) reads some of them from the store: bit i of copied set means chunk first + i
 * is not read from the origin. NULL: every chunk is.
 */
struct cblb_read_range {
	struct list_head node;		/* Protected by snapshot->read_lock */
	u64 first, last;
	const unsigned long *copied;
};

/*
 * How slots reach the catalog (kmod/doc/LAYOUTS.md): DIRECT bios to the extents of
 * fallocated files on ext4/xfs, or FILE reads and writes through any other filesystem.
 */
enum cblb_store_kind {
	CBLB_STORE_DIRECT,
	CBLB_STORE_FILE,
};

/* One contiguous run of a temp file on the store device. */
struct cblb_extent {
	u64 offset;	/* byte offset in the file */
	u64 len;	/* bytes */
	sector_t sector;/* first sector on the store device */
};

struct cblb_store_file {
	struct file *file;
	bool named;			/* has a name in the catalog until cblb_store_started() */
	char name[CBLB_NAME_MAX + 24];
	unsigned int nr_extents;
	struct cblb_extent *extents;	/* sorted by offset, covering the whole file */
};

struct cblb_store {
	struct path catalog;		/* pinned at start: files are opened relative to it */
	char *catalog_name;
	enum cblb_store_kind kind;
	struct block_device *bdev;	/* DIRECT: the catalog filesystem's device */
	bool on_origin;			/* DIRECT: bdev overlaps the origin; whole store made
					 * before the freeze, see LAYOUTS.md */
	struct workqueue_struct *read_wq;	/* FILE: snapshot reads of copied chunks */
	struct block_device *home;	/* where the store's data lands (DIRECT: bdev; FILE:
					 * the real filesystem's device, NULL for tmpfs/NFS) */
	struct super_block *home_sb;	/* FILE: the real filesystem (pinned by the files) */
	u64 file_chunks;		/* slots in one temp file */
	u64 file_bytes;
	unsigned int max_files;
	/* files[i] is published with smp_store_release once ready, then never changes. */
	struct cblb_store_file **files;
	spinlock_t lock;
	unsigned int nr_ready;		/* Protected by lock */
	unsigned int nr_preparing;	/* Protected by lock */
	int prepare_error;		/* Protected by lock */
	wait_queue_head_t ready_wq;
	u64 next_slot;			/* Owned by the COW worker */
	struct mutex mm_lock;
	struct mm_struct *mm;		/* Protected by mm_lock; FIEMAP's user buffer, store.c */
	bool mm_empty;			/* Protected by mm_lock; unmapped, its writer gone */
	struct delayed_work mm_work;	/* the watch that empties or releases mm */
	struct work_struct prepare_work;
	struct cblb_snapshot *snap;
};

struct cblb_snapshot {
	struct kobject kobj;
	char name[CBLB_NAME_MAX + 1];
	char *origin_path;
	int slot;

	/* origin */
	struct cblb_bdev origin;
	dev_t origin_dev;
	struct gendisk *origin_disk;
	sector_t origin_start;		/* absolute first sector on origin_disk */
	sector_t origin_sectors;
	unsigned int origin_lbs;

	/* state */
	spinlock_t state_lock;
	enum cblb_state state;		/* Protected by state_lock; READ_ONCE for a peek */
	char error[160];		/* Protected by state_lock */
	bool dying;			/* set by remove before the worker's last run */
	u64 start_time_ns;		/* the point in time (a set's: the same in each member) */
	u64 start_latency_us;
	u64 frozen_us;			/* first freeze to last thaw of its start */
	const char *freeze;
	char set_name[CBLB_NAME_MAX + 1];	/* "" unless started by startset; written
						 * under cblb_cmd_lock by start.c */

	/* tracker: in the hash while started, see tracker.c */
	struct hlist_node hash_node;
	bool tracked;			/* Protected by cblb_cmd_lock */
	u64 gate_seq;			/* tracked once cblb_gate_open >= gate_seq (start.c);
					 * written before the snapshot enters the hash */

	/* changed-block tracking of the origin, see cbt.c; set at create */
	struct cblb_cbt *cbt;
	uuid_t cbt_generation;		/* written by start under cblb_cmd_lock */
	u64 cbt_sequence;		/* this start's; 0 before */
	u64 cbt_changed;		/* bits set in the map this start froze */
	bool cbt_ready;			/* the frozen map is final; under the cbt's lock */

	/* copy-on-write, see cow.c */
	spinlock_t pending_lock;
	struct bio_list pending;	/* Protected by pending_lock */
	struct workqueue_struct *wq;	/* the worker: one at a time */
	struct workqueue_struct *done_wq;	/* ordered: flights landing, index writes */
	struct workqueue_struct *write_wq;	/* ordered: flights' store writes sent */
	struct work_struct cow_work;
	struct xarray index;		/* chunk pair -> two (slot + 1) values, see index.c */
	atomic64_t cow_chunks;
	atomic64_t index_entries;
	struct cblb_flight *flight_mem[CBLB_FLIGHTS];
	spinlock_t flight_lock;
	struct list_head free_flights;	/* Protected by flight_lock */
	unsigned int nr_free_flights;	/* Protected by flight_lock */
	unsigned int nr_flights;	/* flights with pages; grown by the worker only */
	wait_queue_head_t flight_wq;
	struct list_head flights;	/* staged, Protected by read_lock */
	struct bio_set cow_bs;

	/* snapshot reads in flight, see reads.c */
	spinlock_t read_lock;
	struct list_head reads;		/* Protected by read_lock */
	bool reads_closed;		/* Protected by read_lock: remove has begun */
	atomic_t nr_clones;
	wait_queue_head_t read_wq;

	/* the snapshot device */
	struct gendisk *disk;
	struct bio_set read_bs;
	struct bio_set overlay_bs;	/* origin reads of overlaid runs, see overlay.c */
	struct page *sink_page;		/* where they read copied chunks; never looked at */
	bool overlay_ok;		/* the origin reads no page back after a read */

	/* Protects store's lifetime (init, a failed start's exit) against sysfs show(). */
	struct mutex store_mutex;
	struct cblb_store store;
};

/* state.c (layer 0: every layer may call these; kmod/doc/LAYERS.md) */
extern struct mutex cblb_cmd_lock;
void cblb_fail(struct cblb_snapshot *s, const char *fmt, ...) __printf(2, 3);
void cblb_set_state(struct cblb_snapshot *s, enum cblb_state new);
bool cblb_valid_name(const char *name);
void cblb_pass_bio(struct bio *bio);

static inline bool cblb_snapshot_active(struct cblb_snapshot *s)
{
	return READ_ONCE(s->state) == CBLB_ACTIVE;
}

/* Is disk one of this module's snapshot disks (snapimage.c, the only disks it makes)? */
static inline bool cblb_is_snapimage(struct gendisk *disk)
{
	return disk && disk->fops->owner == THIS_MODULE;
}

#endif /* CBLB_H */
