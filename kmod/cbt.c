// SPDX-License-Identifier: GPL-2.0
/*
 * Changed-block tracking: per origin, which blocks were written between two starts
 * (design and interface: doc/CBT.md).
 *
 * Lock story:
 * - cbt_list and the tracking hash are changed under cblb_cmd_lock; the hash is
 *   read under RCU by the ftrace handler (cblb_cbt_mark), which never sleeps and takes
 *   no lock. A tracked origin leaves the hash, then an RCU grace period passes, before
 *   it is freed.
 * - c->state (which map is current, whether both are marked) is written under
 *   cblb_cmd_lock by start.c's rotation with release semantics and read by the
 *   handler with acquire semantics. The maps' bits are set atomically from any context;
 *   a map is cleared or re-made only while it is neither current nor marked (rotation,
 *   under cblb_cmd_lock, an RCU grace period after it stopped being marked).
 * - c->lock (mutex) protects generation and sequence, and the maps' pointers and size
 *   against sysfs readers (a restart re-makes the maps; the handler cannot see a cbt
 *   then, it is out of the hash). Taken in process context only.
 * - c->snap (the snapshot on this origin, at most one) is protected by
 *   cblb_cmd_lock; untrack is refused while it is set.
 * - c->seal (kept across a restart, doc/CBT.md): set to SEALED by the seal command
 *   under cblb_cmd_lock, then an RCU grace period; broken (SEAL_WRITTEN) by the handler
 *   with cmpxchg, from any context, by start's rotation and by a restart.
 * - c->fresh (a resume may still give this generation the saved one's place) is
 *   protected by c->lock.
 */
#define pr_fmt(fmt) "cblb: " fmt

#include <linux/bitmap.h>
#include <linux/blkdev.h>
#include <linux/hashtable.h>
#include <linux/kobject.h>
#include <linux/log2.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/rculist.h>
#include <linux/slab.h>
#include <linux/uuid.h>
#include "cblb.h"
#include "cbt.h"

/* c->state: bit 0 is the current map's index; DUAL marks the other map as well. */
#define CBT_DUAL	2
/* c->seal: no seal; sealed and nothing marked since; marked (or rotated) after the seal. */
enum { CBT_SEAL_NONE, CBT_SEALED, CBT_SEAL_WRITTEN };
/* At most 2^27 bits (16 MiB) per map, so two maps cost at most 32 MiB per origin. */
#define CBT_MAX_BITS_SHIFT	27

static DEFINE_HASHTABLE(cbt_hash, 6);	/* by gendisk; RCU, writers hold the registry lock */
static LIST_HEAD(cbt_list);		/* Protected by cblb_cmd_lock */
static struct kobject *tracking_kobj;	/* /sys/kernel/cblb/tracking; cblb_cmd_lock */
static struct kobject *tracking_parent;	/* /sys/kernel/cblb, set once by cblb_cbt_init() */

/* Where the tracking folder goes when the first origin is tracked. */
void cblb_cbt_init(struct kobject *parent)
{
	tracking_parent = parent;
}
atomic_t cblb_nr_cbt = ATOMIC_INIT(0);

struct cblb_cbt {
	struct hlist_node hash_node;	/* cbt_hash (RCU) */
	struct list_head node;		/* cbt_list (cblb_cmd_lock) */
	struct kobject kobj;
	dev_t dev;
	struct gendisk *disk;		/* referenced, and its driver module, while tracked */
	sector_t start, sectors;	/* absolute first sector on disk, length */
	u64 diskseq;
	unsigned int block_shift;	/* log2 of bytes per bit; lock for sysfs */
	unsigned long nbits;		/* lock for sysfs */
	unsigned long *map[2];		/* lock for sysfs */
	int state;			/* see above: release/acquire */
	int seal;			/* CBT_SEAL_*: see the lock story */
	struct cblb_snapshot *snap;	/* Protected by cblb_cmd_lock */
	struct mutex lock;
	uuid_t generation;		/* Protected by lock */
	u64 sequence;			/* Protected by lock */
	bool fresh;			/* no start and no resume since tracking began; lock */
};

static struct cblb_cbt *to_cbt(struct kobject *kobj)
{
	return container_of(kobj, struct cblb_cbt, kobj);
}

/* Bytes of each map: one bit per block, in whole longs. */
static size_t cbt_map_bytes(const struct cblb_cbt *c)
{
	return BITS_TO_LONGS(c->nbits) * sizeof(long);
}

/* ---- marking: from the ftrace handler, any context, never sleeps ---- */

/* Set bits [first, last] of map, word by word (one atomic per word not yet all set). */
static void mark_bits(unsigned long *map, unsigned long first, unsigned long last)
{
	unsigned long w = BIT_WORD(first), lw = BIT_WORD(last);

	for (; w <= lw; w++) {
		unsigned long mask = ~0UL;

		if (w == BIT_WORD(first))
			mask &= BITMAP_FIRST_WORD_MASK(first);
		if (w == lw)
			mask &= BITMAP_LAST_WORD_MASK(last + 1);
		if ((READ_ONCE(map[w]) & mask) != mask)
			atomic_long_or(mask, (atomic_long_t *)&map[w]);
	}
}

/*
 * Mark the blocks a modifying bio touches in every tracked origin it meets. First call
 * (again = false): the maps the state names now. Second call (again = true), made only
 * when the snapshot of the bio's origin is past its gate (the write is copied): the
 * state is read again and the map that is, or is becoming, current is marked too. See
 * doc/CBT.md for why this puts every write on the right side of the point in time.
 */
void cblb_cbt_mark(struct bio *bio, bool again)
{
	struct gendisk *disk = cblb_bio_disk(bio);
	sector_t start = cblb_bio_disk_sector(bio), end = start + bio_sectors(bio);
	struct cblb_cbt *c;

	rcu_read_lock();
	hash_for_each_possible_rcu(cbt_hash, c, hash_node, (unsigned long)disk) {
		sector_t lo, hi;
		unsigned long first, last;
		int st;

		if (c->disk != disk || end <= c->start || start >= c->start + c->sectors)
			continue;
		lo = max(start, c->start) - c->start;
		hi = min(end, c->start + c->sectors) - c->start;
		first = (lo << SECTOR_SHIFT) >> c->block_shift;
		last = (((hi - 1) << SECTOR_SHIFT)) >> c->block_shift;
		/* A write after the seal: the saved map may miss it (doc/CBT.md). */
		if (unlikely(READ_ONCE(c->seal) == CBT_SEALED))
			cmpxchg(&c->seal, CBT_SEALED, CBT_SEAL_WRITTEN);
		st = smp_load_acquire(&c->state);
		if (!again) {
			mark_bits(c->map[st & 1], first, last);
			if (st & CBT_DUAL)
				mark_bits(c->map[!(st & 1)], first, last);
		} else {
			mark_bits(c->map[(st & CBT_DUAL) ? !(st & 1) : (st & 1)], first, last);
		}
	}
	rcu_read_unlock();
}

/* ---- sysfs: /sys/kernel/cblb/tracking/<disk name>/ ---- */

static ssize_t dev_show(struct kobject *kobj, struct kobj_attribute *a, char *buf)
{
	struct cblb_cbt *c = to_cbt(kobj);

	return sysfs_emit(buf, "%u:%u\n", MAJOR(c->dev), MINOR(c->dev));
}

static ssize_t generation_show(struct kobject *kobj, struct kobj_attribute *a, char *buf)
{
	struct cblb_cbt *c = to_cbt(kobj);
	uuid_t g;

	mutex_lock(&c->lock);
	g = c->generation;
	mutex_unlock(&c->lock);
	return sysfs_emit(buf, "%pUb\n", &g);
}

/* A number read under c->lock (a restart may be re-making the maps). */
#define CBT_ATTR(_name, _type, _fmt, _expr)					\
static ssize_t _name##_show(struct kobject *kobj, struct kobj_attribute *a,	\
			    char *buf)						\
{										\
	struct cblb_cbt *c = to_cbt(kobj);					\
	_type v;								\
										\
	mutex_lock(&c->lock);							\
	v = (_expr);								\
	mutex_unlock(&c->lock);							\
	return sysfs_emit(buf, _fmt "\n", v);					\
}

CBT_ATTR(sequence, unsigned long long, "%llu", c->sequence)
CBT_ATTR(block_size, unsigned long, "%lu", 1UL << c->block_shift)
CBT_ATTR(size_sectors, unsigned long long, "%llu", c->sectors)
/* Blocks written since the last start: the current map's weight (a moving count). */
CBT_ATTR(changed_blocks, unsigned int, "%u",
	 bitmap_weight(c->map[smp_load_acquire(&c->state) & 1], c->nbits))
CBT_ATTR(memory_bytes, size_t, "%zu", 2 * cbt_map_bytes(c))

/*
 * Whether the map read since the seal holds every write: "yes" when sealed and nothing
 * was marked since. The grace period first: a handler that marked before this read has
 * finished, so its break of the seal is seen here.
 */
static ssize_t sealed_show(struct kobject *kobj, struct kobj_attribute *a, char *buf)
{
	static const char *const words[] = { "no", "yes", "written" };
	struct cblb_cbt *c = to_cbt(kobj);

	synchronize_rcu();
	return sysfs_emit(buf, "%s\n", words[READ_ONCE(c->seal)]);
}

static struct kobj_attribute cbt_dev_attr = __ATTR_RO(dev);
static struct kobj_attribute cbt_sealed_attr = __ATTR_RO_MODE(sealed, 0400);
static struct kobj_attribute cbt_generation_attr = __ATTR_RO(generation);
static struct kobj_attribute cbt_sequence_attr = __ATTR_RO(sequence);
static struct kobj_attribute cbt_block_size_attr = __ATTR_RO(block_size);
static struct kobj_attribute cbt_size_sectors_attr = __ATTR_RO(size_sectors);
static struct kobj_attribute cbt_changed_blocks_attr = __ATTR_RO(changed_blocks);
static struct kobj_attribute cbt_memory_bytes_attr = __ATTR_RO(memory_bytes);

static struct attribute *cbt_attrs[] = {
	&cbt_dev_attr.attr, &cbt_generation_attr.attr, &cbt_sequence_attr.attr,
	&cbt_block_size_attr.attr, &cbt_size_sectors_attr.attr,
	&cbt_changed_blocks_attr.attr, &cbt_memory_bytes_attr.attr, &cbt_sealed_attr.attr,
	NULL,
};

/* A pread of map m (one of c->map), clipped at its end. */
static ssize_t cbt_copy_map(struct cblb_cbt *c, const unsigned long *m, char *buf,
			    loff_t off, size_t count)
{
	size_t size = cbt_map_bytes(c);

	lockdep_assert_held(&c->lock);
	if (off >= size)
		return 0;
	count = min_t(size_t, count, size - off);
	memcpy(buf, (const char *)m + off, count);
	return count;
}

/* pread of the current map (what was written since the last start): for a save. */
static ssize_t map_read(struct file *f, struct kobject *kobj, cblb_bin_attr_arg *attr,
			char *buf, loff_t off, size_t count)
{
	struct cblb_cbt *c = to_cbt(kobj);
	ssize_t n;

	mutex_lock(&c->lock);
	n = cbt_copy_map(c, c->map[smp_load_acquire(&c->state) & 1], buf, off, count);
	mutex_unlock(&c->lock);
	return n;
}

/*
 * pwrite into the current map, word by word ORed in as the handler marks, so no write
 * marked meanwhile is lost: how a resume gives back the saved map. Only while the
 * generation is fresh (no start, no resume since tracking began), in whole words.
 */
static ssize_t map_write(struct file *f, struct kobject *kobj, cblb_bin_attr_arg *attr,
			 char *buf, loff_t off, size_t count)
{
	struct cblb_cbt *c = to_cbt(kobj);
	const unsigned long *src = (const unsigned long *)buf;
	unsigned long *cur;
	ssize_t ret = count;
	size_t w;

	if (!IS_ALIGNED(off, sizeof(long)) || !IS_ALIGNED(count, sizeof(long)))
		return -EINVAL;
	mutex_lock(&c->lock);
	if (!c->fresh) {
		ret = -EBUSY;
	} else if (off + count > cbt_map_bytes(c)) {
		ret = -EFBIG;
	} else {
		cur = c->map[smp_load_acquire(&c->state) & 1] + off / sizeof(long);
		for (w = 0; w < count / sizeof(long); w++)
			if (src[w])
				atomic_long_or(src[w], (atomic_long_t *)&cur[w]);
	}
	mutex_unlock(&c->lock);
	return ret;
}

/* Size 0: sysfs clips neither reads nor writes; both stop at the map's end. */
static struct bin_attribute cbt_map_attr = {
	.attr = { .name = "map", .mode = 0600 },
	.read = map_read,
	.write = map_write,
};

static cblb_bin_attr_entry *cbt_bin_attrs[] = {
	&cbt_map_attr,
	NULL,
};

static const struct attribute_group cbt_group = {
	.attrs = cbt_attrs,
	.bin_attrs = cbt_bin_attrs,
};

static const struct attribute_group *cbt_groups[] = {
	&cbt_group,
	NULL,
};

static void cbt_free_maps(struct cblb_cbt *c)
{
	kvfree(c->map[0]);
	kvfree(c->map[1]);
	c->map[0] = c->map[1] = NULL;
}

/* Hold the disk (and its driver's code, which frees it) while it is tracked. */
static void cbt_hold_disk(struct cblb_cbt *c, struct gendisk *disk)
{
	__module_get(disk->fops->owner);
	get_device(disk_to_dev(disk));
	c->disk = disk;
}

static void cbt_drop_disk(struct cblb_cbt *c)
{
	struct module *owner;

	if (!c->disk)
		return;
	owner = c->disk->fops->owner;
	put_disk(c->disk);
	module_put(owner);
	c->disk = NULL;
}

static void cbt_release(struct kobject *kobj)
{
	struct cblb_cbt *c = to_cbt(kobj);

	cbt_free_maps(c);
	cbt_drop_disk(c);
	kfree(c);
}

static const struct kobj_type cbt_ktype = {
	.release = cbt_release,
	.sysfs_ops = &kobj_sysfs_ops,
	.default_groups = cbt_groups,
};

/* ---- life of a tracked origin: under cblb_cmd_lock ---- */

/* Size the maps for sectors and allocate them cleared; a new generation begins. */
static int cbt_begin(struct cblb_cbt *c, struct block_device *bdev)
{
	u64 bytes = (u64)bdev_nr_sectors(bdev) << SECTOR_SHIFT;
	unsigned int shift = CBLB_CHUNK_SHIFT;
	unsigned long *m0, *m1;
	unsigned long nbits;

	while (DIV_ROUND_UP_ULL(bytes, 1ULL << shift) > (1ULL << CBT_MAX_BITS_SHIFT))
		shift++;
	nbits = DIV_ROUND_UP_ULL(bytes, 1ULL << shift);
	m0 = kvzalloc(BITS_TO_LONGS(nbits) * sizeof(long), GFP_KERNEL);
	m1 = kvzalloc(BITS_TO_LONGS(nbits) * sizeof(long), GFP_KERNEL);
	if (!m0 || !m1) {
		kvfree(m0);
		kvfree(m1);
		return -ENOMEM;
	}
	/* Not in the hash, or out of it for a grace period: nobody marks the old maps. */
	mutex_lock(&c->lock);
	swap(c->map[0], m0);
	swap(c->map[1], m1);
	c->nbits = nbits;
	c->block_shift = shift;
	c->start = cblb_bdev_start(bdev);
	c->sectors = bdev_nr_sectors(bdev);
	c->diskseq = cblb_diskseq(bdev->bd_disk);
	smp_store_release(&c->state, 0);
	WRITE_ONCE(c->seal, CBT_SEAL_NONE);
	uuid_gen(&c->generation);
	c->sequence = 0;
	c->fresh = true;
	mutex_unlock(&c->lock);
	kvfree(m0);	/* the old maps, if any */
	kvfree(m1);
	return 0;
}

/* The same disk (not one re-made under the device number), medium, place and size. */
static bool cbt_same_origin(struct cblb_cbt *c, struct block_device *bdev)
{
	return c->disk == bdev->bd_disk && c->start == cblb_bdev_start(bdev) &&
	       c->sectors == bdev_nr_sectors(bdev) &&
	       c->diskseq == cblb_diskseq(bdev->bd_disk);
}

static struct cblb_cbt *cbt_find(dev_t dev)
{
	struct cblb_cbt *c;

	lockdep_assert_held(&cblb_cmd_lock);
	list_for_each_entry(c, &cbt_list, node)
		if (c->dev == dev)
			return c;
	return NULL;
}

static void cbt_hash_add(struct cblb_cbt *c)
{
	hash_add_rcu(cbt_hash, &c->hash_node, (unsigned long)c->disk);
	atomic_inc(&cblb_nr_cbt);
}

static void cbt_hash_del(struct cblb_cbt *c)
{
	hash_del_rcu(&c->hash_node);
	atomic_dec(&cblb_nr_cbt);
}

/* A tracked origin changed under us (resize, new medium): out of the hash, new maps. */
static int cbt_restart(struct cblb_cbt *c, struct block_device *bdev)
{
	int err;

	lockdep_assert_held(&cblb_cmd_lock);
	pr_info("%s: the origin changed (size or medium); tracking restarts with a new generation\n",
		kobject_name(&c->kobj));
	cbt_hash_del(c);
	synchronize_rcu();
	err = cbt_begin(c, bdev);
	if (!err && c->disk != bdev->bd_disk) {	/* the device was re-made */
		cbt_drop_disk(c);
		cbt_hold_disk(c, bdev->bd_disk);
	}
	cbt_hash_add(c);	/* on failure the old maps stay, and the old generation */
	return err;
}

/* Untrack: out of the hash, and freed once no handler can see it. */
static void cbt_destroy(struct cblb_cbt *c)
{
	lockdep_assert_held(&cblb_cmd_lock);
	list_del(&c->node);
	cbt_hash_del(c);
	synchronize_rcu();
	kobject_del(&c->kobj);
	kobject_put(&c->kobj);
}

/*
 * Another device had bdev's name (a disk unplugged while tracked, its name given to a
 * new one with another number): its tracking ends, unless a snapshot holds it.
 */
static bool cbt_drop_stale_name(struct block_device *bdev)
{
	char name[BDEVNAME_SIZE];
	struct cblb_cbt *c;

	lockdep_assert_held(&cblb_cmd_lock);
	snprintf(name, sizeof(name), "%pg", bdev);
	list_for_each_entry(c, &cbt_list, node) {
		if (c->dev != bdev->bd_dev && !c->snap && !strcmp(kobject_name(&c->kobj), name)) {
			cbt_destroy(c);
			return true;
		}
	}
	return false;
}

/* The tracked origin of bdev, made (tracking begins) if there is none. */
static struct cblb_cbt *cbt_get(struct block_device *bdev, int *errp)
{
	struct cblb_cbt *c = cbt_find(bdev->bd_dev);
	int err;

	lockdep_assert_held(&cblb_cmd_lock);
	if (c) {
		*errp = cbt_same_origin(c, bdev) ? 0 : cbt_restart(c, bdev);
		return *errp ? NULL : c;
	}
	if (!tracking_kobj) {
		tracking_kobj = kobject_create_and_add("tracking", tracking_parent);
		if (!tracking_kobj) {
			*errp = -ENOMEM;
			return NULL;
		}
	}
	c = kzalloc(sizeof(*c), GFP_KERNEL);
	if (!c) {
		*errp = -ENOMEM;
		return NULL;
	}
	mutex_init(&c->lock);
	c->dev = bdev->bd_dev;
	cblb_kobject_init(&c->kobj, &cbt_ktype);	/* from here, kobject_put frees c */
	err = cbt_begin(c, bdev);
	if (err)
		goto fail;
	cbt_hold_disk(c, bdev->bd_disk);
	err = kobject_add(&c->kobj, tracking_kobj, "%pg", bdev);
	if (err == -EEXIST && cbt_drop_stale_name(bdev))
		err = kobject_add(&c->kobj, tracking_kobj, "%pg", bdev);
	if (err)
		goto fail;
	list_add_tail(&c->node, &cbt_list);
	cbt_hash_add(c);
	*errp = 0;
	return c;

fail:
	kobject_put(&c->kobj);
	*errp = err;
	return NULL;
}


/* create: the snapshot's origin is tracked (tracking begins here if needed). */
int cblb_cbt_attach(struct cblb_snapshot *s)
{
	int err;
	struct cblb_cbt *c = cbt_get(s->origin.bdev, &err);

	if (!c)
		return err;
	c->snap = s;
	s->cbt = c;
	return 0;
}

void cblb_cbt_detach(struct cblb_cbt *c)
{
	lockdep_assert_held(&cblb_cmd_lock);
	if (c)
		c->snap = NULL;
}

/* ---- rotation at the point in time (start.c, doc/CBT.md) ---- */

/* Before any freeze: the origin is still the one tracked; the next map is clear. */
int cblb_cbt_prepare(struct cblb_snapshot *s)
{
	struct cblb_cbt *c = s->cbt;
	int err = 0;

	lockdep_assert_held(&cblb_cmd_lock);
	if (!cbt_same_origin(c, s->origin.bdev))
		err = cbt_restart(c, s->origin.bdev);
	if (err)
		return err;
	/* Nobody marks it: it stopped being current (and dual) a grace period ago. */
	bitmap_zero(c->map[!(c->state & 1)], c->nbits);
	/* The maps rotate: a map saved before is no longer the current one. */
	if (READ_ONCE(c->seal) == CBT_SEALED)
		WRITE_ONCE(c->seal, CBT_SEAL_WRITTEN);
	mutex_lock(&c->lock);
	c->fresh = false;
	mutex_unlock(&c->lock);
	return 0;
}

/* Just before the gate opens: writes go to both maps. */
void cblb_cbt_dual(struct cblb_snapshot *s)
{
	struct cblb_cbt *c = s->cbt;

	lockdep_assert_held(&cblb_cmd_lock);
	smp_store_release(&c->state, (c->state & 1) | CBT_DUAL);
}

/* Just after the gate opened: the other map is current, this start's map is frozen. */
void cblb_cbt_flip(struct cblb_snapshot *s)
{
	struct cblb_cbt *c = s->cbt;

	lockdep_assert_held(&cblb_cmd_lock);
	smp_store_release(&c->state, !(c->state & 1));
	mutex_lock(&c->lock);
	c->sequence++;
	s->cbt_generation = c->generation;
	s->cbt_sequence = c->sequence;
	mutex_unlock(&c->lock);
}

/*
 * After the thaw and an RCU grace period (no handler marks the frozen map any more):
 * count it for the snapshot.
 */
void cblb_cbt_frozen(struct cblb_snapshot *s)
{
	struct cblb_cbt *c = s->cbt;

	mutex_lock(&c->lock);
	s->cbt_changed = bitmap_weight(c->map[!(c->state & 1)], c->nbits);
	WRITE_ONCE(s->cbt_ready, true);
	mutex_unlock(&c->lock);
}

/*
 * A start undone after its flip: the frozen map goes back into the current one (ORed
 * word by word, as the handler marks it), and the sequence number is given back.
 * Caller waited for an RCU grace period after the flip.
 */
void cblb_cbt_unflip(struct cblb_snapshot *s)
{
	struct cblb_cbt *c = s->cbt;
	unsigned long *cur = c->map[c->state & 1], *old = c->map[!(c->state & 1)];
	unsigned long w;

	lockdep_assert_held(&cblb_cmd_lock);
	for (w = 0; w < BITS_TO_LONGS(c->nbits); w++)
		if (old[w])
			atomic_long_or(old[w], (atomic_long_t *)&cur[w]);
	mutex_lock(&c->lock);
	c->sequence--;
	WRITE_ONCE(s->cbt_ready, false);
	mutex_unlock(&c->lock);
	s->cbt_sequence = 0;
	uuid_copy(&s->cbt_generation, &uuid_null);
	s->cbt_changed = 0;
}

unsigned int cblb_cbt_block_size(struct cblb_snapshot *s)
{
	return 1U << s->cbt->block_shift;
}

/* pread of the snapshot's frozen map (the cbt_map attribute). */
ssize_t cblb_cbt_read_map(struct cblb_snapshot *s, char *buf, loff_t off, size_t count)
{
	struct cblb_cbt *c = s->cbt;
	ssize_t n = 0;

	mutex_lock(&c->lock);
	if (READ_ONCE(s->cbt_ready))
		n = cbt_copy_map(c, c->map[!(c->state & 1)], buf, off, count);
	mutex_unlock(&c->lock);
	return n;
}

/* ---- commands ---- */

int cblb_cmd_track(const char *path)
{
	struct cblb_bdev h = {};
	dev_t dev;
	int err;

	err = cblb_lookup_bdev(path, &dev);
	if (err) {
		pr_notice_ratelimited("track: %s is not a block device (%d)\n", path, err);
		return err;
	}
	mutex_lock(&cblb_cmd_lock);
	if (cbt_find(dev)) {
		pr_notice_ratelimited("track: %s is tracked already\n", path);
		err = -EEXIST;
		goto out_unlock;
	}
	err = cblb_bdev_open(dev, &h);
	if (err) {
		pr_notice_ratelimited("track: cannot open %s (%d)\n", path, err);
		goto out_unlock;
	}
	if (cblb_is_snapimage(h.bdev->bd_disk)) {
		pr_notice_ratelimited("track: %s is a snapshot\n", path);
		err = -EINVAL;
	} else if (bdev_is_zoned(h.bdev)) {
		pr_notice_ratelimited("track: %s is a zoned device; zone resets and appends change it without a write that could be marked\n",
				      path);
		err = -EOPNOTSUPP;
	} else {
		cbt_get(h.bdev, &err);
	}
	cblb_bdev_close(&h);
out_unlock:
	mutex_unlock(&cblb_cmd_lock);
	return err;
}

/* The tracked origin at path, under cblb_cmd_lock; NULL with *errp set (and said) if none. */
static struct cblb_cbt *cbt_of_path(const char *cmd, const char *path, int *errp)
{
	struct cblb_cbt *c;
	dev_t dev;

	lockdep_assert_held(&cblb_cmd_lock);
	*errp = cblb_lookup_bdev(path, &dev);
	if (*errp) {
		pr_notice_ratelimited("%s: %s is not a block device (%d)\n", cmd, path, *errp);
		return NULL;
	}
	c = cbt_find(dev);
	if (!c) {
		pr_notice_ratelimited("%s: %s is not tracked\n", cmd, path);
		*errp = -ENOENT;
	}
	return c;
}

/* A tracked origin with a snapshot refuses cmd (EBUSY, said); 0 if it has none. */
static int cbt_refuse_if_snapshot(const char *cmd, const char *path, struct cblb_cbt *c)
{
	lockdep_assert_held(&cblb_cmd_lock);
	if (!c->snap)
		return 0;
	pr_notice_ratelimited("%s: %s has snapshot %s; remove it first\n", cmd, path,
			      c->snap->name);
	return -EBUSY;
}

int cblb_cmd_untrack(const char *path)
{
	struct cblb_cbt *c;
	int err;

	mutex_lock(&cblb_cmd_lock);
	c = cbt_of_path("untrack", path, &err);
	if (c)
		err = cbt_refuse_if_snapshot("untrack", path, c);
	if (c && !err)
		cbt_destroy(c);
	mutex_unlock(&cblb_cmd_lock);
	return err;
}

/*
 * seal: from now on a write to the origin breaks the seal (the "sealed" attribute says
 * "written"), so a map read after this command is known complete while it says "yes".
 * After the grace period no handler that missed the seal is still marking.
 */
int cblb_cmd_seal(const char *path)
{
	struct cblb_cbt *c;
	int err;

	mutex_lock(&cblb_cmd_lock);
	c = cbt_of_path("seal", path, &err);
	if (c)
		err = cbt_refuse_if_snapshot("seal", path, c);
	if (c && !err) {
		WRITE_ONCE(c->seal, CBT_SEALED);
		synchronize_rcu();
	}
	mutex_unlock(&cblb_cmd_lock);
	return err;
}

/* A generation word of resume: a UUID, not the null one. */
static int parse_generation(const char *text, uuid_t *g)
{
	if (strlen(text) != UUID_STRING_LEN || uuid_parse(text, g) || uuid_is_null(g)) {
		pr_notice_ratelimited("resume: %s is not a generation (a UUID)\n", text);
		return -EINVAL;
	}
	return 0;
}

/*
 * resume: a fresh generation (tracking began, no start since) takes the place of a saved
 * one: its generation and sequence. User space checked that nothing escaped between the
 * save and this tracking, and wrote the saved map into the "map" attribute of the fresh
 * generation it names, which must still be the current one (doc/CBT.md).
 */
int cblb_cmd_resume(const char *path, const char *generation, u64 sequence,
		    unsigned int block_size, const char *fresh)
{
	struct cblb_cbt *c;
	uuid_t g, f;
	int err;

	if (parse_generation(generation, &g) || parse_generation(fresh, &f))
		return -EINVAL;
	mutex_lock(&cblb_cmd_lock);
	c = cbt_of_path("resume", path, &err);
	if (!c)
		goto out_unlock;
	mutex_lock(&c->lock);
	if (!c->fresh || c->snap || !uuid_equal(&c->generation, &f)) {
		/* Another generation than the one the saved map was written into. */
		pr_notice_ratelimited("resume: %s was started, resumed or tracked anew since generation %pUb began; untrack and track it again\n",
				      path, &f);
		err = -EBUSY;
	} else if (block_size != 1U << c->block_shift) {
		pr_notice_ratelimited("resume: %s is tracked in blocks of %u bytes, not %u\n",
				      path, 1U << c->block_shift, block_size);
		err = -EINVAL;
	} else {
		c->generation = g;
		c->sequence = sequence;
		c->fresh = false;
		pr_info("%s: tracking resumed: generation %pUb, sequence %llu\n",
			kobject_name(&c->kobj), &g, sequence);
	}
	mutex_unlock(&c->lock);
out_unlock:
	mutex_unlock(&cblb_cmd_lock);
	return err;
}

/* Module exit, after every snapshot is gone. */
void cblb_cbt_exit(void)
{
	struct cblb_cbt *c, *n;

	lockdep_assert_held(&cblb_cmd_lock);
	list_for_each_entry_safe(c, n, &cbt_list, node)
		cbt_destroy(c);
	if (tracking_kobj)
		kobject_put(tracking_kobj);
	tracking_kobj = NULL;
}
