/*
 * trace_bpf.c: the BPF side of `cblb trace` (loaded by cblb/trace.py with
 * BPF(src_file=...)).  Tracepoints only, no kprobes:
 *
 *   block:block_rq_issue -> block:block_rq_complete   request latency per disk, split
 *                                                     into reads and writes
 *   cblb:cblb_cow / cblb_file / cblb_state            the module's copy-on-write work
 *
 * Every map holds cumulative counters; user space subtracts two samples to get an
 * interval, so nothing here is ever cleared while tracing runs.
 *
 * Compile-time parameters (cflags, set by cblb/trace.py):
 *   FILTER_DEV      kernel dev_t (major << 20 | minor) of the disk to trace, 0 = every disk
 *   FILTER_LO/HI    sector range [LO, HI) of a partition on that disk (HI 0 = whole disk)
 *   WITH_CBLB       1 when the cblb tracepoints exist (module loaded)
 *
 * The fields used (dev, sector, nr_sector, rwbs) exist with these names in the block
 * tracepoints of 6.1 and 6.12; 6.12 adds ioprio, which we do not read.
 */
#include <uapi/linux/ptrace.h>

#ifndef FILTER_DEV
#define FILTER_DEV 0
#endif
#ifndef FILTER_LO
#define FILTER_LO 0
#endif
#ifndef FILTER_HI
#define FILTER_HI 0
#endif
#ifndef WITH_CBLB
#define WITH_CBLB 0
#endif

#define OP_READ 0
#define OP_WRITE 1
#define NAME_LEN 32
#define STATE_LEN 16
#define MAX_SLOT 255

/* A request in flight: found again at completion by (disk, direction, first sector).
 * The direction is part of the key: a read and a write of the same sector can be in
 * flight together (a snapshot read going to the origin while an application writes
 * there), and keyed by sector alone the second would overwrite the first. */
struct rq_key {
	u32 dev;
	u32 op;
	u64 sector;
};

struct rq_val {
	u64 ts;
	u64 bytes;
	u32 op;
	u32 pad;
};

/* Latency histogram bucket: microseconds in log2 buckets with 8 linear sub-buckets
 * each (slot == value below 16 us), so user space can both print the classic log2
 * histogram and interpolate p50/p99 to within 1/8 of a power of two. */
struct lat_key {
	u32 dev;
	u32 op;
	u32 slot;
	u32 pad;
};

struct io_key {
	u32 dev;
	u32 op;
};

struct io_val {
	u64 count;
	u64 bytes;
	u64 ns;
};

BPF_HASH(inflight, struct rq_key, struct rq_val, 16384);
BPF_HASH(lat, struct lat_key, u64, 8192);
BPF_HASH(io, struct io_key, struct io_val, 256);

static __always_inline int rwbs_op(const char *rwbs)
{
	/* blk_fill_rwbs(): a leading 'F' is a preflush, then W/R/D(iscard)/F(lush)/N. */
	char c0 = rwbs[0], c1 = rwbs[1];

	if (c0 == 'F')
		c0 = c1;
	if (c0 == 'W')
		return OP_WRITE;
	if (c0 == 'R')
		return OP_READ;
	return -1;
}

static __always_inline int wanted(u32 dev, u64 sector)
{
	if (FILTER_DEV && dev != FILTER_DEV)
		return 0;
	if (FILTER_HI && (sector < FILTER_LO || sector >= FILTER_HI))
		return 0;
	return 1;
}

static __always_inline u32 lat_slot(u64 us)
{
	u32 l, slot;

	if (us < 16)
		return us;
	l = bpf_log2l(us);          /* floor(log2(us)) + 1, >= 5 here */
	slot = 8 + (l - 4) * 8 + ((us >> (l - 4)) & 7);
	return slot > MAX_SLOT ? MAX_SLOT : slot;
}

TRACEPOINT_PROBE(block, block_rq_issue)
{
	struct rq_key k = {};
	struct rq_val v = {};
	int op;

	if (args->nr_sector == 0)
		return 0;               /* flushes carry no data */
	if (!wanted(args->dev, args->sector))
		return 0;
	op = rwbs_op(args->rwbs);
	if (op < 0)
		return 0;
	k.dev = args->dev;
	k.op = op;
	k.sector = args->sector;
	v.ts = bpf_ktime_get_ns();
	v.bytes = (u64)args->nr_sector << 9;
	v.op = op;
	inflight.update(&k, &v);
	return 0;
}

TRACEPOINT_PROBE(block, block_rq_complete)
{
	struct rq_key k = {};
	struct rq_val *v;
	struct lat_key lk = {};
	struct io_key ik = {};
	struct io_val zero = {}, *t;
	u64 delta;
	int op;

	op = rwbs_op(args->rwbs);
	if (op < 0)
		return 0;
	k.dev = args->dev;
	k.op = op;
	k.sector = args->sector;
	v = inflight.lookup(&k);
	if (!v)
		return 0;               /* issued before we attached, or filtered out */
	delta = bpf_ktime_get_ns() - v->ts;
	lk.dev = k.dev;
	lk.op = v->op;
	lk.slot = lat_slot(delta / 1000);
	lat.increment(lk);
	ik.dev = k.dev;
	ik.op = v->op;
	t = io.lookup_or_try_init(&ik, &zero);
	if (t) {
		__sync_fetch_and_add(&t->count, 1);
		__sync_fetch_and_add(&t->bytes, v->bytes);
		__sync_fetch_and_add(&t->ns, delta);
	}
	inflight.delete(&k);
	return 0;
}

#if WITH_CBLB
struct snap_key {
	char name[NAME_LEN];
};

struct cow_val {
	u64 batches;
	u64 chunks;
	u64 bytes;
	u64 ns;
	u64 files;
	u64 file_blocks;
};

struct state_event {
	u64 ts;
	char name[NAME_LEN];
	char old[STATE_LEN];
	char new[STATE_LEN];
};

BPF_HASH(cow, struct snap_key, struct cow_val, 512);
BPF_PERF_OUTPUT(state_events);

TRACEPOINT_PROBE(cblb, cblb_cow)
{
	struct snap_key k = {};
	struct cow_val zero = {}, *c;

	TP_DATA_LOC_READ_STR(k.name, dev, NAME_LEN);
	c = cow.lookup_or_try_init(&k, &zero);
	if (c) {
		__sync_fetch_and_add(&c->batches, 1);
		__sync_fetch_and_add(&c->chunks, args->chunks);
		__sync_fetch_and_add(&c->bytes, args->bytes);
		__sync_fetch_and_add(&c->ns, args->ns);
	}
	return 0;
}

TRACEPOINT_PROBE(cblb, cblb_file)
{
	struct snap_key k = {};
	struct cow_val zero = {}, *c;

	TP_DATA_LOC_READ_STR(k.name, dev, NAME_LEN);
	c = cow.lookup_or_try_init(&k, &zero);
	if (c) {
		__sync_fetch_and_add(&c->files, 1);
		__sync_fetch_and_add(&c->file_blocks, args->blocks);
	}
	return 0;
}

TRACEPOINT_PROBE(cblb, cblb_state)
{
	struct state_event e = {};

	e.ts = bpf_ktime_get_ns();
	TP_DATA_LOC_READ_STR(e.name, dev, NAME_LEN);
	TP_DATA_LOC_READ_STR(e.old, old, STATE_LEN);
	TP_DATA_LOC_READ_STR(e.new, new, STATE_LEN);
	state_events.perf_submit(args, &e, sizeof(e));
	return 0;
}
#endif
