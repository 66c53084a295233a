/* SPDX-License-Identifier: GPL-2.0 */
/* What cow.c offers the layers above it (kmod/doc/LAYERS.md): only they include it. */
#ifndef CBLB_COW_H
#define CBLB_COW_H

#include "cblb.h"

int cblb_cow_init(struct cblb_snapshot *s);
void cblb_cow_exit(struct cblb_snapshot *s);
bool cblb_cow_passes_unlocked(struct cblb_snapshot *s, sector_t rel, sector_t len);
bool cblb_cow_intercept(struct cblb_snapshot *s, struct bio *bio, sector_t rel, sector_t len);
void cblb_cow_drain(struct cblb_snapshot *s);
struct page *cblb_cow_staged(struct cblb_snapshot *s, u64 chunk);
void cblb_cow_taken_map(struct cblb_snapshot *s, u64 first, unsigned int n, unsigned long *map);
void cblb_cow_endio(struct bio *bio);

#endif /* CBLB_COW_H */
