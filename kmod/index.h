/* SPDX-License-Identifier: GPL-2.0 */
/* What index.c offers the layers above it (kmod/doc/LAYERS.md): only they include it. */
#ifndef CBLB_INDEX_H
#define CBLB_INDEX_H

#include "cblb.h"

u64 cblb_index_get(struct cblb_snapshot *s, u64 chunk);
u64 cblb_index_first_missing(struct cblb_snapshot *s, u64 first, u64 last);
void cblb_index_present(struct cblb_snapshot *s, u64 first, unsigned int n, unsigned long *map);
int cblb_index_reserve(struct cblb_snapshot *s, const u64 *chunks, unsigned int n);
int cblb_index_set(struct cblb_snapshot *s, u64 chunk, u64 slot);

#endif /* CBLB_INDEX_H */
